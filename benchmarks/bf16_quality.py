"""Benchmark (not a test): what bf16 sampling costs in quality on one trained checkpoint.

    .venv/bin/python benchmarks/bf16_quality.py CHECKPOINT [--schedules manual-6,linear-50] [--limit 8] [--out DIR]

The same checkpoint, utterances and noise seeds are evaluated by `wg2 eval`'s own code twice, with the network
in fp32 and under bf16 autocast (the diffusion arithmetic stays fp32 either way). Each metric's bf16 - fp32
difference is paired per utterance and schedule (evaluation.stats.paired_difference: mean, 95% t-interval,
Wilcoxon p) and written as JSON and markdown beside the real-time factors of both runs. The conditioning gain
is measured once (it does not depend on the sampling precision) and reported beside the quality numbers.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation.metrics import GAIN_KEY, PHONEME_GAIN_KEY
from evaluation.stats import paired_difference
from experiments.infer.evaluate import evaluate, machine_name
from experiments.infer.synth import load_checkpoint
from experiments.train.precision import set_threads

METRICS = ("pesq_wb", "stoi", "mel_cd")
TARGETS = {"pesq_wb": 0.02, "stoi": 0.005}  # issue targets: |bf16 - fp32| within these


def per_utterance(folder: Path) -> dict[tuple[str, str, str], dict[str, str]]:
    with open(folder / "per_utterance.csv", newline="") as fh:
        return {(r["utterance"], r["schedule"], r["durations"]): r for r in csv.DictReader(fh)}


def number(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:  # a Missing reason
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--schedules", default="manual-6,linear-50")
    parser.add_argument("--limit", type=int, default=8)
    parser.add_argument("--out", default="results/bench")
    args = parser.parse_args(argv)
    set_threads()
    runs: dict = {}
    speed: dict = {}
    gain: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for precision in ("fp32", "bf16"):
            loaded = load_checkpoint(args.checkpoint, "cpu")
            config = dataclasses.replace(loaded.config.eval, schedules=args.schedules.split(","), limit=args.limit,
                                         precision=precision, audio_artifacts=0)
            result = evaluate(loaded, config, Path(tmp) / precision, progress=False)
            runs[precision] = per_utterance(Path(tmp) / precision)
            speed[precision] = {s: v["rtf"] for s, v in result.summary["speed"].items()}
            gain = {k: result.summary[k] for k in (GAIN_KEY, PHONEME_GAIN_KEY, "reads_text")}
    rows = []
    for schedule in args.schedules.split(","):
        for metric in METRICS:
            pick = {p: {(u, d): number(r.get(metric)) for (u, s, d), r in runs[p].items()
                        if s == schedule and d == "true"} for p in runs}
            diff = paired_difference(pick["bf16"], pick["fp32"])
            rows.append({"schedule": schedule, "metric": metric, **diff,
                         "target": TARGETS.get(metric), "rtf_fp32": speed["fp32"][schedule],
                         "rtf_bf16": speed["bf16"][schedule]})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    doc = {"checkpoint": str(args.checkpoint), "machine": machine_name(loaded.device), "limit": args.limit,
           "gains": gain, "rows": rows}
    (out / "bf16_quality.json").write_text(json.dumps(doc, indent=2, default=str))
    lines = [f"# bf16 sampling against fp32 on one checkpoint ({doc['machine']})", "",
             f"Checkpoint `{args.checkpoint}`; up to {args.limit} val utterances (pairs: what the split holds), "
             "ground-truth durations, same noise seeds. "
             f"Envelope gain {gain[GAIN_KEY]['mean']:.3f}, phoneme gain {gain[PHONEME_GAIN_KEY]['mean']:.3f} "
             f"[{gain[PHONEME_GAIN_KEY]['ci_low']:.3f}, {gain[PHONEME_GAIN_KEY]['ci_high']:.3f}] "
             f"({'reads its text' if gain['reads_text'] else 'DOES NOT READ ITS TEXT'}).", "",
             "| schedule | metric | bf16 − fp32 | 95% interval | Wilcoxon p | pairs | target | RTF fp32 | RTF bf16 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ci = f"[{r['ci_low']:+.4f}, {r['ci_high']:+.4f}]" if r["ci_low"] is not None else "—"
        p = f"{r['p_wilcoxon']:.3f}" if r["p_wilcoxon"] is not None else "—"
        target = f"±{r['target']}" if r["target"] else ""
        lines.append(f"| {r['schedule']} | {r['metric']} | {r['diff']:+.4f} | {ci} | {p} | {r['n']} | {target} | "
                     f"{r['rtf_fp32']:.3f} | {r['rtf_bf16']:.3f} |")
    (out / "bf16_quality.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
