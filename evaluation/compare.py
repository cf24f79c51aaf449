"""`wg2 compare`: read a grid's runs back from MLflow and write a report that answers the grid's question.

Into the output folder: report.md (the question; cells x metrics with 95% intervals, best marked; each axis's
marginal effect; speed beside quality; machine and commit; missing, failed and running cells; for latent grids
the autoencoder ceiling and whether the latent target was reached), results.csv (one row per cell, every
metric) and PNG plots. The same files are logged on the grid's parent run under `report/`.

Seeds of one cell (runs sharing tag wg2.group) are pooled: a value's interval is the 95% t-interval across
seeds; with a single seed it is that run's own interval across utterances (the "_ci_low"/"_ci_high" metrics).
Only FINISHED runs enter the tables; the others are listed by state. Works on any tracking URI and on partial
grids. This module never imports `experiments` at import time (evaluation sits below experiments).
"""
from __future__ import annotations

import ast
import csv
import dataclasses
import io
import itertools
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats as sps

from evaluation import report_plots as plots
from evaluation.stats import mean_difference, summarize

QUALITY = ("pesq_wb", "stoi", "estoi", "mcd", "mcd_dtw")
TRAINING = ("train/audio_seconds_per_sec", "train/peak_memory_mb", "train/wall_seconds", "train/loss")
HIGHER_BETTER = {"pesq_wb", "pesq_nb", "stoi", "estoi", "audio_seconds_per_sec", "steps_per_sec"}
LOWER_BETTER = {"mcd", "mcd_dtw", "log_mel_distance", "f0_rmse_cents", "vuv_error", "rtf", "peak_memory_mb",
                "duration_error_frames", "loss", "noise_loss", "duration_loss", "wall_seconds"}
NOT_SCHEDULES = {"train", "recon"}  # metric-key prefixes that are not inference schedules
DERIVED = ("_ci_low", "_ci_high", "_n_missing")  # per-run companions of a metric, not metrics of their own
# The latent-space target (issue 7): R=16 sampling >= 5x faster than waveform space at >= 90% of its PESQ-wb,
# compared at a 6-step schedule.
TARGET_STRIDE, TARGET_SPEEDUP, TARGET_QUALITY = 16, 5.0, 0.90
UTTERANCE_MARK = "†"


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


@dataclass
class Target:
    """Whether latent R=16 reached the target against waveform space (None: the runs cannot decide it)."""
    reached: bool | None
    statement: str
    comparisons: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Report:
    experiment: str
    out_dir: Path
    report_md: Path
    results_csv: Path
    plots: list[Path]
    rows: list[CellRow]
    missing: list[str]  # expected cells with no run
    failed: list[str]  # "label: error"
    running: list[str]  # runs still RUNNING/SCHEDULED (or interrupted without being marked)
    metric: str
    schedules: list[str]
    effects: list[Effect]
    target: Target | None
    parent_run_id: str | None
    logged_on_parent: bool


# ----------------------------------------------------------------------------- small helpers

def direction(key: str) -> int:
    """+1 higher is better, -1 lower is better, 0 neither (e.g. length_ratio)."""
    base = key.rsplit("/", 1)[-1]
    return 1 if base in HIGHER_BETTER else -1 if base in LOWER_BETTER else 0


def metric_key(metric: str, schedule: str) -> str:
    """'pesq_wb' at 'manual-6' -> 'manual-6/pesq_wb'; a full key ('train/loss') is schedule-free."""
    return metric if "/" in metric else f"{schedule}/{metric}"


def fmt(v: float | None) -> str:
    if v is None or not math.isfinite(v):
        return "—"
    a = abs(v)
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


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


def _write_atomic(path: Path, text: str) -> Path:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


# ----------------------------------------------------------------------------- reading MLflow

def resolve_tracking_uri(uri: str | None = None) -> str:
    """Given URI, else MLFLOW_TRACKING_URI, else the working directory's SQLite store; a SQLite file that does
    not exist is an error (reading must not create an empty store)."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])
        if not path.is_file():
            raise CompareError(f"no MLflow store at {path} (tracking URI {uri}); run `wg2 grid` first or set "
                               "MLFLOW_TRACKING_URI")
    return uri


def _search(client, experiment_id: str, filter_string: str) -> list:
    out, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string, max_results=1000, page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return out


def _record(run) -> RunRecord:
    tags, params = dict(run.data.tags), dict(run.data.params)
    seed_text = tags.get("wg2.seed", params.get("train.seed"))
    try:
        seed = int(seed_text) if seed_text is not None else None
    except ValueError:
        seed = None
    assignment = _json_tag(tags.get("wg2.assignment"), {})
    return RunRecord(run_id=run.info.run_id, name=run.info.run_name or tags.get("mlflow.runName", ""),
                     status=run.info.status, group=tags.get("wg2.group") or canonical(assignment),
                     seed=seed, cell_hash=tags.get("wg2.cell_hash", run.info.run_id), assignment=assignment,
                     params=params, tags=tags, metrics=dict(run.data.metrics), start_time=run.info.start_time or 0)


def _running(run: RunRecord) -> str:
    """A run not finished nor failed: say how fresh its worker's heartbeat is (a stale one was interrupted)."""
    import time

    try:
        age = time.time() - float(run.tags["wg2.heartbeat"])
    except (KeyError, ValueError):
        return f"{run.name} ({run.status})"
    return f"{run.name} ({run.status}, last heartbeat {age / 60:.0f} min ago)"


def _pick(runs: list[RunRecord]) -> RunRecord:
    """The run that stands for a cell when it was tried more than once: the latest finished, else the latest."""
    finished = [r for r in runs if r.status == "FINISHED"]
    return max(finished or runs, key=lambda r: r.start_time)


def _parent(client, experiment_id: str, cells: list[RunRecord]):
    parents = _search(client, experiment_id, "tags.`wg2.kind` = 'grid'")
    if not parents:
        return None
    referenced = [r.tags.get("mlflow.parentRunId") for r in cells]
    return max(parents, key=lambda p: (referenced.count(p.info.run_id), p.info.start_time or 0))


def _expected_from_parent(client, parent) -> list | None:
    """The grid runner's list of expected cells: tag wg2.expected_cells or artifact cells.json (either may be
    absent: older or foreign runs)."""
    if parent is None:
        return None
    listed = _json_tag(parent.data.tags.get("wg2.expected_cells"), None)
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
    except Exception as err:  # an unreadable artifact store must not stop the report
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


def grid_cells(raw: dict[str, Any]) -> list[dict] | None:
    """Expected cells of a grid file (the product of its axes times its seeds, minus `exclude`), or None when
    the file is not in the expected shape (the grid runner is the one that validates it)."""
    axes = raw.get("axes", {})
    if not isinstance(axes, dict):
        return None
    flat: dict[str, list] = {}
    for key, values in axes.items():  # [axes.model] upsampler = [...] is the same as "model.upsampler" = [...]
        if isinstance(values, dict):
            flat.update({f"{key}.{k}": v for k, v in values.items()})
        else:
            flat[key] = values
    if not all(isinstance(v, list) and v for v in flat.values()):
        return None
    if any(isinstance(v, dict) for values in flat.values() for v in values):
        return None  # a multi-key axis: runs carry its labels, which only the grid runner knows how to make
    seeds = raw.get("seeds", [None])
    excludes = [e for e in raw.get("exclude", []) if isinstance(e, dict)]
    cells = []
    for combo in itertools.product(*flat.values()):
        assignment = dict(zip(flat, combo))
        if any(all(canonical(assignment.get(k)) == canonical(v) for k, v in e.items()) for e in excludes):
            continue
        cells.extend({"assignment": assignment, "seed": s, "label": label_of(assignment, s)} for s in seeds)
    return cells


# ----------------------------------------------------------------------------- aggregation

def _stat(runs: list[RunRecord], key: str) -> Stat:
    present = [(r, r.metrics[key]) for r in runs if key in r.metrics and math.isfinite(r.metrics[key])]
    n_missing = int(sum(r.metrics.get(key + "_n_missing", 0) or 0 for r in runs))
    if len(present) >= 2:
        s = summarize([v for _, v in present])
        return Stat(s["mean"], s["ci_low"], s["ci_high"], len(present), "seeds", n_missing)
    if len(present) == 1:
        run, v = present[0]
        lo, hi = run.metrics.get(key + "_ci_low"), run.metrics.get(key + "_ci_high")
        if lo is not None and hi is not None and math.isfinite(lo) and math.isfinite(hi):
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


def _effects(runs: list[RunRecord], axes: list[str], metric: str, schedules: list[str],
             orders: dict[str, list[str]]) -> list[Effect]:
    """For each axis and each pair of its values a, b: mean over the other axes' settings where both finished of
    (cell mean at a - cell mean at b). The 95% interval: with one such setting, Welch across seeds; with more,
    a t-interval from the seed variance pooled over those cells (else from the spread of the differences)."""
    effects = []
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
                effects.append(Effect(axis, show_value(json.loads(a)), show_value(json.loads(b)),
                                      s if s is not None else "own schedule", diff, ci[0], ci[1],
                                      sum(len(side_a[k]) for k in common), sum(len(side_b[k]) for k in common),
                                      len(common)))
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
        named = re.sub(r"\s*seed=-?\d+$", "", first.tags.get("wg2.label") or first.name).strip()
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
            except Exception:  # deleted or in another store: the ceiling is then unknown, said in the report
                cache[run_id] = None
        return cache[run_id]

    found: dict[str, tuple[str, dict]] = {}
    for row in rows:
        if row.params.get("model.space") != "latent":
            continue
        ae = None
        for rid in row.run_ids:
            link = by_id[rid].tags.get("wg2.autoencoder_run")
            if link and (ae := fetch(link)) is not None:
                break
        if ae is None:
            if local is None:
                local = _search(client, experiment_id, "tags.`wg2.kind` = 'autoencoder'")
            ae = local[0] if len(local) == 1 else None
        if ae is None:
            continue
        recon = {k.split("/", 1)[1]: v for k, v in ae.data.metrics.items()
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


# ----------------------------------------------------------------------------- the report

def _entry(stat: Stat | None, best: bool) -> str:
    if stat is None or stat.mean is None:
        return "—"
    text = f"**{fmt(stat.mean)}**" if best else fmt(stat.mean)
    if stat.ci() is not None:
        text += f" [{fmt(stat.ci_low)}, {fmt(stat.ci_high)}]"
    return text + (UTTERANCE_MARK if stat.interval == "utterances" else "")


def _bests(rows: list[CellRow], key: str) -> set[str]:
    """Groups holding the best mean of a column; none when the direction is unknown or every cell ties."""
    sign = direction(key)
    means = [(r.group, sign * r.mean(key)) for r in rows if r.mean(key) is not None]
    if sign == 0 or len(means) < 2:
        return set()
    top, low = max(m for _, m in means), min(m for _, m in means)
    if math.isclose(top, low, rel_tol=1e-9, abs_tol=1e-12):
        return set()
    return {g for g, m in means if math.isclose(m, top, rel_tol=1e-9, abs_tol=1e-12)}


def _table(rows: list[CellRow], columns: list[tuple[str, str]], extra: dict[str, list[str]] | None = None) -> list[str]:
    """A markdown table: one row per cell, (header, metric key) columns with mean [95% interval], best in bold."""
    extra = extra or {}
    heads = ["cell", "seeds"] + [h for h, _ in columns] + list(extra)
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    bests = {key: _bests(rows, key) for _, key in columns}
    for i, row in enumerate(rows):
        cells = [f"`{_md_cell(row.label)}`", str(len(row.run_ids))]
        cells += [_entry(row.stats.get(key), row.group in bests[key]) for _, key in columns]
        cells += [col[i] for col in extra.values()]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _legend(rows: list[CellRow], keys: list[str]) -> str:
    kinds = {row.stats[k].interval for row in rows for k in keys if k in row.stats and row.stats[k].interval}
    parts = ["mean [95% interval]; best of each column in **bold** (higher is better for PESQ/STOI/ESTOI and "
             "throughput, lower for MCD, RTF, memory, loss)"]
    if "seeds" in kinds:
        parts.append("intervals without a mark: t-interval across seeds")
    if "utterances" in kinds:
        parts.append(f"{UTTERANCE_MARK}: a single seed, so the interval is across that run's utterances")
    return "Intervals: " + "; ".join(parts) + "."


def _provenance(parent, runs: list[RunRecord]) -> list[str]:
    def values(tag: str) -> str:
        seen: dict[str, int] = {}
        for r in runs:
            if r.tags.get(tag):
                seen[r.tags[tag]] = seen.get(r.tags[tag], 0) + 1
        if parent is not None and parent.data.tags.get(tag) and not seen:
            return f"`{parent.data.tags[tag]}`"
        if len(seen) <= 1:
            return f"`{next(iter(seen))}`" if seen else "unknown"
        return ", ".join(f"`{v}` ({n} runs)" for v, n in seen.items())
    return [f"- machine: {values('wg2.machine')}; device: {values('wg2.device')}; torch: {values('wg2.torch_version')}",
            f"- commit: {values('wg2.git_commit')}"]


def _in_brief(effects: list[Effect], metric: str) -> list[str]:
    """One plain sentence per pair of axis values, at the first schedule each was compared at."""
    lines, seen = [], set()
    sign = direction(metric)
    for e in effects:
        if (e.axis, e.a, e.b) in seen:
            continue
        seen.add((e.axis, e.a, e.b))
        where = f"at {e.schedule}" if e.schedule else ""
        ci = f"95% interval [{e.ci_low:+.3g}, {e.ci_high:+.3g}]" if e.ci_low is not None else "no interval"
        if sign == 0:
            lines.append(f"- `{e.axis}`: {e.a} − {e.b} = {e.diff:+.3g} {metric} {where} ({ci}).")
            continue
        better, worse = (e.a, e.b) if sign * e.diff > 0 else (e.b, e.a)
        if e.ci_low is not None and e.ci_low <= 0 <= e.ci_high:
            lines.append(f"- `{e.axis}`: no clear difference between {e.a} and {e.b} on {metric} {where} "
                         f"({e.a} − {e.b} = {e.diff:+.3g}, {ci} includes 0).")
        else:
            lines.append(f"- `{e.axis}`: {better} beats {worse} on {metric} {where} by {abs(e.diff):.3g} "
                         f"({e.a} − {e.b}, {ci}" + (", too few runs to tell it from noise" if e.ci_low is None
                                                     else "") + ").")
    return lines


OWN = "own-schedule"  # pseudo schedule of the combined table when every cell ran a single, different schedule


def _schedule_views(rows: list[CellRow], schedules: list[str]) -> list[tuple[str, str, list[CellRow]]]:
    """(title, schedule, rows) per table: one per schedule; but when each cell was evaluated at one schedule of
    its own (an eval.schedules axis), one table of all cells, each at its schedule, so they can be compared."""
    own = {r.group: [s for s in schedules if any(k.startswith(s + "/") and st.mean is not None
                                                 for k, st in r.stats.items())] for r in rows}
    if len(schedules) < 2 or not rows or any(len(v) != 1 for v in own.values()):
        return [(f"at schedule `{s}`", s, rows) for s in schedules]
    view = []
    for r in rows:
        s = own[r.group][0]
        stats = {**r.stats, **{f"{OWN}/{k.split('/', 1)[1]}": st for k, st in r.stats.items() if k.startswith(s + "/")}}
        view.append(dataclasses.replace(r, stats=stats, params={**r.params, OWN: s}))
    return [("(each cell at its own schedule)", OWN, view)]


def _render(name: str, experiment_id: str, parent, question: str, rows: list[CellRow], runs: list[RunRecord],
            status: dict[str, list[str]], expected_source: str, schedules: list[str], metric: str,
            effects: list[Effect], ceilings: list[tuple[str, dict]], target: Target | None,
            plot_files: list[Path]) -> str:
    out = [f"# {name}", "", f"**Question.** {question}", ""]
    out.append(f"MLflow experiment `{name}` (id {experiment_id})"
               + (f", parent run `{parent.info.run_id}`." if parent is not None else "; no grid parent run found."))
    out += _provenance(parent, runs) + [""]

    out += ["## Cells", ""]
    n_expected = len(status["expected"]) if status["expected"] else None
    out.append(f"{len(status['finished'])} finished, {len(status['failed'])} failed, {len(status['running'])} "
               f"running or interrupted, {len(status['missing'])} missing"
               + (f" of {n_expected} expected ({expected_source})." if n_expected is not None else
                  " (no list of expected cells was found)."))
    for state in ("missing", "failed", "running"):
        if status[state]:
            out += ["", f"{state.capitalize()}:"] + [f"- `{_md_cell(t)}`" for t in status[state]]
    out.append("")
    if not rows:
        return "\n".join(out + ["No cell has finished yet, so there is nothing to compare.", ""])

    brief = _in_brief(effects, metric)
    if brief:
        out += ["## In brief", ""] + brief + [""]

    if target is not None:
        out += ["## Latent space: was the target reached?", "", target.statement, ""]
        if target.comparisons:
            out += ["| R=16 cell | schedule | speed-up vs waveform | PESQ-wb vs waveform | reached |",
                    "|---|---|---|---|---|"]
            out += [f"| `{_md_cell(c['cell'])}` | {c['schedule']} | {c['speedup']:.2f}x | "
                    f"{100 * c['quality_fraction']:.1f}% | {'yes' if c['reached'] else 'no'} |"
                    for c in target.comparisons]
            out.append("")
        out += ["Autoencoder ceiling (reconstruction through stage one, val split): "
                + ("; ".join(f"{lab}: " + ", ".join(f"{k} {fmt(v)}" for k, v in sorted(rec.items()))
                             for lab, rec in ceilings) if ceilings else "not found (no linked autoencoder run)."), ""]

    out += [f"## Marginal effect of each axis on {metric}", ""]
    if effects:
        out += ["Difference (first value − second) of the cell means, averaged over the other axes' settings "
                "where both values finished (seeds pooled within a cell). 95% interval: with one setting, Welch "
                "across seeds; with several, a t-interval from the seed-to-seed variance pooled over those cells "
                "(without repeated seeds, from the spread of the differences across settings).", "",
                "| axis | values | schedule | difference | 95% interval | runs (settings) |",
                "|---|---|---|---|---|---|"]
        for e in effects:
            ci = f"[{e.ci_low:+.3g}, {e.ci_high:+.3g}]" if e.ci_low is not None else "— (too few runs)"
            out.append(f"| `{e.axis}` | {_md_cell(e.a)} − {_md_cell(e.b)} | {e.schedule} | {e.diff:+.3g} | {ci} "
                       f"| {e.n_a} vs {e.n_b} ({e.settings}) |")
    else:
        out.append("No axis has two values with finished runs to compare.")
    out.append("")

    latent = any(r.params.get("model.space") == "latent" for r in rows)
    for title, s, here in _schedule_views(rows, schedules):
        cols = [(m, metric_key(m, s)) for m in dict.fromkeys((*QUALITY, metric)) if "/" not in m]
        cols.append(("rtf", f"{s}/rtf"))
        here = [r for r in here if any(r.mean(k) is not None for _, k in cols)]
        cols = [(h, k) for h, k in cols if any(r.mean(k) is not None for r in here)]
        if not here:
            continue
        extra = {}
        if s == OWN:
            extra["schedule"] = [r.params.get(OWN, "") for r in here]
        if latent:
            extra[f"fraction of ceiling ({metric})"] = [
                fmt(fraction_of_ceiling(r.mean(metric_key(metric, s)), r.ceiling.get(metric), metric)) for r in here]
        out += [f"## Quality and speed {title}", ""] + _table(here, cols, extra)
        out += ["", _legend(here, [k for _, k in cols]), ""]
        if latent:
            out += [f"Fraction of ceiling: the cell's {metric} relative to its autoencoder's reconstruction "
                    "(1 = as good as stage one allows).", ""]

    cols = [(h, k) for h, k in (("train audio s/s", TRAINING[0]), ("peak train memory MB", TRAINING[1]),
                                 ("train wall s", TRAINING[2]), ("final train loss", TRAINING[3]))
            if any(r.mean(k) is not None for r in rows)]
    if cols:
        out += ["## Training speed and memory", ""] + _table(rows, cols) + ["", _legend(rows, [k for _, k in cols]), ""]

    out += ["## Missing metric values", ""]
    gaps = [(r.label, k, s.n_missing) for r in rows for k, s in sorted(r.stats.items()) if s.n_missing]
    if gaps:
        out += ["Utterances without a value (summed over seeds; reasons in each run's summary.json).", "",
                "| cell | metric | missing |", "|---|---|---|"]
        out += [f"| `{_md_cell(lab)}` | {k} | {n} |" for lab, k, n in gaps]
    else:
        out.append("None: every scored utterance has every metric.")
    out.append("")

    if plot_files:
        out += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plot_files] + [""]
    return "\n".join(out)


def _csv(rows: list[CellRow], axes: list[str], metric: str, schedules: list[str]) -> str:
    """One row per cell: its axis values, then every metric's mean, interval, n, interval kind and missing count;
    latent grids add the autoencoder's recon metrics and each schedule's fraction of that ceiling."""
    keys = sorted({k for r in rows for k in r.stats})
    heads = ["cell", "group", *axes, "n_runs", "seeds"]
    for k in keys:
        heads += [f"{k}_mean", f"{k}_ci_low", f"{k}_ci_high", f"{k}_n", f"{k}_interval", f"{k}_n_missing"]
    ceiling_keys = sorted({k for r in rows for k in r.ceiling})
    fractions = [metric_key(metric, s) for s in schedules] if metric in ceiling_keys else []
    heads += [f"ceiling/{k}" for k in ceiling_keys] + [f"{k}_fraction_of_ceiling" for k in fractions]
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(heads)
    for r in rows:
        line: list[Any] = [r.label, r.group, *[show_value(r.assignment[a]) if a in r.assignment else "" for a in axes],
                           len(r.run_ids), " ".join(map(str, r.seeds))]
        for k in keys:
            s = r.stats.get(k) or Stat(None)
            line += ["" if v is None else v for v in (s.mean, s.ci_low, s.ci_high)] + [s.n, s.interval, s.n_missing]
        line += [r.ceiling.get(k, "") for k in ceiling_keys]
        line += [fraction_of_ceiling(r.mean(k), r.ceiling.get(metric), metric) or "" for k in fractions]
        writer.writerow(line)
    return buf.getvalue()


def _plots(client, out_dir: Path, rows: list[CellRow], runs: list[RunRecord], axes: list[str],
           orders: dict[str, list[str]], schedules: list[str], metric: str,
           ceilings: list[tuple[str, dict]]) -> list[Path]:
    from tqdm import tqdm

    made = []
    points = []
    for r, s in itertools.product(rows, schedules):
        q, t = r.stats.get(metric_key(metric, s)), r.stats.get(f"{s}/rtf")
        if q and t and q.mean is not None and t.mean is not None:
            points.append(plots.Point(r.label, s, t.mean, q.mean, t.ci(), q.ci()))
    if points:
        lines = [plots.Ceiling(f"ceiling: {lab}", rec[metric]) for lab, rec in ceilings if metric in rec]
        made.append(plots.plot_quality_vs_rtf(points, metric, out_dir / "quality_vs_rtf.png", lines))

    finished = [r for r in runs if r.status == "FINISHED"]
    panels = []
    for axis in axes:
        panel = plots.AxisBars(axis)
        for s in ([""] if "/" in metric else schedules):
            every = [_strata(finished, axis, v, metric, s, schedules) for v in _axis_values(finished, axis, [])]
            pooled = _within_cell_variance([c for cells in every for c in cells.values()])
            for value in _axis_values(finished, axis, orders.get(axis, [])):
                cells = _strata(finished, axis, value, metric, s, schedules)
                if cells:
                    center, ci = _marginal_mean(cells, pooled)
                    panel.bars.append(plots.Bar(show_value(json.loads(value)), s, center, ci))
        if panel.bars:
            panels.append(panel)
    if panels:
        made.append(plots.plot_axis_bars(panels, metric, out_dir / "axes.png"))

    curves = []
    trained: dict[str, list[RunRecord]] = {}  # cells differing only in eval.* share one model: one curve
    for r in sorted(runs, key=lambda r: r.name):
        trained.setdefault(r.tags.get("wg2.train_hash") or r.run_id, []).append(r)
    for sharing in tqdm(list(trained.values()), desc="loss curves", leave=False, disable=len(trained) < 20):
        r = sharing[0]
        history = sorted(client.get_metric_history(r.run_id, "train/loss"), key=lambda m: m.step)
        if history:
            more = f" (+{len(sharing) - 1} cells sharing this model)" if len(sharing) > 1 else ""
            curves.append(plots.Curve((r.name or label_of(r.assignment, r.seed)) + more,
                                      [m.step for m in history], [m.value for m in history], r.status == "FINISHED"))
    if curves:
        made.append(plots.plot_loss_curves(curves, out_dir / "loss_curves.png"))
    return made


def compare(experiment_name: str, out_dir: str | Path, metric: str = "pesq_wb", tracking_uri: str | None = None,
            expected: list[dict] | None = None) -> Report:
    """Read the grid's runs from MLflow, write report.md, results.csv and plots into out_dir, log them on the
    parent run (artifact path "report") and return what was found. `expected` (cells from the grid file) is
    used when the parent run does not list its cells itself."""
    from mlflow import MlflowClient

    client = MlflowClient(resolve_tracking_uri(tracking_uri))
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        names = [e.name for e in client.search_experiments(max_results=50)]
        raise CompareError(f"no MLflow experiment named {experiment_name!r} at {client.tracking_uri}; "
                           f"experiments there: {', '.join(names) or 'none'}")
    exp_id = experiment.experiment_id
    all_runs = [_record(r) for r in _search(client, exp_id, "tags.`wg2.kind` = 'cell'")]
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
    question = ptags.get("wg2.description") or ptags.get("mlflow.note.content") or "(no description was logged)"
    axes = _json_tag(ptags.get("wg2.axes"), None) or list(dict.fromkeys(k for r in runs for k in r.assignment))

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
              "failed": [f"{r.name}: {(r.tags.get('wg2.error') or r.status).strip().splitlines()[0][:200]}"
                         for r in runs if r.status in ("FAILED", "KILLED")],
              "running": [_running(r) for r in runs if r.status in ("RUNNING", "SCHEDULED")]}

    rows = _rows(finished, axes, orders)
    latent = any(r.params.get("model.space") == "latent" for r in rows)
    ceilings = _attach_ceilings(client, rows, runs, exp_id) if latent else []
    target = latent_target(rows, schedules) if latent else None
    effects = _effects(finished, axes, metric, schedules, orders)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_files = _plots(client, out_dir, rows, runs, axes, orders, schedules, metric, ceilings)
    md = _write_atomic(out_dir / "report.md", _render(
        experiment_name, exp_id, parent, question, rows, runs, status, source, schedules, metric, effects,
        ceilings, target, plot_files))
    table = _write_atomic(out_dir / "results.csv", _csv(rows, axes, metric, schedules))

    logged = False
    if parent is not None:
        try:
            for path in (md, table, *plot_files):
                client.log_artifact(parent.info.run_id, str(path), artifact_path="report")
            logged = True
        except Exception as err:  # the local report stands even when the artifact store is unreachable
            print(f"wg2 compare: warning: could not log the report on run {parent.info.run_id}: {err}",
                  file=sys.stderr)
    return Report(experiment_name, out_dir, md, table, plot_files, rows, missing, status["failed"],
                  status["running"], metric, schedules, effects, target,
                  parent.info.run_id if parent is not None else None, logged)


def cmd_compare(args) -> int:
    """`wg2 compare GRID.toml|EXPERIMENT [--out DIR] [--metric M]`: exit 0 with a report, 2 on bad input."""
    from experiments.config import InputError

    target = str(args.target)
    expected = None
    if target.endswith(".toml") or Path(target).is_file():
        from experiments.config import read_toml

        raw = read_toml(target)  # raises ConfigError (an InputError) naming the file
        name = raw.get("name")
        if not isinstance(name, str) or not name:
            raise InputError(f"{target}: the grid file has no `name` (a string naming its MLflow experiment)")
        expected = grid_cells(raw)
    else:
        name = target
    out = Path(args.out) if getattr(args, "out", None) else Path("results") / name
    try:
        report = compare(name, out, metric=getattr(args, "metric", None) or "pesq_wb", expected=expected)
    except CompareError as err:
        raise InputError(str(err)) from err
    print(f"wrote {report.report_md} ({len(report.rows)} cells, {len(report.missing)} missing, "
          f"{len(report.failed)} failed, {len(report.running)} running)")
    if report.target is not None:
        print(report.target.statement.replace("**", ""))
    if report.parent_run_id and report.logged_on_parent:
        print(f"logged on parent run {report.parent_run_id} under report/")
    return 0
