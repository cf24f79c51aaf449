"""Load and faults, as figures: nothing lost, nothing duplicated, no tracebacks. Not a test: it runs the real
`wg2` CLI in subprocesses (a real MLflow SQLite store and real Optuna storage in a temporary folder, the real
corpus) and counts what went wrong.

  kill    a quickstart-size grid with 2 worker processes, SIGKILLed at random times (the whole command, its
          parent process only, or one worker) and restarted after each kill, then a clean rerun. Counts the
          finished cells lost, duplicated and left RUNNING, from MLflow.
  search  N `wg2 search` commands started at once on one study (SQLite; PostgreSQL too with --postgres, from a
          pip-installed `pgserver`) with a budget of T trials. Counts trials lost (never finished, finished
          without an MLflow run), duplicated (over the budget, two MLflow runs for one trial) and failed.
  corpus  random corruptions of a copy of a 60-utterance subset of the corpus (truncated wav or TextGrid, NaN
          samples, shuffled TextGrid times, deleted files, bad metadata lines), each checked by `wg2 corpus
          check` with and without --skip-bad. Counts the share of clear messages (exit 2 naming the file, or
          with --skip-bad the utterance dropped and named), silent acceptances and tracebacks.

    python benchmarks/faults.py --part all --out results/faults          # the full run (CPU-heavy: tens of minutes)
    python benchmarks/faults.py --part all --quick --out /tmp/faults     # a smoke version (a few minutes)

Writes DIR/faults.json and DIR/faults.md (the table for the README). Progress goes to stderr (-q: none).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "corpora" / "harvard"
GRID = REPO / "experiments" / "grids" / "quickstart.toml"
QUIET = False


def log(message: str) -> None:
    if not QUIET:
        print(f"[faults {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def wg2_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "experiments.cli", *args]


def wg2_env(tmp: Path, extra_path: str = "") -> dict[str, str]:
    env = dict(os.environ)
    env.update({"PYTHONPATH": os.pathsep.join(p for p in (str(REPO), extra_path) if p),
                "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}", "WG2_RUNS_DIR": str(tmp / "runs"),
                "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"})
    env.pop("WG2_PROGRESS", None)
    return env


def has_traceback(text: str) -> bool:
    return "Traceback (most recent call last)" in text


# ============================================================================= corpus

def make_subset(dest: Path, n: int = 60) -> list[str]:
    """The first n utterances of the corpus (metadata lines, wavs, TextGrids) copied to dest."""
    lines = [line for line in (CORPUS / "metadata.csv").read_text(encoding="utf-8").splitlines() if line.strip()][:n]
    (dest / "wavs").mkdir(parents=True)
    (dest / "alignments").mkdir()
    (dest / "metadata.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    ids = [line.split("|", 1)[0] for line in lines]
    for uid in ids:
        shutil.copyfile(CORPUS / "wavs" / f"{uid}.wav", dest / "wavs" / f"{uid}.wav")
        shutil.copyfile(CORPUS / "alignments" / f"{uid}.TextGrid", dest / "alignments" / f"{uid}.TextGrid")
    return ids


def _replace(path: Path, data: bytes) -> None:
    """Write a new file in place of a (hard-linked) one, never through the link."""
    path.unlink(missing_ok=True)
    path.write_bytes(data)


def _phones_times(text: str) -> tuple[int, list[re.Match]]:
    """The interval times (xmin/xmax) of the phones tier, as regex matches in `text`."""
    start = text.index('name = "phones"')
    first = text.index("intervals [1]:", start)
    return first, list(re.finditer(r"(?<=\bxm(?:in|ax) = )[-+0-9.eE]+", text[first:]))


def corrupt(case: Path, ids: list[str], rng: random.Random) -> dict:
    """One random corruption of the corpus copy in `case`. Returns what was done and the names (any one of
    which) a clear message must contain."""
    import numpy as np
    import soundfile as sf

    kind = rng.choice(["truncate wav", "truncate TextGrid", "NaN samples", "shuffle TextGrid times",
                       "delete wav", "delete TextGrid", "bad metadata line"])
    uid = rng.choice(ids)
    wav, grid, meta = case / "wavs" / f"{uid}.wav", case / "alignments" / f"{uid}.TextGrid", case / "metadata.csv"
    detail = ""
    names = [wav.name]
    if kind == "truncate wav":
        data = wav.read_bytes()
        cut = rng.randint(0, int(len(data) * 0.9))
        _replace(wav, data[:cut])
        detail = f"{uid}.wav cut to {cut} of {len(data)} bytes"
        names = [wav.name]
    elif kind == "truncate TextGrid":
        data = grid.read_bytes()
        cut = rng.randint(0, int(len(data) * 0.95))
        _replace(grid, data[:cut])
        detail = f"{uid}.TextGrid cut to {cut} of {len(data)} bytes"
        names = [grid.name]
    elif kind == "NaN samples":
        audio, rate = sf.read(str(wav), dtype="float32", always_2d=True)
        first = rng.randrange(len(audio))
        span = rng.randint(1, max(1, min(len(audio) - first, rate // 10)))
        value = rng.choice([np.nan, np.inf, -np.inf])
        audio[first:first + span] = value
        wav.unlink()
        sf.write(str(wav), audio, rate, subtype="FLOAT")
        detail = f"{uid}.wav samples {first}..{first + span - 1} set to {value}"
        names = [wav.name]
    elif kind == "shuffle TextGrid times":
        text = grid.read_text(encoding="utf-8")
        first, matches = _phones_times(text)
        values = [m.group(0) for m in matches]  # xmin, xmax of interval 1, then of interval 2, ...
        shuffled = values[:]
        if rng.random() < 0.5:  # two intervals' spans swapped, labels kept: nothing overlaps, order is wrong
            i, j = sorted(rng.sample(range(len(values) // 2), 2))
            while j - i < 2:
                i, j = sorted(rng.sample(range(len(values) // 2), 2))
            shuffled[2 * i:2 * i + 2], shuffled[2 * j:2 * j + 2] = values[2 * j:2 * j + 2], values[2 * i:2 * i + 2]
            how = f"the spans of phone intervals {i + 1} and {j + 1} swapped"
        else:
            for _ in range(100):  # a permutation that changes the times (values repeat: end k = start k+1)
                rng.shuffle(shuffled)
                if [float(v) for v in shuffled] != [float(v) for v in values]:
                    break
            how = f"{len(values)} phone interval times shuffled"
        body, pos, out = text[first:], 0, []
        for m, v in zip(matches, shuffled):
            out += [body[pos:m.start()], v]
            pos = m.end()
        _replace(grid, (text[:first] + "".join(out) + body[pos:]).encode("utf-8"))
        detail = f"{uid}.TextGrid: {how}"
        names = [grid.name]
    elif kind == "delete wav":
        wav.unlink()
        detail = f"{uid}.wav deleted"
    elif kind == "delete TextGrid":
        grid.unlink()
        detail = f"{uid}.TextGrid deleted"
        names = [grid.name]
    else:
        lines = meta.read_text(encoding="utf-8").splitlines()
        k = ids.index(uid)
        line_no = k + 1
        how = rng.choice(["too many fields", "one field", "empty ID", "duplicate ID", "unknown ID", "not UTF-8",
                          "empty file", "file deleted"])
        text = lines[k].split("|")[1]
        names = [f"metadata.csv:{line_no}"]
        if how == "too many fields":
            lines[k] = f"{uid}|{text}|{text}|extra"
        elif how == "one field":
            lines[k] = f"{uid} {text}"
        elif how == "empty ID":
            lines[k] = f"|{text}|{text}"
        elif how == "duplicate ID":
            other = rng.choice([j for j in range(len(ids)) if j != k])
            lines[k] = f"{ids[other]}|{text}|{text}"
            line_no = max(k, other) + 1  # the later of the two lines is the duplicate
            names = [f"metadata.csv:{line_no}"]
        elif how == "unknown ID":
            lines[k] = f"{uid}x|{text}|{text}"
            names = [f"{uid}x.wav", f"{uid}x.TextGrid"]
        if how == "not UTF-8":
            raw = "\n".join(lines).encode("utf-8")
            at = rng.randrange(len(raw))
            _replace(meta, raw[:at] + b"\xff\xfe\xc3" + raw[at:])
            names = ["metadata.csv"]
        elif how == "empty file":
            _replace(meta, b"")
            names = ["metadata.csv"]
        elif how == "file deleted":
            meta.unlink()
            names = ["metadata.csv"]
        else:
            _replace(meta, ("\n".join(lines) + "\n").encode("utf-8"))
        kind, detail = f"bad metadata line ({how})", f"metadata.csv line {line_no}: {how}"
    return {"kind": kind, "detail": detail, "names": names}


def classify(rc: int, out: str, err: str, names: list[str], skip_bad: bool, n_usable: int | None,
             n_ids: int) -> str:
    """clear / unclear / accepted / traceback (see the module docstring)."""
    if has_traceback(out + err) or rc not in (0, 2):
        return "traceback"
    named = any(n in err for n in names) if rc == 2 else any(n in out + err for n in names)
    if rc == 2:
        return "clear" if "wg2: error:" in err and named else "unclear"
    if skip_bad and named and n_usable is not None and n_usable < n_ids:
        return "clear"  # dropped, and the report names it
    return "accepted"


def part_corpus(tmp: Path, cases: int, seed: int) -> dict:
    base = tmp / "corpus-base"
    ids = make_subset(base)
    rng = random.Random(seed)
    outcomes: list[dict] = []
    env = wg2_env(tmp)
    for i in range(cases):
        case = tmp / f"corpus-case-{i}"
        shutil.copytree(base, case, copy_function=os.link)  # hard links: the corruption replaces, never edits
        what = corrupt(case, ids, rng)
        record = dict(what, case=i)
        for skip_bad in (False, True):
            argv = wg2_argv("corpus", "check", str(case), *(["--skip-bad"] if skip_bad else []))
            proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
            found = re.search(r"^utterances: (\d+) usable", proc.stdout, re.M)
            usable = int(found[1]) if found else None
            outcome = classify(proc.returncode, proc.stdout, proc.stderr, what["names"], skip_bad, usable, len(ids))
            key = "skip_bad" if skip_bad else "check"
            record[key] = outcome
            if outcome != "clear":
                lines = [line for line in proc.stderr.splitlines() if line.strip()]
                record[f"{key}_evidence"] = {"rc": proc.returncode, "stderr_tail": lines[-3:],
                                             "usable": usable}
        outcomes.append(record)
        log(f"corpus {i + 1}/{cases}: {what['detail']}: check {record['check']}, --skip-bad {record['skip_bad']}")
        shutil.rmtree(case)
    counts = {key: dict(Counter(o[key] for o in outcomes)) for key in ("check", "skip_bad")}
    return {"cases": cases, "utterances": len(ids), "counts": counts,
            "clear_share": sum(o["check"] == "clear" for o in outcomes) / max(cases, 1),
            "clear_share_skip_bad": sum(o["skip_bad"] == "clear" for o in outcomes) / max(cases, 1),
            "tracebacks": sum((o["check"] == "traceback") + (o["skip_bad"] == "traceback") for o in outcomes),
            "by_kind": {k: dict(Counter(f"{o['check']}/{o['skip_bad']}" for o in outcomes if o["kind"] == k))
                        for k in sorted({o["kind"] for o in outcomes})},
            "not_clear": [o for o in outcomes if o["check"] != "clear" or o["skip_bad"] != "clear"]}


# ============================================================================= kill

def _children(pid: int) -> list[int]:
    """Direct child processes of pid (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _grid_workers(pid: int) -> list[int]:
    """The grid's worker processes: the command's spawned children (not multiprocessing's resource tracker)."""
    workers = []
    for child in _children(pid):
        try:
            cmd = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "multiprocessing" in cmd and "resource_tracker" not in cmd and "forkserver" not in cmd:
            workers.append(child)
    return workers


def _wait_group(proc: subprocess.Popen, seconds: float) -> None:
    """Wait until the command and all of its process group are gone (SIGKILL what is left after `seconds`)."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        proc.poll()
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.5)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _grid_state(uri: str, name: str) -> dict:
    from mlflow import MlflowClient

    from evaluation.runs import KIND_CELL, KIND_GRID, TAG_CELL_HASH, TAG_KIND
    from experiments.tracking.store import ensure_store

    ensure_store(uri)  # under the store's lock: the grid may be creating it right now
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return {"cells": {}, "parents": []}
    runs = client.search_runs([exp.experiment_id], max_results=5000)
    cells: dict[str, list] = {}
    parents = []
    for r in runs:
        kind = r.data.tags.get(TAG_KIND)
        if kind == KIND_CELL:
            cells.setdefault(r.data.tags.get(TAG_CELL_HASH, r.info.run_id), []).append(
                {"run_id": r.info.run_id, "status": r.info.status, "metrics": len(r.data.metrics)})
        elif kind == KIND_GRID:
            parents.append({"run_id": r.info.run_id, "status": r.info.status})
    return {"cells": cells, "parents": parents}


def _finished_count(uri: str) -> int:
    return sum(any(r["status"] == "FINISHED" for r in rs) for rs in _grid_state(uri, "quickstart")["cells"].values())


def part_kill(tmp: Path, kills: int, seed: int, quick: bool, workers: int = 2) -> dict:
    rng = random.Random(seed)
    env = wg2_env(tmp)
    uri = env["MLFLOW_TRACKING_URI"]
    sets = [f"data.cache_dir={tmp / 'cache'}", f"data.root={CORPUS}"]
    if quick:
        sets += ["train.steps=6", "train.checkpoint_every=2", "train.log_every=1", "train.warmup_steps=1",
                 "train.gain_utterances=2", "data.max_utterances=40", "eval.limit=1", "eval.audio_artifacts=1",
                 'eval.schedules=["linear-6"]']
    argv = wg2_argv("grid", str(GRID), "--workers", str(workers), "--device", "cpu",
                    *[a for s in sets for a in ("--set", s)])
    low, high = (3.0, 25.0) if quick else (5.0, 90.0)
    log(f"kill: {' '.join(argv[3:])}")
    events, seen_finished, tracebacks = [], {}, 0
    proc = None
    logs = tmp / "kill-logs"
    logs.mkdir()
    k = 0
    while k < kills:
        if proc is None or proc.poll() is not None:
            if proc is not None and proc.returncode == 0:
                log("kill: the grid finished before the next kill; stopping the kills here")
                break
            stderr = open(logs / f"run{len(events)}.err", "w")
            proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=stderr,
                                    start_new_session=True)
        # Every fifth kill waits for the next cell to finish and strikes just after it (0-10 s later: while the
        # result is being recorded or the next cell starts), so that finished cells exist to be lost; the
        # others strike at a random time, mostly mid-cell.
        after_finish = k % 5 == 4
        before = _finished_count(uri) if after_finish else 0
        started_wait = time.time()
        while after_finish and proc.poll() is None and _finished_count(uri) <= before \
                and time.time() - started_wait < 1800:
            time.sleep(2.0)
        delay = rng.uniform(0.0, 10.0) if after_finish else rng.uniform(low, high)
        deadline = time.time() + delay
        while time.time() < deadline and proc.poll() is None:
            time.sleep(0.25)
        if after_finish:
            delay = time.time() - started_wait  # the whole wait, for the log
        if proc.poll() is not None:
            events.append({"kill": None, "exited": proc.returncode, "after_s": round(delay, 1)})
            if sum(e["kill"] is None and e["exited"] for e in events[-3:]) == 3:
                raise RuntimeError(f"the grid failed 3 times in a row by itself; see {logs}")
            continue
        target = rng.choice(["command", "command", "parent", "worker"])
        victims = _grid_workers(proc.pid)
        if target == "worker" and victims:
            os.kill(rng.choice(victims), signal.SIGKILL)
        elif target == "parent":
            os.kill(proc.pid, signal.SIGKILL)
        else:
            target = "command"
            os.killpg(proc.pid, signal.SIGKILL)
        k += 1
        if target != "worker":
            _wait_group(proc, 30)  # a killed parent's workers end themselves (watch_parent)
        state = _grid_state(uri, "quickstart")
        for h, rs in state["cells"].items():
            for r in rs:
                if r["status"] == "FINISHED":
                    seen_finished.setdefault(h, r["run_id"])
        events.append({"kill": target, "after_s": round(delay, 1), "after_a_cell_finished": after_finish,
                       "finished_cells": sum(any(r["status"] == "FINISHED" for r in rs)
                                             for rs in state["cells"].values())})
        when = " (just after a cell finished)" if after_finish else ""
        log(f"kill {k}/{kills}: SIGKILL {target} after {delay:.0f} s{when}; "
            f"{events[-1]['finished_cells']} cell(s) finished so far")
    if proc is not None and proc.poll() is None:
        _wait_group(proc, 3600 * 4)  # a killed worker: its command goes on; let it end
    started = time.time()
    log("kill: clean rerun")
    final = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True)
    (logs / "final.err").write_text(final.stderr)
    for path in logs.glob("*.err"):
        tracebacks += has_traceback(path.read_text(errors="replace"))
    state = _grid_state(uri, "quickstart")
    cells = state["cells"]
    finished_now = {h: [r for r in rs if r["status"] == "FINISHED"] for h, rs in cells.items()}
    lost = [h for h, run_id in seen_finished.items()
            if not any(r["run_id"] == run_id for r in finished_now.get(h, []))]
    duplicated = sum(max(0, len(rs) - 1) for rs in cells.values())
    running = sum(r["status"] == "RUNNING" for rs in cells.values() for r in rs) + \
        sum(p["status"] == "RUNNING" for p in state["parents"])
    return {"kills": sum(e["kill"] is not None for e in events), "workers": workers, "quick": quick,
            "events": events, "final_exit": final.returncode, "final_seconds": round(time.time() - started, 1),
            "cells": len(cells), "finished": sum(bool(v) for v in finished_now.values()),
            "finished_without_metrics": sum(r["metrics"] == 0 for rs in finished_now.values() for r in rs),
            "finished_before_rerun": len(seen_finished), "lost": len(lost), "duplicated": duplicated,
            "left_running": running, "parents": state["parents"], "tracebacks_in_stderr": tracebacks,
            "final_stdout_tail": final.stdout.splitlines()[-6:]}


# ============================================================================= search

def train_model(tmp: Path, steps: int) -> Path:
    out = tmp / "model"
    argv = wg2_argv("train", str(REPO / "experiments" / "configs" / "quickstart.toml"), "--device", "cpu", "--out",
                    str(out), "--set", f"train.steps={steps}", "--set", f"train.checkpoint_every={steps}",
                    "--set", "train.warmup_steps=1", "--set", "train.gain_utterances=2",
                    "--set", f"data.root={CORPUS}", "--set", f"data.cache_dir={tmp / 'cache'}")
    log(f"search: training the model to search on ({steps} steps)")
    subprocess.run(argv, cwd=REPO, env=wg2_env(tmp), check=True, capture_output=True, text=True)
    return out / "checkpoint.pt"


def start_postgres(folder: Path, packages: Path):
    """A PostgreSQL server from the pip package `pgserver` (installed with `pip install --target PACKAGES
    pgserver psycopg2-binary`): (server, SQLAlchemy URL, folder holding psycopg2 alone for PYTHONPATH)."""
    sys.path.append(str(packages))  # after the project's own packages: nothing of theirs is shadowed
    import pgserver

    server = pgserver.get_server(str(folder / "pgdata"), cleanup_mode="stop")
    only = folder / "psycopg2-only"
    only.mkdir()
    for name in ("psycopg2", "psycopg2_binary.libs"):
        if (packages / name).exists():
            (only / name).symlink_to(packages / name)
    url = server.get_uri().replace("postgresql://", "postgresql+psycopg2://", 1)
    return server, url, str(only)


def _study_counts(storage: str, study_name: str, budget: int, uri: str, extra_path: str) -> dict:
    """Read the study (in a subprocess when its driver lives on an extra path) and the MLflow trial runs."""
    code = ("import json, sys, optuna\n"
            "s = optuna.load_study(study_name=sys.argv[2], storage=sys.argv[1])\n"
            "print(json.dumps([[t.number, t.state.name, dict(t.params)] for t in s.get_trials(deepcopy=False)]))\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(REPO), extra_path) if p))
    trials = json.loads(subprocess.run([sys.executable, "-c", code, storage, study_name], env=env, check=True,
                                       capture_output=True, text=True).stdout)
    from mlflow import MlflowClient

    from evaluation.runs import KIND_TRIAL, TAG_KIND, TAG_STUDY, TAG_TRIAL_NUMBER
    from evaluation.runs import EXPERIMENT_SEARCH

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(EXPERIMENT_SEARCH)
    runs = [] if exp is None else client.search_runs([exp.experiment_id], max_results=5000)
    numbers = Counter(r.data.tags.get(TAG_TRIAL_NUMBER) for r in runs
                      if r.data.tags.get(TAG_KIND) == KIND_TRIAL and r.data.tags.get(TAG_STUDY) == study_name)
    states = Counter(state for _, state, _ in trials)
    finished = [n for n, state, _ in trials if state in ("COMPLETE", "PRUNED", "FAIL")]
    return {"trials": len(trials), "states": dict(states),
            "lost_unfinished": states.get("WAITING", 0) + states.get("RUNNING", 0),
            "lost_without_mlflow_run": sum(1 for n in finished if numbers.get(str(n), 0) == 0),
            "over_budget": max(0, len(trials) - budget),
            "duplicated_mlflow_runs": sum(c - 1 for c in numbers.values() if c > 1),
            "failed": states.get("FAIL", 0)}


def part_search(tmp: Path, storage: str, label: str, workers: int, trials: int, model: Path, seed: int,
                extra_path: str = "") -> dict:
    rng = random.Random(seed)
    study = f"faults-{label}"
    env = wg2_env(tmp, extra_path)
    argv = wg2_argv("search", str(model), "--study", study, "--storage", storage, "--trials", str(trials),
                    "--steps", "3", "--limit-utterances", "2", "--objective", "mel_cd", "--device", "cpu",
                    "--out", str(tmp / f"schedules-{label}"), "-q")
    log(f"search ({label}): {workers} commands on one study, {trials} trials")
    started = time.time()
    procs = []
    for i in range(workers):
        time.sleep(rng.uniform(0.0, 0.5))
        err = open(tmp / f"search-{label}-{i}.err", "w")
        procs.append(subprocess.Popen(argv, cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=err))
    codes = [p.wait() for p in procs]
    texts = [(tmp / f"search-{label}-{i}.err").read_text(errors="replace") for i in range(workers)]
    counts = _study_counts(storage, study, trials, env["MLFLOW_TRACKING_URI"], extra_path)
    counts.update({"storage": label, "workers": workers, "budget": trials, "exit_codes": codes,
                   "seconds": round(time.time() - started, 1), "tracebacks": sum(map(has_traceback, texts)),
                   "lost": counts["lost_unfinished"] + counts["lost_without_mlflow_run"],
                   "duplicated": counts["over_budget"] + counts["duplicated_mlflow_runs"],
                   "stderr_tails": [t.strip().splitlines()[-2:] for t, c in zip(texts, codes)
                                    if c or has_traceback(t)]})
    log(f"search ({label}): {counts['trials']} trials {counts['states']}, lost {counts['lost']}, "
        f"duplicated {counts['duplicated']}, exit codes {codes}")
    return counts


# ============================================================================= report

def markdown(results: dict) -> str:
    rows = ["| part | measure | value | target |", "|---|---|---|---|"]
    if "kill" in results:
        k = results["kill"]
        rows += [f"| kill ({k['kills']} SIGKILLs, {k['workers']} workers, then a rerun) | finished cells lost | "
                 f"{k['lost']} | 0 |",
                 f"| | cells duplicated (more than one run) | {k['duplicated']} | 0 |",
                 f"| | runs left RUNNING | {k['left_running']} | 0 |",
                 f"| | cells finished after the rerun | {k['finished']} of {k['cells']} | all |",
                 f"| | tracebacks | {k['tracebacks_in_stderr']} | 0 |"]
    for s in results.get("search", []):
        rows += [f"| search ({s['storage']}, {s['workers']} commands, {s['budget']} trials) | trials lost | "
                 f"{s['lost']} | 0 |",
                 f"| | trials duplicated | {s['duplicated']} | 0 |",
                 f"| | trials failed | {s['failed']} | 0 |",
                 f"| | tracebacks | {s['tracebacks']} | 0 |"]
    if "postgres_skipped" in results:
        rows.append(f"| search (PostgreSQL) | not run | {results['postgres_skipped']} | |")
    if "corpus" in results:
        c = results["corpus"]
        rows += [f"| corpus ({c['cases']} corruptions of {c['utterances']} utterances) | clear message | "
                 f"{c['clear_share']:.0%} | 100% |",
                 f"| | clear with --skip-bad (dropped and named, or exit 2 naming it) | "
                 f"{c['clear_share_skip_bad']:.0%} | 100% |",
                 f"| | silently accepted | {c['counts']['check'].get('accepted', 0)} | 0 |",
                 f"| | tracebacks | {c['tracebacks']} | 0 |"]
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    global QUIET
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", default="all", choices=["kill", "search", "corpus", "all"])
    p.add_argument("--quick", action="store_true", help="a small smoke version of each part")
    p.add_argument("--out", default="results/faults", help="folder for faults.json and faults.md")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kills", type=int, default=None, help="SIGKILLs (default 20; 3 with --quick)")
    p.add_argument("--search-workers", type=int, default=None, help="default 8; 3 with --quick")
    p.add_argument("--trials", type=int, default=None, help="default 64; 6 with --quick")
    p.add_argument("--cases", type=int, default=None, help="corpus corruptions (default 100; 10 with --quick)")
    p.add_argument("--postgres", action="store_true", help="also run the search part on a PostgreSQL study")
    p.add_argument("--pg-packages", default=str(Path(tempfile.gettempdir()) / "pgpkgs"),
                   help="folder where `pip install --target` put pgserver and psycopg2-binary")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (its path is printed)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    args = p.parse_args(argv)
    QUIET = args.quiet
    sys.path.insert(0, str(REPO))
    parts = ["corpus", "search", "kill"] if args.part == "all" else [args.part]
    tmp = Path(tempfile.mkdtemp(prefix="wg2-faults-"))
    results: dict = {"quick": args.quick, "seed": args.seed, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    try:
        if "corpus" in parts:
            results["corpus"] = part_corpus(tmp / "corpus", args.cases or (10 if args.quick else 100), args.seed)
        if "search" in parts:
            (tmp / "search").mkdir()
            model = train_model(tmp / "search", 4 if args.quick else 60)
            workers = args.search_workers or (3 if args.quick else 8)
            trials = args.trials or (6 if args.quick else 64)
            db = tmp / "search" / "optuna.db"
            results["search"] = [part_search(tmp / "search", f"sqlite:///{db}", "SQLite", workers, trials, model,
                                             args.seed)]
            if args.postgres:
                try:
                    server, url, extra = start_postgres(tmp / "search", Path(args.pg_packages))
                except Exception as err:  # noqa: BLE001 - recorded in the report instead
                    results["postgres_skipped"] = f"no server: {type(err).__name__}: {err}"
                else:
                    try:
                        results["search"].append(part_search(tmp / "search", url, "PostgreSQL", workers, trials,
                                                             model, args.seed, extra))
                    finally:
                        server.cleanup()
        if "kill" in parts:
            (tmp / "kill").mkdir()
            results["kill"] = part_kill(tmp / "kill", args.kills or (3 if args.quick else 20), args.seed, args.quick)
    finally:
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    (out / "faults.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (out / "faults.md").write_text(markdown(results))
    print(markdown(results), end="")
    bad = (results.get("corpus", {}).get("tracebacks", 0) + results.get("kill", {}).get("lost", 0)
           + results.get("kill", {}).get("duplicated", 0) + sum(s["lost"] + s["duplicated"] + s["tracebacks"]
                                                               for s in results.get("search", [])))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
