#!/usr/bin/env bash
# One prepared GPU session (CUDA machine), 8 minutes in all:
#   1. install what the device image lacks from wheels carried in --wheels (benchmarks/gpu_wheels.sh makes them;
#      pesq is an sdist built with --no-build-isolation against the installed numpy and Cython)
#   2. wg2 corpus build (the default corpus, CPU, in the background) while `wg2 bench --presets base,large
#      --precision bf16` measures the GPU
#   3. one paper-size training (experiments/configs/base.toml) of a few hundred steps on that corpus
#   4. wg2 search on its checkpoint with a small trial budget
#   5. if time is left: the same training for a few steps with train.compile = true (does compile work and pay?)
# Every stage runs under `timeout`, capped by what is left of the total budget; a failed or timed-out stage
# is recorded and the next one runs when it does not depend on it. Output under --out: logs/<stage>.log,
# bench/ (bench's table and JSON), train/ (checkpoint, history), search/, summary.json and summary.md.
#
# usage: benchmarks/gpu.sh --wheels DIR --out DIR [--python PY] [--budget-s 480] [--steps 300] [--trials 8]
#                          [--dry-run]
# --dry-run prints the commands it would run (one per line, prefixed with the stage) and runs nothing.
set -uo pipefail

usage() {
    sed -n 's/^# usage: //p; s/^#  *\[--/  [--/p' "$0" | head -2 >&2
}
die() {
    echo "gpu.sh: error: $*" >&2
    usage
    exit 2
}

WHEELS="" OUT="" PY="${PYTHON:-python3}" BUDGET=480 STEPS=300 TRIALS=8 DRY=0
while [ $# -gt 0 ]; do
    case "$1" in
        --wheels) [ $# -ge 2 ] || die "--wheels needs a folder"; WHEELS="$2"; shift 2 ;;
        --out) [ $# -ge 2 ] || die "--out needs a folder"; OUT="$2"; shift 2 ;;
        --python) [ $# -ge 2 ] || die "--python needs an interpreter"; PY="$2"; shift 2 ;;
        --budget-s) [ $# -ge 2 ] || die "--budget-s needs seconds"; BUDGET="$2"; shift 2 ;;
        --steps) [ $# -ge 2 ] || die "--steps needs a number"; STEPS="$2"; shift 2 ;;
        --trials) [ $# -ge 2 ] || die "--trials needs a number"; TRIALS="$2"; shift 2 ;;
        --dry-run) DRY=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument '$1'" ;;
    esac
done
[ -n "$OUT" ] || die "--out DIR is required (where logs, JSON and markdown go)"
[ -n "$WHEELS" ] || die "--wheels DIR is required (the folder benchmarks/gpu_wheels.sh filled)"
for n in "$BUDGET" "$STEPS" "$TRIALS"; do
    [[ "$n" =~ ^[1-9][0-9]*$ ]] || die "'$n': expected a positive integer"
done
if [ "$DRY" = 0 ]; then
    [ -d "$WHEELS" ] || die "--wheels $WHEELS: no such folder"
    command -v "$PY" >/dev/null 2>&1 || die "--python $PY: not found"
fi

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT" || exit 2
if [ "$DRY" = 0 ]; then
    mkdir -p "$OUT/logs" 2>/dev/null || die "--out $OUT: cannot create it"
    OUT="$(cd "$OUT" && pwd)"
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export MLFLOW_TRACKING_URI="sqlite:///$OUT/mlflow.db"
CORPUS="$OUT/corpus/harvard"
DATA=(--set "data.root=$CORPUS" --set "data.cache_dir=$OUT/cache")
WG2=("$PY" -m experiments.cli)
RESERVE=10  # seconds kept for writing the summary
STAGES=()   # name|rc|seconds|limit
DRY_SPENT=0  # --dry-run: each stage is counted as taking its whole limit, so the printed limits are the worst case

left() { echo $((BUDGET - SECONDS - RESERVE - DRY_SPENT)); }

# stage NAME LIMIT_S CMD...: run CMD under timeout min(LIMIT_S, time left), log to logs/NAME.log
stage() {
    local name="$1" limit="$2"
    shift 2
    local avail
    avail="$(left)"
    [ "$avail" -lt "$limit" ] && limit="$avail"
    if [ "$DRY" = 1 ]; then
        if [ "$limit" -lt 5 ]; then
            echo "[$name] skipped: no time left"
        else
            echo "[$name] timeout ${limit}s $*"
            DRY_SPENT=$((DRY_SPENT + limit))
        fi
        return 0
    fi
    if [ "$limit" -lt 5 ]; then
        echo "[$name] skipped: no time left" | tee "$OUT/logs/$name.log"
        STAGES+=("$name|skipped|0|0")
        return 125
    fi
    echo "[$name] ($limit s) $*"
    local start=$SECONDS rc
    timeout --kill-after=10 "$limit" "$@" >"$OUT/logs/$name.log" 2>&1
    rc=$?
    STAGES+=("$name|$rc|$((SECONDS - start))|$limit")
    [ $rc = 0 ] || { echo "[$name] exit $rc; last lines of logs/$name.log:"; tail -n 5 "$OUT/logs/$name.log"; }
    return $rc
}

# 1. install: binary wheels first (Cython and numpy included, for pesq), then pesq from its sdist
PIP=("$PY" -m pip install --no-index --find-links "$WHEELS" --quiet)
stage install 60 "${PIP[@]}" mlflow optuna pystoi soundfile espeakng-loader praatio praat-parselmouth tqdm \
    matplotlib psutil threadpoolctl Cython numpy setuptools wheel
stage install_pesq 40 "${PIP[@]}" --no-build-isolation --no-binary pesq pesq
stage versions 15 "$PY" -c "import torch, mlflow, optuna, pesq, pystoi, soundfile, espeakng_loader; \
print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0)); \
print('mlflow', mlflow.__version__, 'optuna', optuna.__version__)"

# 2. corpus on the CPUs in the background while bench holds the GPU
if [ "$DRY" = 1 ]; then
    echo "[corpus] timeout $(($(left) < 200 ? $(left) : 200))s ${WG2[*]} corpus build --out $CORPUS --workers 0 (background)"
else
    (stage corpus 200 "${WG2[@]}" corpus build --out "$CORPUS" --workers 0; echo $? >"$OUT/logs/corpus.rc") &
    CORPUS_PID=$!
fi
# at base.toml's batch and window (32 x 64 frames): the rows `wg2 grid --dry-run` prices the paper grids' cells from
stage bench 110 "${WG2[@]}" bench --presets base,large --precision bf16 --device cuda --batch-size 32 \
    --window-frames 64 --out "$OUT/bench"
if [ "$DRY" = 0 ]; then
    wait "$CORPUS_PID"
    STAGES+=("corpus|$(cat "$OUT/logs/corpus.rc" 2>/dev/null || echo '?')|-|200")
fi

# 3. paper-size training, a few hundred steps
TRAIN=(train experiments/configs/base.toml "${DATA[@]}" --set "train.steps=$STEPS"
       --set "train.checkpoint_every=$STEPS" --set train.log_every=25 --device cuda)
stage train 140 "${WG2[@]}" "${TRAIN[@]}" --out "$OUT/train"
TRAIN_RC=$?

# 4. schedule search on it (needs the checkpoint)
if [ "$TRAIN_RC" = 0 ] || [ "$DRY" = 1 ]; then
    stage search 70 "${WG2[@]}" search "$OUT/train/checkpoint.pt" --steps 6 --trials "$TRIALS" \
        --limit-utterances 4 --storage "sqlite:///$OUT/optuna.db" --study gpu-smoke --out "$OUT/search" --device cuda
else
    STAGES+=("search|skipped (train failed)|0|0")
fi

# 5. compile: the same training, briefly, with the decoder compiled (compile time included in its wall time)
stage compile_train 60 "${WG2[@]}" train experiments/configs/base.toml "${DATA[@]}" --set train.steps=30 \
    --set train.checkpoint_every=30 --set train.log_every=10 --set train.gain_utterances=0 \
    --set train.compile=true --device cuda --out "$OUT/train_compiled"

[ "$DRY" = 1 ] && exit 0

# summary.json / summary.md: stage outcomes, and the training and search numbers where they exist
"$PY" - "$OUT" "$SECONDS" "${STAGES[@]}" <<'EOF'
import json, sys
from pathlib import Path
out, total, rows = Path(sys.argv[1]), int(sys.argv[2]), [s.split("|") for s in sys.argv[3:]]
summary = {"total_seconds": total, "stages": [dict(zip(("stage", "rc", "seconds", "limit_s"), r)) for r in rows]}
for name in ("train", "train_compiled"):
    try:
        import torch
        state = torch.load(out / name / "checkpoint.pt", map_location="cpu", weights_only=True)
        summary[name] = {"steps": state["step"], "throughput": state["throughput"],
                         "last": state["history"][-1] if state["history"] else None}
    except Exception as err:  # noqa: BLE001
        summary[name] = {"missing": f"{type(err).__name__}: {err}"[:300]}
bench = out / "bench"
summary["bench_files"] = sorted(str(p.relative_to(out)) for p in bench.glob("*")) if bench.is_dir() else []
summary["search_files"] = sorted(str(p.relative_to(out)) for p in (out / "search").rglob("*")) \
    if (out / "search").is_dir() else []
(out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
lines = ["# GPU session", "", f"total {total} s", "", "| stage | rc | seconds | limit (s) |", "|---|---|---|---|"]
lines += [f"| {' | '.join(r)} |" for r in rows]
for name in ("train", "train_compiled"):
    t = summary[name].get("throughput")
    if t:
        lines.append(f"\n{name}: {summary[name]['steps']} steps, {t.get('steps_per_sec', float('nan')):.2f} steps/s, "
                     f"{t.get('audio_seconds_per_sec', float('nan')):.1f} audio s/s, peak {t.get('peak_memory_mb', 0):.0f} MiB")
for md in sorted(bench.glob("*.md")) if bench.is_dir() else []:
    lines += ["", f"## {md.name}", "", md.read_text()]
(out / "summary.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
