"""The noise floor of the quality metrics: what a model that says nothing scores.

A grid cell "sits above the noise floor" when its scores beat these. Two outputs that carry no speech,
scored against each reference with the suite's own metrics (evaluation.scoring.score_pair, ground-truth
length, as `wg2 eval` scores its aligned pass), on the utterances `wg2 eval` picks for a run config:
  - white noise at the reference's RMS;
  - speech-shaped noise: the reference's magnitude spectrum over the whole utterance with random phases, so
    its long-term spectrum is the reference's and its time envelope is flat (a model that learned the
    speaker's spectrum but not what to say, or when).

    python benchmarks/noise_floor.py experiments/configs/cpu.toml --limit 16 --out results/noise_floor
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from evaluation.metrics import Missing, headline_metrics
from evaluation.scoring import score_pair
from evaluation.stats import summarize
from experiments.config.run import load_config
from experiments.corpus.dataset import load_dataset
from experiments.infer.evaluate import pick_utterances

FLOORS = ("white noise", "speech-shaped noise")


def floor_signal(kind: str, reference: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A signal of the reference's length and RMS that carries no speech."""
    if kind == "white noise":
        out = rng.standard_normal(len(reference))
    else:
        spectrum = np.abs(np.fft.rfft(reference)) * np.exp(2j * np.pi * rng.random(len(reference) // 2 + 1))
        out = np.fft.irfft(spectrum, n=len(reference))
    rms = np.sqrt(np.mean(reference ** 2)) / max(np.sqrt(np.mean(out ** 2)), 1e-12)
    return np.clip(out * rms, -1.0, 1.0).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("config", help="run config whose corpus, split and eval.seed pick the utterances")
    p.add_argument("--limit", type=int, default=16, help="utterances (0 = all of the split)")
    p.add_argument("--out", default=None, help="folder for noise_floor.json and noise_floor.md")
    args = p.parse_args(argv)
    config = load_config(args.config)
    dataset = load_dataset(config.data, progress=False)
    utterances = pick_utterances(dataset.split(config.eval.split), args.limit, config.eval.seed)
    names = headline_metrics()
    rng = np.random.default_rng(0)
    results: dict[str, dict] = {}
    for kind in FLOORS:
        scores = [score_pair(u.audio, floor_signal(kind, u.audio, rng), dataset.sample_rate) for u in utterances]
        values = {m: [s[m] for s in scores if m in s and not isinstance(s[m], Missing)] for m in names}
        results[kind] = {m: summarize(v) for m, v in values.items() if v}
    doc = {"config": args.config, "split": config.eval.split, "utterances": [u.id for u in utterances],
           "floors": results}
    lines = [f"# Noise floor of the metrics ({len(utterances)} {config.eval.split} utterances of {args.config})", "",
             "What an output without speech scores: mean [95% interval]. `python benchmarks/noise_floor.py "
             f"{args.config} --limit {args.limit}`.", "",
             "| output | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for kind, stats in results.items():
        cells = [f"{stats[m]['mean']:.3g} [{stats[m]['ci_low']:.3g}, {stats[m]['ci_high']:.3g}]" if m in stats else "-"
                 for m in names]
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "noise_floor.json").write_text(json.dumps(doc, indent=2, default=float) + "\n")
        (out / "noise_floor.md").write_text(text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
