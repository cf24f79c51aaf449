"""`wg2 compare`: read a grid's runs back from MLflow and write a report that answers the grid's question.

Into the output folder: report.md (the question; cells x metrics with 95% intervals, best marked; each axis's
marginal effect, paired on utterances where the runs logged per-utterance values; speed beside quality; machine
and commit; missing, failed and running cells; for latent grids the autoencoder ceiling and whether the latent
target was reached), results.csv (one row per cell, every metric), PNG plots, and listen.html with the cells' kept
audio under listen/ (evaluation.compare.listen). The same files are logged on the grid's parent run under `report/`.

This module is the report: evaluation.compare.mlflow reads the runs (evaluation.compare.effects aggregates them,
evaluation.compare.target judges the latent target), evaluation.compare.report writes the text,
evaluation.compare.plots draws the pictures. Works on any tracking URI and on partial grids.
The command line (reading a grid file for its expected cells) is experiments/grid/compare.py.
"""
from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from evaluation.compare import plots
from evaluation.compare.data import CellRow, CompareError, Effect, Grid, RunRecord, Target, label_of, metric_key
from evaluation.compare.effects import axis_means
from evaluation.compare.listen import FREE, GT, ListenCell, write_listen_page
from evaluation.compare.mlflow import read_grid, resolve_tracking_uri
from evaluation.compare.report import QUALITY, listen_section, render_markdown, results_csv, write_atomic
from evaluation.metrics import GAIN_KEY, PHONEME_GAIN_KEY
from evaluation.owned_files import record, refusal
from evaluation.progress import progress_enabled
from evaluation.runs import TAG_TRAIN_HASH

# what compare writes into its folder: only these are replaced, and only when an earlier compare wrote them there
REPORT_FILES = ("report.md", "results.csv", "quality_vs_rtf.png", "axes.png", "loss_curves.png", "listen.html",
                "listen")


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
    listen_html: Path | None = None  # None: no cell's run kept audio


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
    for run in sorted(runs, key=lambda r: r.name):
        trained.setdefault(run.tags.get(TAG_TRAIN_HASH) or run.run_id, []).append(run)
    for sharing in tqdm(list(trained.values()), desc="loss curves", leave=False,
                        disable=not progress_enabled(len(trained) >= 20)):
        r = sharing[0]
        history = sorted(client.get_metric_history(r.run_id, "train/loss"), key=lambda m: m.step)
        if history:
            more = f" (+{len(sharing) - 1} cells sharing this model)" if len(sharing) > 1 else ""
            curves.append(plots.Curve((r.name or label_of(r.assignment, r.seed)) + more,
                                      [m.step for m in history], [m.value for m in history], r.status == "FINISHED"))
    if curves:
        made.append(plots.plot_loss_curves(curves, out_dir / "loss_curves.png"))
    return made


def _listen(client, out_dir: Path, grid: Grid) -> Path | None:
    """listen.html from the wavs each cell's run logged (wg2 eval's audio/<schedule>/<id>.wav, ground-truth
    durations; audio/<schedule>/free/<id>.wav, free-running; audio/reference/<id>.wav), downloaded with the MLflow
    client. One run per cell (its first seed: the same noise seed across cells). None when no run kept audio."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        cells: list[ListenCell] = []
        references: dict[str, Path] = {}
        for i, row in enumerate(tqdm(grid.rows, desc="listen: audio", leave=False,
                                        disable=not progress_enabled(len(grid.rows) >= 20))):
            try:
                local = Path(client.download_artifacts(row.run_ids[0], "audio", str(Path(tmp) / str(i))))
            except Exception:  # noqa: BLE001, S112 - a run without kept audio (older, or eval.audio_artifacts = 0)
                continue
            audio: dict = {}
            for wav in sorted(local.rglob("*.wav")):
                parts = wav.relative_to(local).parts
                if parts[0] == "reference" and len(parts) == 2:
                    references.setdefault(wav.stem, wav)
                elif len(parts) == 2:
                    audio.setdefault(parts[0], {}).setdefault(GT, {})[wav.stem] = wav
                elif len(parts) == 3 and parts[1] == "free":
                    audio.setdefault(parts[0], {}).setdefault(FREE, {})[wav.stem] = wav
            if not audio:
                continue
            metrics = {k: row.mean(k) for k in _listen_keys(grid) if row.mean(k) is not None}
            seed = f"seed {row.seeds[0]}" if row.seeds else ""
            if len(row.seeds) > 1:
                seed += f" of {len(row.seeds)} seeds"
            cells.append(ListenCell(row.label, metrics, audio, seed))
        if not cells:
            return None
        keys = [k for k in _listen_keys(grid) if any(k in c.metrics for c in cells)]
        default = metric_key(grid.metric, grid.schedules[0]) if grid.schedules else None
        return write_listen_page(out_dir, cells, references, grid.schedules, title=f"{grid.name}: listen",
                                 sort_keys=keys, default_sort=default if default in keys else None)


def _listen_keys(grid: Grid) -> list[str]:
    names = list(dict.fromkeys((grid.metric, *QUALITY)))
    return ([GAIN_KEY, PHONEME_GAIN_KEY] + [metric_key(m, s) for s in grid.schedules for m in names]
            + [f"{s}/rtf" for s in grid.schedules])


def compare(experiment_name: str, out_dir: str | Path, metric: str = "pesq_wb", tracking_uri: str | None = None,
            expected: list[dict] | None = None, force: bool = False) -> Report:
    """Read the grid's runs from MLflow, write report.md, results.csv and plots into out_dir, log them on the
    parent run (artifact path "report") and return what was found. `expected` (cells from the grid file) is
    used when the parent run does not list its cells itself. An out_dir holding one of REPORT_FILES that no
    earlier compare wrote there (see evaluation.owned_files) is refused (CompareError) unless `force`."""
    import os

    from mlflow import MlflowClient

    refused = refusal(Path(out_dir), REPORT_FILES, "--out", force)
    if refused:
        raise CompareError(refused)

    # per_utterance.csv and audio/ of every run are downloaded: without one progress bar each
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    client = MlflowClient(resolve_tracking_uri(tracking_uri))
    grid = read_grid(client, experiment_name, metric, expected)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    record(out_dir, REPORT_FILES)  # before writing them: an interrupted compare's partial files are ours too
    plot_files = _plots(client, out_dir, grid)
    listen = _listen(client, out_dir, grid)
    md = write_atomic(out_dir / "report.md", render_markdown(grid, plot_files) + listen_section(listen))
    table = write_atomic(out_dir / "results.csv", results_csv(grid))

    parent = grid.parent
    logged = False
    if parent is not None:
        try:
            for path in (md, table, *plot_files, *([listen] if listen else [])):
                client.log_artifact(parent.info.run_id, str(path), artifact_path="report")
            if listen:
                client.log_artifacts(parent.info.run_id, str(out_dir / "listen"), artifact_path="report/listen")
            logged = True
        except Exception as err:  # noqa: BLE001 - the local report stands even when the artifact store is unreachable
            logging.getLogger(__name__).warning("wg2 compare: warning: could not log the report on run %s: %s",
                                                parent.info.run_id, err)
    return Report(experiment_name, out_dir, md, table, plot_files, grid.rows, grid.status["missing"],
                  grid.status["failed"], grid.status["running"], metric, grid.schedules, grid.effects, grid.target,
                  parent.info.run_id if parent is not None else None, logged, listen)
