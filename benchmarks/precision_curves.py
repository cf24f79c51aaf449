"""Benchmark (not a test): does bf16 training follow the fp32 loss curve as closely as another seed does?

    .venv/bin/python benchmarks/precision_curves.py CONFIG.toml [--steps 300] [--seeds 0,1,2] [--set K=V ...]
        [--out results/bench/precision_curves_NAME]

The same config is trained from scratch for every seed twice, with the network in fp32 and under bf16 autocast
(`train.precision`; the diffusion arithmetic stays fp32), by `wg2 train`'s own code. A run's *level* is its mean
training loss over the last quarter of the logged steps (the loss of one batch is noisy). The question is
answered two ways, both against the fp32 seed-to-seed spread:
- paired (the verdict): bf16 − fp32 level with the same seed (same initial weights, same batches), against
  the spread (max − min) of the fp32 levels;
- level (stricter): is every bf16 run's level inside [min, max] of the fp32 runs' levels?
Writes JSON, markdown and a picture of the smoothed curves (fp32 blue, bf16 orange dashed), with each run's
conditioning gain at its last step beside the figures (a curve of a model that ignores its text says little).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation.metrics import PHONEME_GAIN_KEY
from experiments.config.run import load_config
from experiments.infer.evaluate import machine_name
from experiments.train.loop import train
from experiments.train.precision import set_threads

PRECISIONS = ("fp32", "bf16")


def level(history: list[dict]) -> float:
    """Mean loss over the last quarter of the logged steps."""
    losses = [h["loss"] for h in history]
    return float(np.mean(losses[-max(1, len(losses) // 4):]))


def smooth(values: list[float], width: int) -> np.ndarray:
    """Moving average (valid part) over `width` logged points."""
    width = max(1, min(width, len(values)))
    return np.convolve(values, np.ones(width) / width, mode="valid")


def last_gain(history: list[dict]) -> float | None:
    gains = [h[PHONEME_GAIN_KEY] for h in history if PHONEME_GAIN_KEY in h]
    return gains[-1] if gains else None


def compare(runs: dict[str, dict[int, dict]]) -> dict:
    """The verdict from each run's history: fp32 spread, every bf16 level inside it, paired differences."""
    levels = {p: {s: level(r["history"]) for s, r in runs[p].items()} for p in runs}
    low, high = min(levels["fp32"].values()), max(levels["fp32"].values())
    paired = {s: levels["bf16"][s] - levels["fp32"][s] for s in levels["bf16"] if s in levels["fp32"]}
    return {"levels": levels, "fp32_spread": [low, high], "spread_width": high - low,
            "bf16_inside_spread": all(low <= v <= high for v in levels["bf16"].values()),
            "paired_bf16_minus_fp32": paired,
            "paired_within_spread": all(abs(d) <= high - low for d in paired.values())}


def plot(runs: dict[str, dict[int, dict]], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for precision, color, style in zip(PRECISIONS, ("tab:blue", "tab:orange"), ("-", "--"), strict=True):
        for seed, run in runs[precision].items():
            steps = [h["step"] for h in run["history"]]
            losses = smooth([h["loss"] for h in run["history"]], 5)
            ax.plot(steps[len(steps) - len(losses):], losses, color=color, linestyle=style, alpha=0.8,
                    label=f"{precision} seed {seed}")  # bf16 dashed: where it tracks fp32, both stay visible
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (moving average of 5 logged steps)")
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--out", required=True)
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.steps < 8 or len(seeds) < 2:
        parser.error("--steps must be at least 8 and --seeds must list at least 2 seeds (a spread needs two)")
    threads = set_threads()
    out = Path(args.out)
    (out / "per_run").mkdir(parents=True, exist_ok=True)  # each finished run is kept: a rerun skips it
    runs: dict[str, dict[int, dict]] = {p: {} for p in PRECISIONS}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            for precision in PRECISIONS:  # interleaved, so a change in the machine's load hits both alike
                kept = out / "per_run" / f"{precision}-{seed}-{args.steps}.json"
                if kept.exists():
                    runs[precision][seed] = json.loads(kept.read_text())
                    continue
                config = load_config(args.config, [*args.overrides, f"train.steps={args.steps}",
                                                   f"train.seed={seed}", f"train.precision={precision}",
                                                   f"train.checkpoint_every={args.steps}"])
                started = time.perf_counter()
                result = train(config, Path(tmp) / f"{precision}-{seed}", device="cpu", progress=False)
                runs[precision][seed] = {"history": result.history, "wall_s": time.perf_counter() - started,
                                         "gain": last_gain(result.history)}
                kept.write_text(json.dumps(runs[precision][seed]))
                if not args.quiet:
                    print(f"{precision} seed {seed}: level {level(result.history):.4f}, "
                          f"{runs[precision][seed]['wall_s']:.0f} s, gain {runs[precision][seed]['gain']}",
                          file=sys.stderr, flush=True)
    verdict = compare(runs)
    name = Path(args.config).stem
    doc = {"config": args.config, "overrides": args.overrides, "steps": args.steps, "seeds": seeds,
           "machine": machine_name(torch.device("cpu")), "torch_threads": threads, **verdict, "runs": runs}
    (out / "precision_curves.json").write_text(json.dumps(doc, indent=2, default=str))
    plot(runs, out / "precision_curves.png", f"{name}: fp32 vs bf16 training loss, {args.steps} steps")
    lines = [f"# bf16 against fp32 training: {name}, {args.steps} steps, seeds {args.seeds} ({doc['machine']}, "
             f"{threads} torch thread(s))", "",
             f"`python benchmarks/precision_curves.py {args.config} --steps {args.steps} --seeds {args.seeds}"
             + "".join(f" --set {o}" for o in args.overrides) + "`. Level: mean training loss over the last "
             "quarter of the logged steps.", "",
             "| seed | fp32 level | bf16 level | bf16 − fp32 | fp32 s | bf16 s | speedup | gain fp32 | gain bf16 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for seed in seeds:
        f, b = runs["fp32"][seed], runs["bf16"][seed]
        gains = [f"{g:.3f}" if g is not None else "-" for g in (f["gain"], b["gain"])]
        lines.append(f"| {seed} | {verdict['levels']['fp32'][seed]:.4f} | {verdict['levels']['bf16'][seed]:.4f} | "
                     f"{verdict['paired_bf16_minus_fp32'][seed]:+.4f} | {f['wall_s']:.0f} | {b['wall_s']:.0f} | "
                     f"{f['wall_s'] / b['wall_s']:.2f}x | {gains[0]} | {gains[1]} |")
    low, high = verdict["fp32_spread"]
    lines += ["", f"fp32 seed-to-seed spread of the level: [{low:.4f}, {high:.4f}] (width {high - low:.4f}). "
              f"Every paired difference (bf16 − fp32, same seed: same initial weights and batches) smaller than the "
              f"spread's width: **{'yes' if verdict['paired_within_spread'] else 'no'}** (largest "
              f"{max(abs(d) for d in verdict['paired_bf16_minus_fp32'].values()):.4f}). Stricter, and unfair at the "
              "edges (the bf16 run of the highest or lowest seed falls just outside when precision moves it by any "
              f"amount in that direction): every bf16 level inside [min, max] of the fp32 levels: "
              f"**{'yes' if verdict['bf16_inside_spread'] else 'no'}**. Curves: `precision_curves.png`."]
    (out / "precision_curves.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
