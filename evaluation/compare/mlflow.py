"""Reading a grid back from MLflow: its cell runs (one per cell, the latest finished try), the cells the grid's
parent run lists, each run's per-utterance values, the autoencoder runs latent cells are measured against; and
`read_grid`, which aggregates them (evaluation.compare.effects) into what a `wg2 compare` report shows.

One run stands for each cell; seeds of one cell (runs sharing tag wg2.group) are pooled. Only FINISHED runs are
aggregated; the others are listed by state, beside the expected cells that have no run at all. Nothing is written.
Nothing here imports `experiments` (evaluation sits below experiments).
"""
from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path
from typing import Any

from evaluation.compare.data import (
    DERIVED,
    CellRow,
    CompareError,
    Grid,
    RunRecord,
    canonical,
    current_metric_name,
    current_names,
    end_reason,
    has_ceiling,
    json_tag,
    label_of,
    metric_key,
)
from evaluation.compare.effects import axis_effects, axis_values, cell_rows, schedules_seen
from evaluation.compare.target import latent_target
from evaluation.metrics import DEFAULT_METRIC, Missing
from evaluation.runs import (
    KIND_AUTOENCODER,
    KIND_CELL,
    KIND_GRID,
    TAG_ASSIGNMENT,
    TAG_AUTOENCODER_RUN,
    TAG_AXES,
    TAG_CELL_HASH,
    TAG_DESCRIPTION,
    TAG_EXPECTED_CELLS,
    TAG_GROUP,
    TAG_HEARTBEAT,
    TAG_KIND,
    TAG_SEED,
    search_all_runs,
    sqlite_path,
    store_problem,
    tag_is,
    tracking_uri,
)


def resolve_tracking_uri(uri: str | None = None) -> str:
    """Given URI, else MLFLOW_TRACKING_URI, else the working directory's SQLite store; a SQLite file that does
    not exist is an error (reading must not create an empty store)."""
    uri = uri or tracking_uri()
    path = sqlite_path(uri)
    if path is not None and not path.is_file():
        raise CompareError(f"no MLflow store at {path} (tracking URI {uri}); run `wg2 grid` first or set "
                           "MLFLOW_TRACKING_URI")
    problem = store_problem(uri)
    if problem:
        raise CompareError(problem)
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
    assignment = json_tag(tags.get(TAG_ASSIGNMENT), {})
    return RunRecord(run_id=run.info.run_id, name=run.info.run_name or tags.get("mlflow.runName", ""),
                     status=run.info.status, group=tags.get(TAG_GROUP) or canonical(assignment),
                     seed=seed, cell_hash=tags.get(TAG_CELL_HASH, run.info.run_id), assignment=assignment,
                     params=params, tags=tags, metrics=current_names(dict(run.data.metrics)),
                     start_time=run.info.start_time or 0)


def _running(run: RunRecord) -> str:
    """A run not finished nor failed: say how fresh its worker's heartbeat is (a stale one was interrupted)."""
    import time

    try:
        age = time.time() - float(run.tags[TAG_HEARTBEAT])
    except (KeyError, ValueError):
        return f"{run.name} ({run.status})"
    return f"{run.name} ({run.status}, last heartbeat {age / 60:.0f} min ago)"


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
    listed = json_tag(parent.data.tags.get(TAG_EXPECTED_CELLS), None)
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
        logging.getLogger(__name__).warning("wg2 compare: warning: could not read cells.json of the parent run: %s",
                                            err)
        return None


def _normalize_expected(items: list) -> list[dict]:
    """Accept the shapes a cell list may take: hashes, labels, or dicts with assignment/seed/cell_hash/label."""
    out: list[dict[str, Any]] = []
    for item in items:
        if isinstance(item, str):
            out.append({"cell_hash": item, "label": item})
        elif isinstance(item, dict):
            assignment = item.get("assignment") or {}
            seed = item.get("seed")
            out.append({"cell_hash": item.get("cell_hash") or item.get("hash"), "assignment": assignment,
                        "seed": seed, "label": item.get("label") or item.get("name") or label_of(assignment, seed)})
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
        if not has_ceiling(row.params):
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
        recon = {k.split("/", 1)[1]: v for k, v in current_names(dict(ae.data.metrics)).items()
                 if k.startswith("recon/") and not k.endswith(DERIVED)}
        p = ae.data.params
        stride = p.get("autoencoder.stride", row.params.get("autoencoder.stride", "?"))
        kind = p.get("autoencoder.kind", row.params.get("autoencoder.kind", ""))
        row.ceiling = recon
        row.ceiling_label = f"autoencoder R={stride} {kind}".strip()
        found[ae.info.run_id] = (row.ceiling_label, recon)
    return list(found.values())


def read_grid(client, experiment_name: str, metric: str = DEFAULT_METRIC, expected: list[dict] | None = None) -> Grid:
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
    schedules = schedules_seen(finished)
    if "/" not in metric and finished and not any(metric_key(metric, s) in r.metrics
                                                  for r in finished for s in schedules):
        names = sorted({k.split("/", 1)[1] for r in finished for k in r.metrics
                        if "/" in k and not k.endswith(DERIVED)})
        raise CompareError(f"metric {metric!r} is in no finished run of {experiment_name!r}; available: "
                           f"{', '.join(names)}")

    parent = _parent(client, exp_id, runs)
    ptags = parent.data.tags if parent is not None else {}
    question = ptags.get(TAG_DESCRIPTION) or ptags.get("mlflow.note.content") or "(no description was logged)"
    axes = json_tag(ptags.get(TAG_AXES), None) or list(dict.fromkeys(k for r in runs for k in r.assignment))

    # the cells that should exist: as the grid runner listed them, else from the grid file, else inferred
    listed, source = _expected_from_parent(client, parent), "listed by the grid's parent run"
    if listed is None and expected is not None:
        listed, source = expected, "from the grid file"
    if listed is None and axes and runs:
        values = {a: [json.loads(v) for v in axis_values(runs, a, [])] for a in axes}
        seeds: list[int | None] = [*sorted({r.seed for r in runs if r.seed is not None})] or [None]
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
              "failed": [f"{r.name} ({r.status}): {end_reason(r.tags, r.status)}"
                         for r in runs if r.status in ("FAILED", "KILLED")],
              "running": [_running(r) for r in runs if r.status in ("RUNNING", "SCHEDULED")]}

    rows = cell_rows(finished, axes, orders)
    latent = any(has_ceiling(r.params) for r in rows)
    ceilings = _attach_ceilings(client, rows, runs, exp_id) if latent else []
    target = latent_target(rows, schedules) if latent else None
    per_utterance = {r.run_id: table for r in finished if (table := read_per_utterance(client, r.run_id)) is not None}
    effects = axis_effects(finished, axes, metric, schedules, orders, per_utterance)
    return Grid(experiment_name, exp_id, parent, question, metric, axes, orders, schedules, runs, source, status,
                rows, effects, ceilings, target, per_utterance)
