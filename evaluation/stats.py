"""Spread of a metric across utterances (or seeds): mean with a 95% t-interval, and Welch intervals for differences.

Missing values are never averaged in; they are counted, with their reasons, so every summary says how many
utterances it stands on. Undefined quantities (the interval of a single value) are None, never NaN.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Sequence

import numpy as np
from scipy import stats as sps

from evaluation.metrics import Missing

CONFIDENCE = 0.95


def split_missing(values: Sequence[float | Missing | None]) -> tuple[np.ndarray, Counter]:
    """Present values as an array, and a count of missing reasons (None and NaN count as missing too)."""
    present: list[float] = []
    reasons: Counter = Counter()
    for v in values:
        if isinstance(v, Missing):
            reasons[v.reason] += 1
        elif v is None:
            reasons["no value"] += 1
        elif not math.isfinite(float(v)):
            reasons[f"not finite ({v})"] += 1
        else:
            present.append(float(v))
    return np.asarray(present, dtype=np.float64), reasons


def summarize(values: Sequence[float | Missing | None], confidence: float = CONFIDENCE) -> dict:
    """mean, 95% t-interval of the mean (ci_low, ci_high), sample std, n present, n_missing and missing_reasons.
    With no value the mean is None; with one value the std and interval are None."""
    x, reasons = split_missing(values)
    n = len(x)
    out = {"mean": None, "ci_low": None, "ci_high": None, "std": None, "n": n,
           "n_missing": sum(reasons.values()), "missing_reasons": dict(reasons)}
    if n == 0:
        return out
    out["mean"] = float(x.mean())
    if n >= 2:
        std = float(x.std(ddof=1))
        half = float(sps.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
        out.update(std=std, ci_low=out["mean"] - half, ci_high=out["mean"] + half)
    return out


def mean_difference(a: Sequence[float | Missing | None], b: Sequence[float | Missing | None],
                    confidence: float = CONFIDENCE) -> dict:
    """mean(a) - mean(b) with a Welch (unequal variances) t-interval and Welch-Satterthwaite degrees of freedom.

    Returns diff, ci_low, ci_high, se, df, n_a, n_b. The interval is None when either side has fewer than two
    values; when both sides are constant the interval collapses to the difference itself (se 0, df None).
    """
    xa, _ = split_missing(a)
    xb, _ = split_missing(b)
    out = {"diff": None, "ci_low": None, "ci_high": None, "se": None, "df": None, "n_a": len(xa), "n_b": len(xb)}
    if len(xa) == 0 or len(xb) == 0:
        return out
    diff = float(xa.mean() - xb.mean())
    out["diff"] = diff
    if len(xa) < 2 or len(xb) < 2:
        return out
    va, vb = xa.var(ddof=1) / len(xa), xb.var(ddof=1) / len(xb)
    se = math.sqrt(va + vb)
    out["se"] = se
    if se == 0.0:
        out.update(ci_low=diff, ci_high=diff)
        return out
    df = (va + vb) ** 2 / (va ** 2 / (len(xa) - 1) + vb ** 2 / (len(xb) - 1))
    half = float(sps.t.ppf(0.5 + confidence / 2, df)) * se
    out.update(df=float(df), ci_low=diff - half, ci_high=diff + half)
    return out
