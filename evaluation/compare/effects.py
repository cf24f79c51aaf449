"""Aggregation of a grid's finished runs: a value's interval is the 95% t-interval across seeds, and with a single
seed that run's own interval across utterances (the "_ci_low"/"_ci_high" metrics); each axis's marginal means and
its effects (paired on utterances where every run has its per-utterance values, else Welch / pooled-variance)."""
from __future__ import annotations

import ast
import itertools
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats as sps

from evaluation.compare.data import (
    CLEAR,
    DERIVED,
    MIN_SEEDS,
    NO_CLEAR,
    NOT_SCHEDULES,
    TOO_FEW_SEEDS,
    UNIT_SEED,
    UNIT_UTTERANCE,
    CellRow,
    Effect,
    RunRecord,
    Stat,
    canonical,
    label_of,
    metric_key,
    show_value,
    sort_key,
)
from evaluation.metrics import GAIN_KEY, PHONEME_GAIN_KEY, Missing, value_range
from evaluation.runs import TAG_LABEL
from evaluation.stats import (
    PAIRED,
    SEED_T,
    clip_interval,
    difference_bounds,
    mean_difference,
    paired_difference,
    summarize,
)


def _stat(runs: list[RunRecord], key: str) -> Stat:
    """Interval ends are clipped to the metric's range (also those logged by runs from before clipping)."""
    present = [(r, r.metrics[key]) for r in runs if key in r.metrics and math.isfinite(r.metrics[key])]
    n_missing = int(sum(r.metrics.get(key + "_n_missing", 0) or 0 for r in runs))
    bounds = value_range(key)
    if len(present) >= 2:
        s = summarize([v for _, v in present], bounds=bounds)
        return Stat(s["mean"], s["ci_low"], s["ci_high"], len(present), "seeds", n_missing)
    if len(present) == 1:
        run, v = present[0]
        lo, hi = run.metrics.get(key + "_ci_low"), run.metrics.get(key + "_ci_high")
        if lo is not None and hi is not None and math.isfinite(lo) and math.isfinite(hi):
            lo, hi = clip_interval(lo, hi, bounds)
            return Stat(v, lo, hi, 1, "utterances", n_missing)
        return Stat(v, None, None, 1, "", n_missing)
    return Stat(None, n_missing=n_missing)


def schedules_seen(runs: list[RunRecord]) -> list[str]:
    """Inference schedules in the order the configs list them, then any others found in metric keys."""
    found = {k.split("/", 1)[0] for r in runs for k in r.metrics if "/" in k} - NOT_SCHEDULES
    ordered: list[str] = []
    for r in sorted(runs, key=lambda r: r.start_time):  # the first cell's config lists them in the grid's order
        try:  # MLflow stores the list param as its Python repr
            names = ast.literal_eval(r.params.get("eval.schedules", "[]"))
        except (ValueError, SyntaxError):
            names = []
        for name in names if isinstance(names, list) else []:
            label = Path(name).stem if Path(str(name)).suffix in (".json", ".toml") else str(name)
            if label in found and label not in ordered:
                ordered.append(label)
    return ordered + sorted(found - set(ordered))


def _run_schedules(run: RunRecord, schedules: list[str]) -> list[str]:
    return [s for s in schedules if any(k.startswith(s + "/") for k in run.metrics)]


def _value(run: RunRecord, metric: str, schedule: str | None, schedules: list[str]) -> float | None:
    """The run's metric at a schedule; schedule None: at the run's own first schedule (schedule axes)."""
    if schedule is None:
        own = _run_schedules(run, schedules)
        if not own and "/" not in metric:
            return None
        schedule = own[0] if own else ""
    return run.metrics.get(metric_key(metric, schedule))


def axis_values(runs: list[RunRecord], axis: str, order: list[str]) -> list[str]:
    """Canonical values of an axis among the runs, in the grid's order where known, else sorted."""
    seen = {canonical(r.assignment[axis]): r.assignment[axis] for r in runs if axis in r.assignment}
    known = [v for v in order if v in seen]
    rest = sorted((v for v in seen if v not in known), key=lambda v: sort_key(seen[v]))
    return known + rest


def _strata(runs: list[RunRecord], axis: str, value: str, metric: str, schedule: str | None,
            schedules: list[str]) -> dict[str, list[float]]:
    """The metric's values for the runs with axis = value, one list (its seeds) per setting of the other axes."""
    out: dict[str, list[float]] = {}
    for r in runs:
        v = _value(r, metric, schedule, schedules) if canonical(r.assignment.get(axis)) == value else None
        if v is not None and math.isfinite(v):
            out.setdefault(canonical({k: x for k, x in r.assignment.items() if k != axis}), []).append(v)
    return out


def _within_cell_variance(cells: list[list[float]]) -> tuple[float, int] | None:
    """Seed-to-seed variance pooled over cells (df = sum of n - 1); None when no cell has two seeds."""
    df = sum(len(c) - 1 for c in cells)
    if df <= 0:
        return None
    return sum(float(((np.asarray(c) - np.mean(c)) ** 2).sum()) for c in cells) / df, df


def _interval(center: float, se: float, df: int) -> tuple[float, float]:
    half = float(sps.t.ppf(0.975, df)) * se
    return center - half, center + half


def _marginal_mean(cells: dict[str, list[float]],
                   pooled: tuple[float, int] | None) -> tuple[float, tuple[float, float] | None]:
    """Mean over the other axes' settings of the cell means (each setting weighs the same, so a missing seed or
    cell does not tilt it), with a 95% interval from the pooled seed variance (else the spread across settings)."""
    means = [float(np.mean(v)) for v in cells.values()]
    center = float(np.mean(means))
    if pooled is not None:
        var, df = pooled
        return center, _interval(center, math.sqrt(var * sum(1 / len(v) for v in cells.values())) / len(cells), df)
    s = summarize(means if len(means) > 1 else next(iter(cells.values())))
    return center, (s["ci_low"], s["ci_high"]) if s["ci_low"] is not None else None


def axis_means(runs: list[RunRecord], axis: str, metric: str, schedules: list[str],
               orders: dict[str, list[str]]) -> list[tuple[str, str, float, tuple | None]]:
    """(value, schedule, marginal mean, 95% interval) per schedule and value of the axis: its plot's bars."""
    out = []
    for s in ([""] if "/" in metric else schedules):
        every = [_strata(runs, axis, v, metric, s, schedules) for v in axis_values(runs, axis, [])]
        pooled = _within_cell_variance([c for cells in every for c in cells.values()])
        for value in axis_values(runs, axis, orders.get(axis, [])):
            cells = _strata(runs, axis, value, metric, s, schedules)
            if cells:
                center, interval = _marginal_mean(cells, pooled)
                ci = clip_interval(*interval, value_range(metric)) if interval is not None else None
                out.append((show_value(json.loads(value)), s, center, ci))
    return out


def _strata_runs(runs: list[RunRecord], axis: str, value: str, metric: str, schedule: str | None,
                 schedules: list[str]) -> dict[str, list[tuple[RunRecord, str]]]:
    """As _strata, but the runs themselves with the metric key each was read at."""
    out: dict[str, list[tuple[RunRecord, str]]] = {}
    for r in runs:
        if canonical(r.assignment.get(axis)) != value:
            continue
        v = _value(r, metric, schedule, schedules)
        if v is None or not math.isfinite(v):
            continue
        own = schedule if schedule is not None else (_run_schedules(r, schedules) or [""])[0]
        out.setdefault(canonical({k: x for k, x in r.assignment.items() if k != axis}), []).append(
            (r, metric_key(metric, own)))
    return out


def is_eval_only(axis: str) -> bool:
    """An axis that changes only the evaluation of one trained model (schedules, steps, weights): `eval.*`."""
    return axis.startswith("eval.")


def _utterance_values(run: RunRecord, key: str, per_utterance: dict) -> dict[str, float | Missing] | str:
    values = (per_utterance.get(run.run_id) or {}).get(key)
    if values is None:
        return f"run {run.name or run.run_id} has no per-utterance {key} (no per_utterance.csv)"
    return values


def _paired(side_a: dict, side_b: dict, common: list[str], per_utterance: dict, metric: str) -> dict | str:
    """Eval-only axes: per-utterance differences a - b, paired within (setting of the other axes, seed, utterance)
    and pooled (the unit is the utterance within each model); or, when they cannot be paired, the reason."""
    a_values: dict[tuple, float | Missing] = {}
    b_values: dict[tuple, float | Missing] = {}
    for k in common:
        by_seed = [{r.seed: (r, key) for r, key in side[k]} for side in (side_a, side_b)]
        if None in by_seed[0] or None in by_seed[1] or by_seed[0].keys() != by_seed[1].keys():
            return "the two sides were not run with the same seeds"
        for seed in by_seed[0]:
            for side, target in zip(by_seed, (a_values, b_values)):
                values = _utterance_values(*side[seed], per_utterance)
                if isinstance(values, str):
                    return values
                target.update({(k, seed, utt): v for utt, v in values.items()})
    d = paired_difference(a_values, b_values, bounds=value_range(metric))
    return d if d["n"] >= 2 else "fewer than two utterances scored by both sides"


def _seed_effects(side_a: dict, side_b: dict, common: list[str], per_utterance: dict,
                  metric: str) -> tuple[dict[str, float], str]:
    """Training axes: each seed's effect a - b, the mean over the other axes' settings of its paired mean over
    utterances (same utterances, same noise seeds; the run-level values where a run has no per-utterance values).
    Returns {seed: effect} and a note on what was not paired."""
    by_seed: dict[str, list[float]] = {}
    unpaired = ""
    for k in common:
        runs_a = {r.seed: (r, key) for r, key in side_a[k]}
        runs_b = {r.seed: (r, key) for r, key in side_b[k]}
        for seed in sorted(set(runs_a) & set(runs_b), key=lambda x: (x is None, x)):
            (ra, ka), (rb, kb) = runs_a[seed], runs_b[seed]
            effect = None
            if "/" not in metric:
                va, vb = _utterance_values(ra, ka, per_utterance), _utterance_values(rb, kb, per_utterance)
                if isinstance(va, str) or isinstance(vb, str):
                    unpaired = va if isinstance(va, str) else str(vb)
                else:
                    effect = paired_difference(va, vb)["diff"]
            if effect is None:
                effect = ra.metrics[ka] - rb.metrics[kb]
            by_seed.setdefault(str(seed), []).append(float(effect))
    return {seed: float(np.mean(v)) for seed, v in by_seed.items()}, unpaired


def seed_level(effects: dict[str, float], bounds: tuple[float, float] | None) -> dict:
    """The interval and test across seeds: mean of the per-seed effects, 95% t-interval (seeds - 1 degrees of
    freedom), two-sided one-sample t-test. With fewer than MIN_SEEDS seeds: no interval, no p, "too few seeds"."""
    values = list(effects.values())
    out: dict = {"diff": float(np.mean(values)) if values else None, "ci_low": None, "ci_high": None, "p": None,
                 "n": len(values), "verdict": TOO_FEW_SEEDS}
    if len(values) < MIN_SEEDS:
        return out
    s = summarize(values, bounds=bounds)
    p = 1.0 if s["std"] == 0 else float(sps.ttest_1samp(values, 0.0).pvalue)
    out.update(ci_low=s["ci_low"], ci_high=s["ci_high"], p=p,
               verdict=CLEAR if s["ci_low"] > 0 or s["ci_high"] < 0 else NO_CLEAR)
    return out


def _verdict(ci_low: float | None, ci_high: float | None) -> str:
    if ci_low is None or ci_high is None:
        return NO_CLEAR
    return CLEAR if ci_low > 0 or ci_high < 0 else NO_CLEAR


def axis_effects(runs: list[RunRecord], axes: list[str], metric: str, schedules: list[str],
             orders: dict[str, list[str]], per_utterance: dict | None = None) -> list[Effect]:
    """For each axis and each pair of its values a, b: a - b over the other axes' settings where both finished,
    with the unit of evidence the axis was replicated in.

    An axis that changes training (unit "seed"): each seed's effect is its paired mean over utterances (same
    utterances, same noise seeds), averaged over the other axes' settings; the difference is the mean over seeds,
    its interval a t-interval across seeds (seeds - 1 degrees of freedom) and p a one-sample t-test. With fewer
    than MIN_SEEDS seeds: the per-seed effects and "too few seeds", no interval, no p. Utterances are never
    counted as replicates of a training.

    An eval-only axis (`eval.*`: schedules, steps, weights; unit "utterance"): paired on utterances within each
    model (seed and setting), pooled, with a 95% t-interval on the differences and a Wilcoxon signed-rank p; where
    runs lack per-utterance values, the run-level Welch fall-back of before (Effect.note says why).
    Interval ends are clipped to the range a difference of the metric can take."""
    effects = []
    per_utterance = per_utterance or {}
    bounds = difference_bounds(value_range(metric))
    for axis in axes:
        values = axis_values(runs, axis, orders.get(axis, []))
        for a, b in itertools.combinations(values, 2):
            candidates = [""] if "/" in metric else schedules
            usable = [s for s in candidates if _strata(runs, axis, a, metric, s, schedules).keys()
                      & _strata(runs, axis, b, metric, s, schedules).keys()]
            at: list[str | None] = [*usable] or [None]
            for s in at:  # None: each run at its own schedule (an eval.schedules axis)
                side_a, side_b = (_strata(runs, axis, v, metric, s, schedules) for v in (a, b))
                common = sorted(side_a.keys() & side_b.keys())
                if not common:
                    continue
                head: dict[str, Any] = dict(axis=axis, a=show_value(json.loads(a)), b=show_value(json.loads(b)),
                            schedule=s if s is not None else "own schedule", n_a=sum(len(side_a[k]) for k in common),
                            n_b=sum(len(side_b[k]) for k in common), settings=len(common), metric=metric)
                runs_a, runs_b = (_strata_runs(runs, axis, v, metric, s, schedules) for v in (a, b))
                if not is_eval_only(axis):
                    per_seed, unpaired = _seed_effects(runs_a, runs_b, common, per_utterance, metric)
                    level = seed_level(per_seed, bounds)
                    effects.append(Effect(**head, diff=level["diff"], ci_low=level["ci_low"],
                                          ci_high=level["ci_high"], test=SEED_T, p_value=level["p"],
                                          note=unpaired, unit=UNIT_SEED, n=level["n"], verdict=level["verdict"],
                                          per_seed=per_seed))
                    continue
                paired = _paired(runs_a, runs_b, common, per_utterance, metric) \
                    if "/" not in metric else "a run-level metric, not scored per utterance"
                if isinstance(paired, dict):
                    effects.append(Effect(**head, diff=paired["diff"], ci_low=paired["ci_low"],
                                          ci_high=paired["ci_high"], test=PAIRED, p_value=paired["p_wilcoxon"],
                                          n_pairs=paired["n"], unit=UNIT_UTTERANCE, n=paired["n"],
                                          verdict=_verdict(paired["ci_low"], paired["ci_high"])))
                    continue
                if len(common) == 1:
                    d = mean_difference(side_a[common[0]], side_b[common[0]])
                    diff, ci = d["diff"], (d["ci_low"], d["ci_high"])
                else:
                    gaps = [float(np.mean(side_a[k]) - np.mean(side_b[k])) for k in common]
                    diff = float(np.mean(gaps))
                    pooled = _within_cell_variance([side_a[k] for k in common] + [side_b[k] for k in common])
                    if pooled is not None:
                        var, df = pooled
                        terms = sum(1 / len(side_a[k]) + 1 / len(side_b[k]) for k in common)
                        ci = _interval(diff, math.sqrt(var * terms) / len(common), df)
                    else:
                        d = summarize(gaps)
                        ci = (d["ci_low"], d["ci_high"])
                ci = clip_interval(*ci, bounds)
                effects.append(Effect(**head, diff=diff, ci_low=ci[0], ci_high=ci[1], note=paired,
                                      unit=UNIT_SEED, n=head["n_a"], verdict=_verdict(*ci)))
    return effects


def cell_rows(finished: list[RunRecord], axes: list[str], orders: dict[str, list[str]]) -> list[CellRow]:
    groups: dict[str, list[RunRecord]] = {}
    for r in finished:
        groups.setdefault(r.group, []).append(r)
    keys = sorted({k for r in finished for k in r.metrics if not k.endswith(DERIVED)}
                  # a metric missing on every utterance has only its count: keep it, so the count is reported
                  | {k[:-len("_n_missing")] for r in finished for k in r.metrics if k.endswith("_n_missing")})
    rows = []
    for group, runs in groups.items():
        runs.sort(key=lambda r: (r.seed is None, r.seed))
        first = runs[0]
        # the grid runner's own label (the run name less its seed) so rows read like the MLflow runs
        named = re.sub(r"\s*seed=-?\d+$", "", first.tags.get(TAG_LABEL) or first.name).strip()
        rows.append(CellRow(group=group, label=named or label_of(first.assignment), assignment=first.assignment,
                            seeds=[r.seed for r in runs if r.seed is not None], run_ids=[r.run_id for r in runs],
                            params=first.params, stats={k: _stat(runs, k) for k in keys},
                            run_gains=[{"mean": r.metrics.get(PHONEME_GAIN_KEY),
                                        "ci_low": r.metrics.get(f"{PHONEME_GAIN_KEY}_ci_low"),
                                        "envelope": r.metrics.get(GAIN_KEY)} for r in runs]))

    def order(row: CellRow) -> tuple:
        out = []
        for axis in axes:
            value = canonical(row.assignment.get(axis))
            known = orders.get(axis, [])
            out.append((known.index(value), ()) if value in known
                       else (len(known), sort_key(row.assignment.get(axis))))
        return tuple(out) + (row.label,)
    return sorted(rows, key=order)
