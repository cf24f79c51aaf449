"""`wg2 compare`: read a grid's runs back from MLflow and write a report that answers the grid's question.

Into the output folder: report.md (the question; cells x metrics with 95% intervals, best marked; each axis's
marginal effect; speed beside quality; machine and commit; missing, failed and running cells; for latent grids
the autoencoder ceiling and whether the latent target was reached), results.csv (one row per cell, every
metric) and PNG plots. The same files are logged on the grid's parent run under `report/`.

This module is the report: evaluation.compare_runs reads and aggregates the runs, evaluation.compare_report
writes the text, evaluation.report_plots draws the pictures. Works on any tracking URI and on partial grids.
The command line (reading a grid file for its expected cells) is experiments/compare_cmd.py.
"""
from __future__ import annotations

import itertools
import sys
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from evaluation import report_plots as plots
from evaluation.compare_report import render_markdown, results_csv, write_atomic
from evaluation.compare_runs import (CellRow, Effect, Grid, RunRecord, Target, axis_means, label_of, metric_key,
                                     read_grid, resolve_tracking_uri)
from evaluation.runs import TAG_TRAIN_HASH


@dataclass
class Report:
    """What `compare` wrote and found."""
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


def _plots(client, out_dir: Path, grid: Grid) -> list[Path]:
    """quality_vs_rtf.png, axes.png and loss_curves.png, each only when the runs hold something to draw."""
    rows, runs, axes, schedules, metric = grid.rows, grid.runs, grid.axes, grid.schedules, grid.metric
    made = []
    points = []
    for r, s in itertools.product(rows, schedules):
        q, t = r.stats.get(metric_key(metric, s)), r.stats.get(f"{s}/rtf")
        if q and t and q.mean is not None and t.mean is not None:
            points.append(plots.Point(r.label, s, t.mean, q.mean, t.ci(), q.ci()))
    if points:
        lines = [plots.Ceiling(f"ceiling: {lab}", rec[metric]) for lab, rec in grid.ceilings if metric in rec]
        made.append(plots.plot_quality_vs_rtf(points, metric, out_dir / "quality_vs_rtf.png", lines))

    finished = [r for r in runs if r.status == "FINISHED"]
    panels = []
    for axis in axes:
        panel = plots.AxisBars(axis)
        panel.bars.extend(plots.Bar(value, s, center, ci)
                          for value, s, center, ci in axis_means(finished, axis, metric, schedules, grid.orders))
        if panel.bars:
            panels.append(panel)
    if panels:
        made.append(plots.plot_axis_bars(panels, metric, out_dir / "axes.png"))

    curves = []
    trained: dict[str, list[RunRecord]] = {}  # cells differing only in eval.* share one model: one curve
    for r in sorted(runs, key=lambda r: r.name):
        trained.setdefault(r.tags.get(TAG_TRAIN_HASH) or r.run_id, []).append(r)
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
    grid = read_grid(client, experiment_name, metric, expected)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_files = _plots(client, out_dir, grid)
    md = write_atomic(out_dir / "report.md", render_markdown(grid, plot_files))
    table = write_atomic(out_dir / "results.csv", results_csv(grid))

    parent = grid.parent
    logged = False
    if parent is not None:
        try:
            for path in (md, table, *plot_files):
                client.log_artifact(parent.info.run_id, str(path), artifact_path="report")
            logged = True
        except Exception as err:  # noqa: BLE001 - the local report stands even when the artifact store is unreachable
            print(f"wg2 compare: warning: could not log the report on run {parent.info.run_id}: {err}",
                  file=sys.stderr)
    return Report(experiment_name, out_dir, md, table, plot_files, grid.rows, grid.status["missing"],
                  grid.status["failed"], grid.status["running"], metric, grid.schedules, grid.effects, grid.target,
                  parent.info.run_id if parent is not None else None, logged)
