"""One grid cell, start to end: claim its MLflow run (by tag wg2.cell_hash), train in its run folder
(resuming), evaluate, log, and end the run FINISHED, FAILED (the error as tag wg2.error, the traceback as
error.log) or KILLED. What runs the cells (in this process or in workers) and the grid's parent run:
experiments/grid/run.py."""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evaluation import runs
from experiments.config.disk import file_lock
from experiments.config.run import ConfigError, RunConfig
from experiments.grid.file import Cell, Grid
from experiments.tracking import claims, records, store
from experiments.tracking.ending import end_stopped_run

log = logging.getLogger(__name__)
FOLDER_LOCK = ".lock"  # in a run folder: held while a model trains there


def runs_dir() -> Path:
    return Path(os.environ.get("WG2_RUNS_DIR", "runs")).resolve()


@dataclass(frozen=True)
class RunContext:
    """What a worker needs besides its cells (picklable: sent to spawned processes)."""
    uri: str
    experiment_id: str
    parent_run_id: str
    grid_name: str
    device: str
    runs_dir: str
    overrides: tuple[str, ...]
    progress: bool


@dataclass
class CellOutcome:
    label: str
    cell_hash: str
    status: str  # finished | failed | skipped (finished before) | busy (a live worker elsewhere has it)
    run_id: str | None = None
    error: str | None = None
    seconds: float = 0.0


def _new_cell_run(mlf, ctx: RunContext, cell: Cell, tags: dict[str, str]) -> str:
    tags = {**tags, "mlflow.parentRunId": ctx.parent_run_id, runs.TAG_KIND: runs.KIND_CELL,
            runs.TAG_GRID_NAME: ctx.grid_name, runs.TAG_TRAIN_HASH: cell.train_hash, runs.TAG_GROUP: cell.group,
            runs.TAG_SEED: str(cell.seed), runs.TAG_ASSIGNMENT: json.dumps(cell.assignment, sort_keys=True),
            runs.TAG_LABEL: cell.label, runs.TAG_OVERRIDES: json.dumps(list(ctx.overrides))}
    run = store.retry(lambda: mlf.create_run(ctx.experiment_id, run_name=cell.label, tags=tags))
    return run.info.run_id


_DATASETS: dict[Any, Any] = {}  # per process: a worker reads each corpus once


def _dataset(config: RunConfig, progress: bool):
    from experiments.corpus.dataset import load_dataset

    if config.data not in _DATASETS:
        _DATASETS[config.data] = load_dataset(config.data, progress=progress)
    return _DATASETS[config.data]


def check_windows(grid: Grid, progress: bool = True) -> None:
    """The data-dependent checks: a training window must fit in the longest training utterance, and every
    cell's eval split must hold utterances. Reads (and caches) each distinct corpus of the grid once."""
    longest: dict[Any, int] = {}
    sizes: dict[Any, dict[str, int]] = {}
    problems = []
    for cell in grid.cells:
        data = cell.config.data
        if data not in longest:
            dataset = _dataset(cell.config, progress)
            if not dataset.train:
                raise ConfigError(f"{grid.path}: cell [{cell.label}]: data.root {data.root} has no training utterances")
            longest[data] = max(int(u.durations.sum()) for u in dataset.train)
            sizes[data] = {name: len(dataset.split(name)) for name in ("train", "val", "test")}
        split = cell.config.eval.split
        if not sizes[data][split]:
            fraction = {"val": f" (data.val_fraction = {data.val_fraction})",
                        "test": f" (data.test_fraction = {data.test_fraction})"}.get(split, "")
            problems.append(f"cell [{cell.label}]: eval.split = {split!r} has no utterances in {data.root}{fraction}; "
                            "expected at least one to evaluate on")
        if cell.config.train.window_frames > longest[data]:
            problems.append(f"cell [{cell.label}]: train.window_frames = {cell.config.train.window_frames} is longer "
                            f"than the longest training utterance of {data.root} ({longest[data]} frames)")
    if problems:
        raise ConfigError(f"{grid.path}: " + "\n  ".join(problems))


def _autoencoder_run(result) -> str | None:
    """The MLflow run of a latent model's stage-one autoencoder: from train(), or from the checkpoint when
    train() found the model already trained (then it does not report it)."""
    info = result.autoencoder_run
    if info is None:
        from experiments.train.checkpoint import autoencoder_info

        info = autoencoder_info(result.checkpoint)
    return (info or {}).get("mlflow_run_id")


def _execute(cell: Cell, ctx: RunContext, mlf, run_id: str) -> None:
    from components.spaces import SPACES  # torch: only when a cell runs
    from experiments.infer.evaluate import evaluate
    from experiments.infer.synth import load_checkpoint
    from experiments.train.command import run_training

    folder = Path(ctx.runs_dir) / cell.train_hash
    dataset = _dataset(cell.config, ctx.progress)
    # one process trains in a run folder at a time: a second (another grid on this machine) waits, then finds the
    # checkpoint complete; the store's checkpoint is fetched when it is ahead of this folder's (a takeover)
    with file_lock(folder / FOLDER_LOCK):
        result = run_training(mlf, run_id, cell.training_config(), folder, ctx.device, dataset, resume=True,
                              progress=ctx.progress, logged_config=cell.config)
    autoencoder_run = _autoencoder_run(result) if SPACES.get(cell.config.model.space).uses_autoencoder else None
    if autoencoder_run:  # latent space: `wg2 compare` shows the autoencoder's reconstruction ceiling
        store.retry(lambda: mlf.set_tag(run_id, runs.TAG_AUTOENCODER_RUN, autoencoder_run))

    loaded = load_checkpoint(result.checkpoint, ctx.device, cell.config.eval.weights)
    eval_dir = folder / "eval" / cell.cell_hash
    shutil.rmtree(eval_dir, ignore_errors=True)  # leftovers of an interrupted evaluation
    evaluated = evaluate(loaded, cell.config.eval, eval_dir, dataset=dataset, progress=ctx.progress)
    store.retry(lambda: store.log_metrics(mlf, run_id, evaluated.metrics))
    mlf.log_artifacts(run_id, str(eval_dir))


def run_cell(cell: Cell, ctx: RunContext, mlf=None) -> CellOutcome:
    """Claim the cell's MLflow run, train (resuming the run folder), evaluate, log; never raises for a
    failing cell: the run is marked FAILED with the error as tag wg2.error and the traceback as error.log."""
    mlf = mlf or store.client(ctx.uri)
    started = time.perf_counter()
    run_id, state = claims.claim_run(mlf, ctx.experiment_id, runs.TAG_CELL_HASH, cell.cell_hash,
                                       lambda tags: _new_cell_run(mlf, ctx, cell, tags))
    if state in ("finished", "busy"):
        return CellOutcome(cell.label, cell.cell_hash, "skipped" if state == "finished" else "busy", run_id)
    if run_id is None:  # claimed: claim_run gives the run it took or made
        raise RuntimeError(f"claiming cell {cell.cell_hash} gave no run ID")
    try:
        with claims.Heartbeat(ctx.uri, run_id), records.system_metrics(ctx.uri, run_id):
            _execute(cell, ctx, mlf, run_id)
    except KeyboardInterrupt as err:
        end_stopped_run(mlf, run_id, err)
        raise
    except Exception as err:  # noqa: BLE001 - any failure of one cell is recorded and the grid goes on
        message = f"{type(err).__name__}: {err}"
        text = f"cell [{cell.label}] ({cell.cell_hash})\n\n{traceback.format_exc()}"
        # each step on its own: a failing artifact upload (often the very error) must not leave the run RUNNING
        try:
            store.retry(lambda: mlf.set_tag(run_id, runs.TAG_ERROR, message[:5000]))
        except Exception:  # noqa: BLE001 - the store itself failing must not hide the cell's error
            traceback.print_exc()
        end_stopped_run(mlf, run_id, err)
        try:
            with tempfile.TemporaryDirectory() as tmp:
                (Path(tmp) / "error.log").write_text(text)
                mlf.log_artifact(run_id, str(Path(tmp) / "error.log"))
        except Exception as upload:  # noqa: BLE001 - the traceback still reaches the terminal
            log.error("cell [%s]: error.log not uploaded (%s: %s):\n%s", cell.label, type(upload).__name__, upload,
                      text)
        return CellOutcome(cell.label, cell.cell_hash, "failed", run_id, message, time.perf_counter() - started)
    if runs.TAG_ERROR in mlf.get_run(run_id).data.tags:  # an earlier attempt failed; this one did not
        store.retry(lambda: mlf.delete_tag(run_id, runs.TAG_ERROR))
    store.end_run(mlf, run_id, "FINISHED")
    return CellOutcome(cell.label, cell.cell_hash, "finished", run_id, None, time.perf_counter() - started)

