"""`wg2 score REF.wav DEG.wav [--json]`: score any pair of files exactly as the suite scores its own output
(the scoring itself is evaluation/scoring.py)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import soundfile as sf

from evaluation.metrics import METRICS, Missing, to_jsonable
from evaluation.scoring import ALIGN_TOLERANCE_S, score_pair
from experiments.config.run import InputError


def read_mono(path: str | Path) -> tuple[np.ndarray, int]:
    """(samples,) float64 in [-1, 1] and the rate; multi-channel files are averaged to mono.
    Raises InputError naming the file when it is absent or not readable audio."""

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such audio file")
    try:
        audio, rate = sf.read(str(path), dtype="float64", always_2d=True)  # (T, C)
    except Exception as err:  # soundfile raises its own LibsndfileError / RuntimeError for anything unreadable
        raise InputError(f"{path}: cannot read audio ({err})") from err
    return audio.mean(axis=1), int(rate)


def _format_value(value: float | Missing, unit: str) -> str:
    if isinstance(value, Missing):
        return f"missing: {value.reason}"
    return f"{value:.4f} {unit}".rstrip()


def cmd_score(args: argparse.Namespace) -> int:
    reference, ref_rate = read_mono(args.reference)
    degraded, deg_rate = read_mono(args.degraded)
    # compare lengths at a common rate: the degraded file is resampled to the reference's rate before scoring
    deg_len_at_ref = len(degraded) * ref_rate / deg_rate
    aligned = abs(deg_len_at_ref - len(reference)) <= ALIGN_TOLERANCE_S * ref_rate
    scores = score_pair(reference, degraded, ref_rate, deg_rate, aligned=aligned)
    if args.json:
        print(json.dumps({
            "reference": str(args.reference), "degraded": str(args.degraded),
            "reference_rate": ref_rate, "degraded_rate": deg_rate,
            "reference_seconds": len(reference) / ref_rate, "degraded_seconds": len(degraded) / deg_rate,
            "aligned": aligned, "scores": to_jsonable(scores)}, indent=2))
        return 0
    print(f"reference: {args.reference} ({len(reference) / ref_rate:.3f} s at {ref_rate} Hz)")
    print(f"degraded:  {args.degraded} ({len(degraded) / deg_rate:.3f} s at {deg_rate} Hz"
          + (f", resampled to {ref_rate} Hz)" if deg_rate != ref_rate else ")"))
    if aligned:
        print(f"aligned: yes (lengths equal within {ALIGN_TOLERANCE_S * 1000:.0f} ms): every metric")
    else:
        print(f"aligned: no (lengths differ by more than {ALIGN_TOLERANCE_S * 1000:.0f} ms): "
              "only length-robust metrics")
    width = max(len(k) for k in scores)
    print()
    print(f"{'metric':<{width}}  {'better':<11}  value")
    for name, value in scores.items():
        info = METRICS[name]
        print(f"{name:<{width}}  {info.better:<11}  {_format_value(value, info.unit)}")
    return 0
