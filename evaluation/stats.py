"""Spread of a metric across utterances (or seeds): mean with a 95% t-interval; differences between two cells,
paired on utterances (`paired_difference`: t-interval of the per-utterance differences and a Wilcoxon signed-rank
p-value) or, when the per-utterance values are not at hand, unpaired (`mean_difference`: Welch).

Missing values are never averaged in; they are counted, with their reasons, so every summary says how many
utterances it stands on. Undefined quantities (the interval of a single value) are None, never NaN. Given the
metric's range (`bounds`, from evaluation.metrics.value_range), interval ends are clipped to it: a mean's to the
range itself, a difference's to +-(its width).
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
from scipy import stats as sps

from evaluation.metrics import Missing

CONFIDENCE = 0.95
# how a difference's interval was made: across seeds (a training axis), paired on utterances (an eval-only axis), or
# unpaired on run-level values
SEED_T, PAIRED, WELCH = "t across seeds", "paired t + Wilcoxon", "Welch (unpaired)"

K = TypeVar("K", bound=Hashable)


def clip_interval(low: float | None, high: float | None,
                  bounds: tuple[float, float] | None) -> tuple[float | None, float | None]:
    """(low, high) moved inside bounds; None ends and None bounds pass through."""
    if bounds is None:
        return low, high
    lo, hi = float(bounds[0]), float(bounds[1])
    return (None if low is None else min(max(low, lo), hi)), (None if high is None else min(max(high, lo), hi))


def difference_bounds(bounds: tuple[float, float] | None) -> tuple[float, float] | None:
    """The range of a difference of two values in bounds: +-(hi - lo); None when unbounded."""
    if bounds is None or not math.isfinite(bounds[1] - bounds[0]):
        return None
    width = bounds[1] - bounds[0]
    return -width, width


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


def summarize(values: Sequence[float | Missing | None], confidence: float = CONFIDENCE,
              bounds: tuple[float, float] | None = None) -> dict:
    """mean, 95% t-interval of the mean (ci_low, ci_high; clipped to bounds), sample std, n present, n_missing and
    missing_reasons. With no value the mean is None; with one value the std and interval are None."""
    x, reasons = split_missing(values)
    n = len(x)
    out: dict[str, Any] = {"mean": None, "ci_low": None, "ci_high": None, "std": None, "n": n,
           "n_missing": sum(reasons.values()), "missing_reasons": dict(reasons)}
    if n == 0:
        return out
    out["mean"] = float(x.mean())
    if n >= 2:
        std = float(x.std(ddof=1))
        half = float(sps.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
        low, high = clip_interval(out["mean"] - half, out["mean"] + half, bounds)
        out.update(std=std, ci_low=low, ci_high=high)
    return out


def mean_difference(a: Sequence[float | Missing | None], b: Sequence[float | Missing | None],
                    confidence: float = CONFIDENCE, bounds: tuple[float, float] | None = None) -> dict:
    """mean(a) - mean(b) with a Welch (unequal variances) t-interval and Welch-Satterthwaite degrees of freedom.

    Returns diff, ci_low, ci_high, se, df, n_a, n_b. The interval is None when either side has fewer than two
    values; when both sides are constant the interval collapses to the difference itself (se 0, df None).
    """
    xa, _ = split_missing(a)
    xb, _ = split_missing(b)
    out: dict[str, Any] = {"diff": None, "ci_low": None, "ci_high": None, "se": None, "df": None, "n_a": len(xa),
                           "n_b": len(xb)}
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
    low, high = clip_interval(diff - half, diff + half, difference_bounds(bounds))
    out.update(df=float(df), ci_low=low, ci_high=high)
    return out


def paired_difference(a: Mapping[K, float | Missing | None], b: Mapping[K, float | Missing | None],
                      confidence: float = CONFIDENCE, bounds: tuple[float, float] | None = None) -> dict:
    """a - b paired on keys: each key is one scored utterance under one noise seed, e.g. (seed, utterance ID), so
    with several seeds the pairs are made within a seed and pooled. Keys where either side is missing are dropped.

    Returns diff (mean of the per-key differences), ci_low, ci_high (95% t-interval of that mean, clipped to
    the difference's range), n (pairs), p_wilcoxon (two-sided Wilcoxon signed-rank test of the differences; 1.0
    when every difference is zero, None with fewer than two pairs), test = PAIRED.
    """
    def present(v) -> float | None:
        x, _ = split_missing([v])
        return float(x[0]) if len(x) else None

    diffs: list[float] = []
    for key in sorted(a.keys() & b.keys(), key=repr):
        xa, xb = present(a[key]), present(b[key])
        if xa is not None and xb is not None:
            diffs.append(xa - xb)
    d = np.asarray(diffs, dtype=np.float64)
    out: dict[str, Any] = {"diff": None, "ci_low": None, "ci_high": None, "n": len(d), "p_wilcoxon": None,
                           "test": PAIRED}
    if len(d) == 0:
        return out
    s = summarize(diffs, confidence, difference_bounds(bounds))
    out.update(diff=s["mean"], ci_low=s["ci_low"], ci_high=s["ci_high"])
    if len(d) >= 2:
        if not np.any(d != 0):
            out["p_wilcoxon"] = 1.0
        else:
            out["p_wilcoxon"] = float(sps.wilcoxon(d).pvalue)
    return out
