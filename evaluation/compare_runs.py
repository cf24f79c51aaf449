"""Read a grid's runs back from MLflow and aggregate them into what a `wg2 compare` report shows.

One run stands for each cell (the latest finished try); seeds of one cell (runs sharing tag wg2.group) are
pooled: a value's interval is the 95% t-interval across seeds, and with a single seed it is that run's own
interval across utterances (the "_ci_low"/"_ci_high" metrics). Only FINISHED runs are aggregated; the others are
listed by state, beside the expected cells that have no run at all. Also here: each axis's marginal effect, and
for latent grids the autoencoder ceiling and whether the latent target was reached. Nothing is written.
Nothing here imports `experiments` (evaluation sits below experiments).
"""
from __future__ import annotations

import ast
import itertools
import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats as sps

from evaluation.runs import (KIND_AUTOENCODER, KIND_CELL, KIND_GRID, TAG_ASSIGNMENT, TAG_AUTOENCODER_RUN, TAG_AXES,
                             TAG_CELL_HASH, TAG_DESCRIPTION, TAG_END_REASON, TAG_ERROR, TAG_EXPECTED_CELLS, TAG_GROUP,
                             TAG_HEARTBEAT, TAG_KIND, TAG_LABEL, TAG_SEED, search_all_runs, sqlite_path, tag_is,
                             tracking_uri)
from evaluation.metrics import Missing, figure_info, value_range
from evaluation.stats import (PAIRED, WELCH, clip_interval, difference_bounds, mean_difference, paired_difference,
                              summarize)

NOT_SCHEDULES = {"train", "recon"}  # metric-key prefixes that are not inference schedules
DERIVED = ("_ci_low", "_ci_high", "_n_missing")  # per-run companions of a metric, not metrics of their own
# The latent-space target (issue 7): R=16 sampling >= 5x faster than waveform space at >= 90% of its PESQ-wb,
# compared at a 6-step schedule.
TARGET_STRIDE, TARGET_SPEEDUP, TARGET_QUALITY = 16, 5.0, 0.90


# Metric names before the rename to say what is measured (a log-mel DCT distance, not SPTK-mcep MCD): runs logged
# under them are read under the current names, companions (_ci_low, _n_missing, ...) included.
RENAMED_METRICS = {"mcd": "mel_cd", "mcd_dtw": "mel_cd_dtw"}
_RENAMED = re.compile(r"(?<![^/])(" + "|".join(sorted(map(re.escape, RENAMED_METRICS), key=len, reverse=True))
                      + r")(?=$|_ci_low$|_ci_high$|_n_missing$)")


def current_metric_name(key: str) -> str:
    """A metric key (`schedule/metric`, `recon/metric`, a bare metric, or one of their companions) under the current
    metric names: `manual-6/mcd_dtw_n_missing` -> `manual-6/mel_cd_dtw_n_missing`; other keys unchanged."""
    return _RENAMED.sub(lambda m: RENAMED_METRICS[m.group(1)], key)


def _current_names(metrics: dict[str, float]) -> dict[str, float]:
    """Old keys renamed; where a run has both (logged under both names), the current name wins."""
    out = {current_metric_name(k): v for k, v in metrics.items() if current_metric_name(k) != k}
    out.update({k: v for k, v in metrics.items() if current_metric_name(k) == k})
    return out


class CompareError(ValueError):
    """The experiment, store or metric asked for does not exist; the message says what does."""


# ----------------------------------------------------------------------------- data

@dataclass
class RunRecord:
    """One MLflow run, with the wg2 tags decoded."""
    run_id: str
    name: str
    status: str  # FINISHED, FAILED, RUNNING, KILLED, SCHEDULED
    group: str
    seed: int | None
    cell_hash: str
    assignment: dict[str, Any]
    params: dict[str, str]
    tags: dict[str, str]
    metrics: dict[str, float]
    start_time: int


@dataclass
class Stat:
    """A metric of one cell: mean over its seeds with a 95% interval, and how that interval was made."""
    mean: float | None
    ci_low: float | None = None
    ci_high: float | None = None
    n: int = 0  # runs (seeds) with a value
    interval: str = ""  # "seeds", "utterances" (one seed: across its utterances) or "" (none)
    n_missing: int = 0  # utterances without a value, summed over seeds

    def ci(self) -> tuple[float, float] | None:
        return None if self.ci_low is None or self.ci_high is None else (self.ci_low, self.ci_high)


@dataclass
class CellRow:
    """One cell of the grid with its seeds pooled (the FINISHED runs sharing tag wg2.group)."""
    group: str
    label: str
    assignment: dict[str, Any]
    seeds: list[int]
    run_ids: list[str]
    params: dict[str, str]
    stats: dict[str, Stat]
    ceiling: dict[str, float] = field(default_factory=dict)  # latent cells: the autoencoder's recon/* metrics
    ceiling_label: str = ""

    def mean(self, key: str) -> float | None:
        s = self.stats.get(key)
        return None if s is None else s.mean


@dataclass
class Effect:
    """Marginal effect of one axis: mean(metric | axis=a) - mean(metric | axis=b) over the other cells."""
    axis: str
    a: str
    b: str
    schedule: str
    diff: float
    ci_low: float | None
    ci_high: float | None
    n_a: int  # runs on each side
    n_b: int
    settings: int  # settings of the other axes where both values finished
    test: str = WELCH  # PAIRED: on per-utterance differences (same utterances, same noise seeds); else WELCH
    p_value: float | None = None  # Wilcoxon signed-rank, paired only
    n_pairs: int = 0  # utterance x seed pairs behind a paired difference
    note: str = ""  # why a difference is not paired


@dataclass
class Target:
    """Whether latent R=16 reached the target against waveform space (None: the runs cannot decide it)."""
    reached: bool | None
    statement: str
    comparisons: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Grid:
    """One grid as MLflow holds it, read back and aggregated (the whole input of the report)."""
    name: str
    experiment_id: str
    parent: Any  # the grid's parent mlflow Run, or None
    question: str
    metric: str  # the headline metric
    axes: list[str]
    orders: dict[str, list[str]]  # each axis's canonical values in the grid's order
    schedules: list[str]
    runs: list[RunRecord]  # one per cell (a retried cell counts once), any state
    expected_source: str  # where the list of expected cells came from
    status: dict[str, list]  # expected, missing, finished, failed, running
    rows: list[CellRow]
    effects: list[Effect]
    ceilings: list[tuple[str, dict]]  # the autoencoders found: (label, recon metrics)
    target: Target | None  # None: not a latent grid
    per_utterance: dict[str, dict[str, dict[str, float | Missing]]] = field(default_factory=dict)
    # run ID -> metric key ("manual-6/pesq_wb") -> utterance ID -> value, from each finished run's per_utterance.csv


# ----------------------------------------------------------------------------- small helpers

def direction(key: str) -> int:
    """+1 higher is better, -1 lower is better, 0 neither (e.g. length_ratio) or unknown: from evaluation.metrics'
    METRICS and RUN_FIGURES tables."""
    info = figure_info(key)
    return 0 if info is None else info.direction


def metric_key(metric: str, schedule: str) -> str:
    """'pesq_wb' at 'manual-6' -> 'manual-6/pesq_wb'; a full key ('train/loss') is schedule-free."""
    return metric if "/" in metric else f"{schedule}/{metric}"


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def show_value(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v)


def label_of(assignment: dict[str, Any], seed: int | None = None) -> str:
    text = " ".join(f"{k}={show_value(v)}" for k, v in assignment.items())
    if seed is not None:
        text = f"{text} seed={seed}".strip()
    return text or "(single cell)"


def _sort_key(v: Any) -> tuple:
    if isinstance(v, bool):
        return (2, str(v))
    if isinstance(v, (int, float)):
        return (0, float(v), "")
    if isinstance(v, str):
        return (1, 0.0, v)
    return (2, 0.0, canonical(v))


def _json_tag(text: str | None, default: Any) -> Any:
    if not text:
        return default
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return default


# ----------------------------------------------------------------------------- reading MLflow

def resolve_tracking_uri(uri: str | None = None) -> str:
    """Given URI, else MLFLOW_TRACKING_URI, else the working directory's SQLite store; a SQLite file that does
    not exist is an error (reading must not create an empty store)."""
    uri = uri or tracking_uri()
    path = sqlite_path(uri)
    if path is not None and not path.is_file():
        raise CompareError(f"no MLflow store at {path} (tracking URI {uri}); run `wg2 grid` first or set "
                           "MLFLOW_TRACKING_URI")
    return uri


def _search(client, experiment_id: str, kind: str) -> list:
    return search_all_runs(client, [experiment_id], tag_is(TAG_KIND, kind))


def _record(run) -> RunRecord:
    tags, params = dict(run.data.tags), dict(run.data.params)
    seed_text = tags.get(TAG_SEED, params.get("train.seed"))
    try:
        seed = int(seed_text) if seed_text is not None else None
    except ValueError:
        seed = None
    assignment = _json_tag(tags.get(TAG_ASSIGNMENT), {})
    return RunRecord(run_id=run.info.run_id, name=run.info.run_name or tags.get("mlflow.runName", ""),
                     status=run.info.status, group=tags.get(TAG_GROUP) or canonical(assignment),
                     seed=seed, cell_hash=tags.get(TAG_CELL_HASH, run.info.run_id), assignment=assignment,
                     params=params, tags=tags, metrics=_current_names(dict(run.data.metrics)),
                     start_time=run.info.start_time or 0)


def _running(run: RunRecord) -> str:
    """A run not finished nor failed: say how fresh its worker's heartbeat is (a stale one was interrupted)."""
    import time

    try:
        age = time.time() - float(run.tags[TAG_HEARTBEAT])
    except (KeyError, ValueError):
        return f"{run.name} ({run.status})"
    return f"{run.name} ({run.status}, last heartbeat {age / 60:.0f} min ago)"


def end_reason(tags: dict, status: str) -> str:
    """Why a run ended FAILED or KILLED, in one line: its wg2.end_reason tag (set by the grid), else its
    wg2.error tag, else that nothing was recorded."""
    text = (tags.get(TAG_END_REASON) or tags.get(TAG_ERROR) or "").strip()
    return text.splitlines()[0][:200] if text else f"{status}, no reason recorded"


def _ended(run: RunRecord) -> str:
    """A cell that did not finish: name, how it ended and why."""
    return f"{run.name} ({run.status}): {end_reason(run.tags, run.status)}"


def _pick(runs: list[RunRecord]) -> RunRecord:
    """The run that stands for a cell when it was tried more than once: the latest finished, else the latest."""
    finished = [r for r in runs if r.status == "FINISHED"]
    return max(finished or runs, key=lambda r: r.start_time)


def _parent(client, experiment_id: str, cells: list[RunRecord]):
    parents = _search(client, experiment_id, KIND_GRID)
    if not parents:
        return None
    referenced = [r.tags.get("mlflow.parentRunId") for r in cells]
    return max(parents, key=lambda p: (referenced.count(p.info.run_id), p.info.start_time or 0))


def _expected_from_parent(client, parent) -> list | None:
    """The grid runner's list of expected cells: tag wg2.expected_cells or artifact cells.json (either may be
    absent: older or foreign runs)."""
    if parent is None:
        return None
    listed = _json_tag(parent.data.tags.get(TAG_EXPECTED_CELLS), None)
    if isinstance(listed, list):
        return listed
    try:
        names = [a.path for a in client.list_artifacts(parent.info.run_id)]
        if "cells.json" in names:
            import tempfile
            with tempfile.TemporaryDirectory() as tmp:
                local = client.download_artifacts(parent.info.run_id, "cells.json", tmp)
                listed = json.loads(Path(local).read_text())
        if isinstance(listed, dict):
            listed = listed.get("cells")
        return listed if isinstance(listed, list) else None
    except Exception as err:  # noqa: BLE001 - an unreadable artifact store must not stop the report
        print(f"wg2 compare: warning: could not read cells.json of the parent run: {err}", file=sys.stderr)
        return None


def _normalize_expected(items: list) -> list[dict]:
    """Accept the shapes a cell list may take: hashes, labels, or dicts with assignment/seed/cell_hash/label."""
    out = []
    for item in items:
        if isinstance(item, str):
            out.append({"cell_hash": item, "label": item})
        elif isinstance(item, dict):
            assignment = item.get("assignment") or {}
            seed = item.get("seed")
            out.append({"cell_hash": item.get("cell_hash") or item.get("hash"), "assignment": assignment,
                        "seed": seed, "label": item.get("label") or item.get("name") or label_of(assignment, seed)})
    return out


# ----------------------------------------------------------------------------- aggregation

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


def _schedules(runs: list[RunRecord]) -> list[str]:
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


def _axis_values(runs: list[RunRecord], axis: str, order: list[str]) -> list[str]:
    """Canonical values of an axis among the runs, in the grid's order where known, else sorted."""
    seen = {canonical(r.assignment[axis]): r.assignment[axis] for r in runs if axis in r.assignment}
    known = [v for v in order if v in seen]
    rest = sorted((v for v in seen if v not in known), key=lambda v: _sort_key(seen[v]))
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


def _marginal_mean(cells: dict[str, list[float]], pooled: tuple[float, int] | None) -> tuple[float, tuple | None]:
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
        every = [_strata(runs, axis, v, metric, s, schedules) for v in _axis_values(runs, axis, [])]
        pooled = _within_cell_variance([c for cells in every for c in cells.values()])
        for value in _axis_values(runs, axis, orders.get(axis, [])):
            cells = _strata(runs, axis, value, metric, s, schedules)
            if cells:
                center, ci = _marginal_mean(cells, pooled)
                ci = clip_interval(*ci, value_range(metric)) if ci is not None else None
                out.append((show_value(json.loads(value)), s, center, ci))
    return out


def read_per_utterance(client, run_id: str) -> dict[str, dict[str, float | Missing]] | None:
    """A run's per_utterance.csv (written by `wg2 eval`, logged by the grid runner) as metric key -> utterance ID ->
    value (Missing where the run gave a reason instead of a number); None when the run has no such artifact."""
    import csv
    import tempfile

    try:
        with tempfile.TemporaryDirectory() as tmp:
            local = client.download_artifacts(run_id, "per_utterance.csv", tmp)
            with open(local, newline="") as fh:
                rows = list(csv.DictReader(fh))
    except Exception:  # noqa: BLE001 - absent (older runs) or unreadable store: the report falls back to unpaired
        return None
    out: dict[str, dict[str, float | Missing]] = {}
    for row in rows:
        utterance, schedule = row.pop("utterance", None), row.pop("schedule", None)
        row.pop("durations", None)
        if not utterance or not schedule:
            continue
        for metric, text in row.items():
            metric = current_metric_name(metric)
            if text in (None, ""):
                continue  # the metric belongs to the other pass (true or predicted durations)
            try:
                value: float | Missing = float(text)
            except ValueError:
                value = Missing(text)
            out.setdefault(f"{schedule}/{metric}", {})[utterance] = value
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


def _paired(side_a: dict, side_b: dict, common: list[str], per_utterance: dict, metric: str) -> dict | str:
    """Per-utterance differences a - b, paired within (setting of the other axes, seed, utterance) and pooled;
    or, when they cannot be paired, the reason (a string)."""
    a_values: dict[tuple, float | Missing] = {}
    b_values: dict[tuple, float | Missing] = {}
    for k in common:
        by_seed = [{r.seed: (r, key) for r, key in side[k]} for side in (side_a, side_b)]
        if None in by_seed[0] or None in by_seed[1] or by_seed[0].keys() != by_seed[1].keys():
            return "the two sides were not run with the same seeds"
        for seed in by_seed[0]:
            for side, target in zip(by_seed, (a_values, b_values)):
                run, key = side[seed]
                values = (per_utterance.get(run.run_id) or {}).get(key)
                if values is None:
                    return f"run {run.name or run.run_id} has no per-utterance {key} (no per_utterance.csv)"
                target.update({(k, seed, utt): v for utt, v in values.items()})
    d = paired_difference(a_values, b_values, bounds=value_range(metric))
    return d if d["n"] >= 2 else "fewer than two utterances scored by both sides"


def _effects(runs: list[RunRecord], axes: list[str], metric: str, schedules: list[str],
             orders: dict[str, list[str]], per_utterance: dict | None = None) -> list[Effect]:
    """For each axis and each pair of its values a, b: a - b over the other axes' settings where both finished.

    Paired (the cells were scored on the same utterances with the same noise seeds) when every run involved has
    its per-utterance values: the mean of the per-utterance differences, paired within seed and pooled over seeds
    and settings, with a 95% t-interval on those differences and a Wilcoxon signed-rank p-value. Otherwise
    (older runs, mismatched seeds, run-level metrics like train/*): the mean over settings of (cell mean at a -
    cell mean at b), with one setting a Welch interval across seeds, with more a t-interval from the seed variance
    pooled over those cells (else from the spread of the differences); Effect.note says why it is not paired.
    Interval ends are clipped to the range a difference of the metric can take."""
    effects = []
    per_utterance = per_utterance or {}
    bounds = difference_bounds(value_range(metric))
    for axis in axes:
        values = _axis_values(runs, axis, orders.get(axis, []))
        for a, b in itertools.combinations(values, 2):
            candidates = [""] if "/" in metric else schedules
            usable = [s for s in candidates if _strata(runs, axis, a, metric, s, schedules).keys()
                      & _strata(runs, axis, b, metric, s, schedules).keys()]
            for s in usable or [None]:  # None: each run at its own schedule (an eval.schedules axis)
                side_a, side_b = (_strata(runs, axis, v, metric, s, schedules) for v in (a, b))
                common = sorted(side_a.keys() & side_b.keys())
                if not common:
                    continue
                paired = _paired(_strata_runs(runs, axis, a, metric, s, schedules),
                                 _strata_runs(runs, axis, b, metric, s, schedules), common, per_utterance, metric) \
                    if "/" not in metric else "a run-level metric, not scored per utterance"
                if isinstance(paired, dict):
                    effects.append(Effect(axis, show_value(json.loads(a)), show_value(json.loads(b)),
                                          s if s is not None else "own schedule", paired["diff"], paired["ci_low"],
                                          paired["ci_high"], sum(len(side_a[k]) for k in common),
                                          sum(len(side_b[k]) for k in common), len(common), PAIRED,
                                          paired["p_wilcoxon"], paired["n"]))
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
                effects.append(Effect(axis, show_value(json.loads(a)), show_value(json.loads(b)),
                                      s if s is not None else "own schedule", diff, ci[0], ci[1],
                                      sum(len(side_a[k]) for k in common), sum(len(side_b[k]) for k in common),
                                      len(common), note=paired))
    return effects


def _rows(finished: list[RunRecord], axes: list[str], orders: dict[str, list[str]]) -> list[CellRow]:
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
                            params=first.params, stats={k: _stat(runs, k) for k in keys}))

    def order(row: CellRow) -> tuple:
        out = []
        for axis in axes:
            value = canonical(row.assignment.get(axis))
            known = orders.get(axis, [])
            out.append((known.index(value), ()) if value in known
                       else (len(known), _sort_key(row.assignment.get(axis))))
        return tuple(out) + (row.label,)
    return sorted(rows, key=order)


# ----------------------------------------------------------------------------- latent space

def _attach_ceilings(client, rows: list[CellRow], runs: list[RunRecord],
                     experiment_id: str) -> list[tuple[str, dict]]:
    """Give each latent cell its autoencoder's recon/* metrics (tag wg2.autoencoder_run on its runs; else the
    experiment's only autoencoder run). Returns the autoencoders found: (label, recon metrics)."""
    by_id = {r.run_id: r for r in runs}
    cache: dict[str, Any] = {}
    local = None

    def fetch(run_id: str):
        if run_id not in cache:
            try:
                cache[run_id] = client.get_run(run_id)
            except Exception:  # noqa: BLE001 - deleted or in another store: the ceiling is then unknown, said in the report
                cache[run_id] = None
        return cache[run_id]

    found: dict[str, tuple[str, dict]] = {}
    for row in rows:
        if row.params.get("model.space") != "latent":
            continue
        ae = None
        for rid in row.run_ids:
            link = by_id[rid].tags.get(TAG_AUTOENCODER_RUN)
            if link and (ae := fetch(link)) is not None:
                break
        if ae is None:
            if local is None:
                local = _search(client, experiment_id, KIND_AUTOENCODER)
            ae = local[0] if len(local) == 1 else None
        if ae is None:
            continue
        recon = {k.split("/", 1)[1]: v for k, v in _current_names(dict(ae.data.metrics)).items()
                 if k.startswith("recon/") and not k.endswith(DERIVED)}
        p = ae.data.params
        stride = p.get("autoencoder.stride", row.params.get("autoencoder.stride", "?"))
        kind = p.get("autoencoder.kind", row.params.get("autoencoder.kind", ""))
        row.ceiling = recon
        row.ceiling_label = f"autoencoder R={stride} {kind}".strip()
        found[ae.info.run_id] = (row.ceiling_label, recon)
    return list(found.values())


def fraction_of_ceiling(value: float | None, ceiling: float | None, metric: str) -> float | None:
    """1.0 = as good as the autoencoder's reconstruction, below 1 = short of it (inverted for lower-is-better)."""
    if value is None or not ceiling or direction(metric) == 0:
        return None
    return value / ceiling if direction(metric) > 0 else (ceiling / value if value else None)


def _space_axes(rows: list[CellRow]) -> set[str]:
    """Axes that choose the space: model.space, autoencoder.*, and any axis (a multi-key one, say) whose every
    value fixes model.space while its values span both spaces. Latent and waveform cells are matched on the rest."""
    keys = {k for r in rows for k in r.assignment}
    out = {k for k in keys if k == "model.space" or k.startswith("autoencoder.")}
    for k in keys - out:
        spaces: dict[str, set[str]] = {}
        for r in rows:
            spaces.setdefault(canonical(r.assignment.get(k)), set()).add(r.params.get("model.space", "waveform"))
        if all(len(v) == 1 for v in spaces.values()) and len(set().union(*spaces.values())) > 1:
            out.add(k)
    return out


def _is_r16(row: CellRow) -> bool:
    try:
        stride = int(row.params.get("autoencoder.stride", -1))
        return row.params.get("model.space") == "latent" and stride == TARGET_STRIDE
    except ValueError:
        return False


def latent_target(rows: list[CellRow], schedules: list[str]) -> Target:
    """Latent R=16 against waveform space at a 6-step schedule: >= 5x faster sampling at >= 90% of PESQ-wb.
    Each R=16 cell is compared with the waveform cells that agree on every non-space axis (else all of them)."""
    six = [s for s in schedules if s == "manual-6"] + [s for s in schedules if s != "manual-6" and s.endswith("-6")]
    latent = [r for r in rows if _is_r16(r)]
    wave = [r for r in rows if r.params.get("model.space", "waveform") == "waveform"]
    why = ("no finished latent R=16 cell" if not latent else "no finished waveform cell" if not wave
           else "no 6-step schedule (e.g. manual-6) was evaluated" if not six else "")
    if why:
        return Target(None, f"**Target undecided**: {why}, so R=16 cannot be compared with waveform space.")

    space_axes = _space_axes(rows)

    def rest(row: CellRow) -> str:
        return canonical({k: v for k, v in row.assignment.items() if k not in space_axes})
    comparisons = []
    for row, s in itertools.product(latent, six):
        peers = [w for w in wave if rest(w) == rest(row)] or wave
        w_rtf = [w.mean(f"{s}/rtf") for w in peers if w.mean(f"{s}/rtf") is not None]
        w_q = [w.mean(f"{s}/pesq_wb") for w in peers if w.mean(f"{s}/pesq_wb") is not None]
        l_rtf, l_q = row.mean(f"{s}/rtf"), row.mean(f"{s}/pesq_wb")
        if not w_rtf or not w_q or not l_rtf or l_q is None:
            continue
        speedup = (sum(w_rtf) / len(w_rtf)) / l_rtf
        quality = l_q / (sum(w_q) / len(w_q))
        comparisons.append({"cell": row.label, "schedule": s, "speedup": speedup, "quality_fraction": quality,
                            "reached": speedup >= TARGET_SPEEDUP and quality >= TARGET_QUALITY})
    if not comparisons:
        return Target(None, "**Target undecided**: the R=16 or waveform cells lack rtf or pesq_wb at "
                      f"{', '.join(six)}.")
    best = max(comparisons, key=lambda c: (c["reached"], min(c["speedup"] / TARGET_SPEEDUP,
                                                             c["quality_fraction"] / TARGET_QUALITY)))
    head = "**Target reached**" if best["reached"] else "**Target not reached**"
    short = [w for w, ok in (("speed", best["speedup"] >= TARGET_SPEEDUP),
                             ("quality", best["quality_fraction"] >= TARGET_QUALITY)) if not ok]
    text = (f"{head}: latent R=16 (`{best['cell']}`) samples {best['speedup']:.1f}x as fast as waveform space at "
            f"{best['schedule']} with {100 * best['quality_fraction']:.0f}% of its PESQ-wb (target: at least "
            f"{TARGET_SPEEDUP:g}x at {100 * TARGET_QUALITY:.0f}% or more"
            + (f"; short on {' and '.join(short)}" if short else "") + "). Point estimates (means over seeds); "
            "their intervals are in the tables below.")
    return Target(best["reached"], text, comparisons)


# ----------------------------------------------------------------------------- one grid

def read_grid(client, experiment_name: str, metric: str = "pesq_wb", expected: list[dict] | None = None) -> Grid:
    """Read the grid's runs from MLflow and aggregate them. `expected` (cells from the grid file) is used when
    the parent run does not list its cells itself."""
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        names = [e.name for e in client.search_experiments(max_results=50)]
        raise CompareError(f"no MLflow experiment named {experiment_name!r} at {client.tracking_uri}; "
                           f"experiments there: {', '.join(names) or 'none'}")
    exp_id = experiment.experiment_id
    metric = current_metric_name(metric)
    all_runs = [_record(r) for r in _search(client, exp_id, KIND_CELL)]
    by_cell: dict[str, list[RunRecord]] = {}
    for r in all_runs:
        by_cell.setdefault(r.cell_hash, []).append(r)
    runs = [_pick(rs) for rs in by_cell.values()]  # one run per cell (a retried cell counts once)
    finished = [r for r in runs if r.status == "FINISHED"]
    schedules = _schedules(finished)
    if "/" not in metric and finished and not any(metric_key(metric, s) in r.metrics
                                                  for r in finished for s in schedules):
        names = sorted({k.split("/", 1)[1] for r in finished for k in r.metrics
                        if "/" in k and not k.endswith(DERIVED)})
        raise CompareError(f"metric {metric!r} is in no finished run of {experiment_name!r}; available: "
                           f"{', '.join(names)}")

    parent = _parent(client, exp_id, runs)
    ptags = parent.data.tags if parent is not None else {}
    question = ptags.get(TAG_DESCRIPTION) or ptags.get("mlflow.note.content") or "(no description was logged)"
    axes = _json_tag(ptags.get(TAG_AXES), None) or list(dict.fromkeys(k for r in runs for k in r.assignment))

    # the cells that should exist: as the grid runner listed them, else from the grid file, else inferred
    listed, source = _expected_from_parent(client, parent), "listed by the grid's parent run"
    if listed is None and expected is not None:
        listed, source = expected, "from the grid file"
    if listed is None and axes and runs:
        values = {a: [json.loads(v) for v in _axis_values(runs, a, [])] for a in axes}
        seeds = sorted({r.seed for r in runs if r.seed is not None}) or [None]
        listed = [{"assignment": dict(zip(axes, combo)), "seed": s}
                  for combo in itertools.product(*values.values()) for s in seeds]
        source = "inferred from the axis values and seeds seen; a grid's `exclude` list is not known here"
    expected_cells = _normalize_expected(listed or [])
    orders: dict[str, list[str]] = {}
    for cell in expected_cells:
        for k, v in (cell.get("assignment") or {}).items():
            orders.setdefault(k, [])
            if canonical(v) not in orders[k]:
                orders[k].append(canonical(v))

    hashes = {r.cell_hash for r in runs}
    keyed = {(canonical(r.assignment), r.seed) for r in runs} | {(canonical(r.assignment), None) for r in runs}
    missing = [c["label"] for c in expected_cells
               if not (c.get("cell_hash") in hashes or (c.get("assignment") is not None
                                                       and (canonical(c["assignment"]), c.get("seed")) in keyed))]
    status = {"expected": expected_cells, "missing": missing,
              "finished": [r for r in runs if r.status == "FINISHED"],
              "failed": [_ended(r) for r in runs if r.status in ("FAILED", "KILLED")],
              "running": [_running(r) for r in runs if r.status in ("RUNNING", "SCHEDULED")]}

    rows = _rows(finished, axes, orders)
    latent = any(r.params.get("model.space") == "latent" for r in rows)
    ceilings = _attach_ceilings(client, rows, runs, exp_id) if latent else []
    target = latent_target(rows, schedules) if latent else None
    per_utterance = {r.run_id: table for r in finished if (table := read_per_utterance(client, r.run_id)) is not None}
    effects = _effects(finished, axes, metric, schedules, orders, per_utterance)
    return Grid(experiment_name, exp_id, parent, question, metric, axes, orders, schedules, runs, source, status,
                rows, effects, ceilings, target, per_utterance)
