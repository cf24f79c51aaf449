"""`wg2 grid GRID.toml [--set key=value ...] [--workers N] [--device] [--dry-run]`: an ablation grid in MLflow.

The grid file format, and how cells are expanded, resolved and validated: experiments/grid/file.py.

Every cell is resolved and validated before anything trains (`--dry-run` stops there and reads no data; a
real run also checks each window against the corpus). Cells that differ only in `eval.*` share one trained
model (runs/<train hash>/, or under $WG2_RUNS_DIR) and are evaluated once each.

MLflow: one experiment per grid, a parent run (tag wg2.kind=grid, reused on rerun), one child run per cell
found by tag wg2.cell_hash (one cell's run, start to end: experiments/grid/cell.py). Resume: a FINISHED cell
is skipped; an interrupted (RUNNING with a dead owner, or KILLED) or FAILED cell is taken over in the same
run and trains on from its run folder's checkpoint. Claiming (experiments/tracking/claims.py) uses only tags, so
several `wg2 grid` commands, on one machine or on several pointed at one tracking server
(MLFLOW_TRACKING_URI), can share a grid: each takes the cells nobody live holds; a holder on another machine
counts as dead when its heartbeat tag is older than $WG2_STALE_SECONDS (600). Each cell uploads its
checkpoint at every train.checkpoint_every steps, so a cell taken over on a machine without its run folder
resumes from the store's copy (tag wg2.checkpoint_step), not from step 0. Every cell run carries the corpus
as a dataset input (digest = the content hash) and MLflow's system metrics (system/*).
"""
from __future__ import annotations

import json
import logging
import multiprocessing
import queue
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from evaluation import runs
from experiments.config.run import InputError
from experiments.grid.cell import CellOutcome, RunContext, check_windows, run_cell, runs_dir
from experiments.grid.file import MAX_CELLS, Cell, Grid, describe, expected_cells, load_grid
from experiments.grid.workers import start_workers, stop_workers, watch_parent
from experiments.tracking import claims, records, store
from experiments.tracking.ending import ends_if_stopped, raise_on_sigterm

if TYPE_CHECKING:
    from experiments.grid.pricing import Pricing

__all__ = ["GridOutcome", "run_grid", "summary", "cmd_grid"]


log = logging.getLogger(__name__)


@dataclass
class GridOutcome:
    grid: Grid
    experiment_id: str | None = None
    parent_run_id: str | None = None
    outcomes: list[CellOutcome] = field(default_factory=list)
    dry_run: bool = False

    def with_status(self, status: str) -> list[CellOutcome]:
        return [o for o in self.outcomes if o.status == status]

    @property
    def exit_code(self) -> int:
        return 1 if self.with_status("failed") else 0


# ----------------------------------------------------------------------------- the grid's parent run

def _parent_run(mlf, experiment_id: str, grid: Grid, device: str) -> str:
    """The grid's parent run: found by tag wg2.kind=grid and reused on every rerun, or created once."""
    tags = {runs.TAG_KIND: runs.KIND_GRID, runs.TAG_GRID_NAME: grid.name, runs.TAG_DESCRIPTION: grid.description,
            "mlflow.note.content": grid.description, runs.TAG_AXES: json.dumps([a.name for a in grid.axes]),
            runs.TAG_SEEDS: json.dumps(list(grid.seeds)), runs.TAG_GRID_FILE: str(grid.path),
            runs.TAG_GIT_COMMIT: records.git_commit(), runs.TAG_MACHINE: records.machine(device)}
    query = runs.tag_is(runs.TAG_KIND, runs.KIND_GRID)
    found = store.retry(lambda: runs.search_all_runs(mlf, [experiment_id], query))
    if not found:
        mine = store.retry(lambda: mlf.create_run(experiment_id, run_name=f"grid: {grid.name}", tags=tags))
        found = store.retry(lambda: runs.search_all_runs(mlf, [experiment_id], query))
        winner = claims.earliest(found)
        if winner.info.run_id != mine.info.run_id:  # another process created it at the same moment
            store.retry(lambda: mlf.delete_run(mine.info.run_id))
        found = [winner]
    run_id = claims.earliest(found).info.run_id
    cells = expected_cells(grid)
    listed = json.dumps(cells)
    if len(listed) <= 5000:  # MLflow caps tag values; cells.json (below) always holds the list
        tags[runs.TAG_EXPECTED_CELLS] = listed
    store.retry(lambda: store.log_tags(mlf, run_id, tags))
    store.retry(lambda: mlf.update_run(run_id, status="RUNNING"))
    return run_id


def _log_grid_files(mlf, run_id: str, grid: Grid) -> None:
    """cells.json (every expected cell) and the grid file, as the parent run's artifacts."""
    cells = expected_cells(grid)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "cells.json").write_text(json.dumps({"cells": cells}, indent=1))
        mlf.log_artifact(run_id, str(Path(tmp) / "cells.json"))
    mlf.log_artifact(run_id, str(grid.path))


def _finished_cells(mlf, experiment_id: str) -> set[str]:
    query = f"{runs.tag_is(runs.TAG_KIND, runs.KIND_CELL)} and attributes.status = 'FINISHED'"
    return {r.data.tags.get(runs.TAG_CELL_HASH) for r in store.retry(
        lambda: runs.search_all_runs(mlf, [experiment_id], query))}


# ----------------------------------------------------------------------------- workers


def _worker_main(ctx: RunContext, jobs, results) -> None:
    """One worker process: takes whole trainings (cells sharing a train hash, in order) from the queue."""
    watch_parent()
    raise_on_sigterm()
    mlf = store.client(ctx.uri)
    while True:
        job = jobs.get()
        if job is None:
            return
        for cell in job:
            results.put(run_cell(cell, ctx, mlf))


def _run_parallel(jobs: list[list[Cell]], ctx: RunContext, workers: int, record) -> None:
    mp = multiprocessing.get_context("spawn")  # not fork: the parent may hold torch threads and CUDA
    job_queue, results = mp.Queue(), mp.Queue()
    for job in jobs:
        job_queue.put(job)
    for _ in range(workers):
        job_queue.put(None)
    procs = start_workers(mp, _worker_main, lambda i: (ctx, job_queue, results), workers, ctx.device,
                          "wg2-grid-worker")
    remaining = {cell.cell_hash: cell for job in jobs for cell in job}
    try:
        while remaining:
            try:
                outcome = results.get(timeout=1.0)
            except queue.Empty:
                if not any(p.is_alive() for p in procs) and results.empty():
                    break
                continue
            remaining.pop(outcome.cell_hash, None)
            record(outcome)
    except KeyboardInterrupt as err:
        stop_workers(procs, err)
        raise
    for proc in procs:
        proc.join(timeout=30)
    codes = sorted({p.exitcode for p in procs if p.exitcode})
    for cell in remaining.values():
        record(CellOutcome(cell.label, cell.cell_hash, "failed",
                           error=f"worker process exited (code {codes or '?'}) before this cell ended; rerun the "
                                 "grid to resume it"))


# ----------------------------------------------------------------------------- the command

def run_grid(path: str | Path, overrides: list[str] | tuple[str, ...] = (), workers: int = 1, device: str = "auto",
             dry_run: bool = False, progress: bool = True, pricing: Pricing | None = None,
             max_cells: int = MAX_CELLS) -> GridOutcome:
    """Run (or resume) a grid; see the module docstring. Raises InputError (exit 2) before any training
    when the grid, a cell, the data or the MLflow store is wrong. The parent run and every cell run end
    FAILED (KILLED on Ctrl-C) with the reason as tag wg2.end_reason; none is left RUNNING by this process."""
    from experiments.train.runtime import resolve_device

    grid = load_grid(path, list(overrides), max_cells)
    if workers < 1:
        raise InputError(f"--workers {workers}: expected at least 1")
    if dry_run:
        from experiments.grid.pricing import format_price, price_grid  # torch and the models: dry runs only

        print(describe(grid))
        print(format_price(price_grid(grid, pricing)))
        print("dry run: nothing trained; the corpus was not read, so the check that each training window "
              "fits the longest training utterance was skipped")
        return GridOutcome(grid, dry_run=True)
    resolved = str(resolve_device(device))  # `--device cuda` without a GPU: exit 2 now, not a failed cell each
    claims.stale_seconds()  # a bad $WG2_STALE_SECONDS: exit 2 now, not in every worker
    store.check_store_writable(runs.tracking_uri())  # preflight: an unwritable store is exit 2 naming its path
    check_windows(grid, progress)

    uri = store.ensure_store(runs.tracking_uri())  # once, here, before any worker opens it

    experiment_id = store.get_or_create_experiment(grid.name, uri=uri)
    mlf = store.client(uri)
    parent_id = _parent_run(mlf, experiment_id, grid, resolved)
    with ends_if_stopped(mlf, parent_id):
        outcome = _run_cells(grid, mlf, uri, experiment_id, parent_id, device, workers, progress)
    failed = outcome.with_status("failed")
    if failed:
        labels = ", ".join(f"[{o.label}]" for o in failed[:10]) + (" ..." if len(failed) > 10 else "")
        store.end_run(mlf, parent_id, "FAILED", f"{len(failed)} of {len(grid.cells)} cell(s) failed: {labels}")
    elif not outcome.with_status("busy"):  # cells still running elsewhere: the parent stays RUNNING
        store.end_run(mlf, parent_id, "FINISHED")
    log.log(logging.WARNING if failed else logging.INFO, "%s", summary(outcome))
    return outcome


def _run_cells(grid: Grid, mlf, uri: str, experiment_id: str, parent_id: str, device: str, workers: int,
               progress: bool) -> GridOutcome:
    """The grid's cells not finished before, in this process or in `workers` processes."""
    from tqdm import tqdm

    from evaluation.progress import progress_enabled

    _log_grid_files(mlf, parent_id, grid)
    outcome = GridOutcome(grid, experiment_id, parent_id)
    done = _finished_cells(mlf, experiment_id)
    outcome.outcomes += [CellOutcome(c.label, c.cell_hash, "skipped") for c in grid.cells if c.cell_hash in done]
    jobs = [[c for c in job if c.cell_hash not in done] for job in grid.trainings().values()]
    jobs = [job for job in jobs if job]
    workers = min(workers, max(1, len(jobs)))
    ctx = RunContext(uri, experiment_id, parent_id, grid.name, device, str(runs_dir()), grid.overrides,
                     progress and workers == 1)  # several workers' training bars would overwrite each other
    log.info(f"grid {grid.name!r}: {len(grid.cells)} cells, {len(done)} already finished, "
          f"{sum(map(len, jobs))} to run in {len(jobs)} trainings on {workers} worker(s); MLflow {uri}")
    bar = tqdm(total=len(grid.cells), initial=len(outcome.outcomes), desc=f"grid {grid.name}", unit="cell",
               disable=not progress_enabled(progress), dynamic_ncols=True)

    def record(result: CellOutcome) -> None:
        outcome.outcomes.append(result)
        bar.update(1)
        bar.set_postfix(failed=len(outcome.with_status("failed")))
        if result.status in ("finished", "failed", "busy"):
            log.info("%s", f"{result.status}: [{result.label}] {result.error or ''}".rstrip())

    try:
        if workers == 1:
            for job in jobs:
                for cell in job:
                    record(run_cell(cell, ctx, mlf))
        else:
            _run_parallel(jobs, ctx, workers, record)
    finally:
        bar.close()
    return outcome


def summary(outcome: GridOutcome) -> str:
    counts = {s: len(outcome.with_status(s)) for s in ("finished", "skipped", "failed", "busy")}
    lines = [f"grid {outcome.grid.name!r}: {len(outcome.grid.cells)} cells: {counts['finished']} finished now, "
             f"{counts['skipped']} finished before, {counts['failed']} failed, {counts['busy']} being run elsewhere; "
             f"experiment id {outcome.experiment_id}, parent run {outcome.parent_run_id}"]
    if counts["failed"]:
        lines.append("failed cells (error tag wg2.error, traceback in the run's error.log; rerun to retry):")
        lines += [f"  [{o.label}] run {o.run_id}: {o.error}" for o in outcome.with_status("failed")]
    return "\n".join(lines)


def cmd_grid(args) -> int:
    pricing = None
    if args.dry_run:
        from experiments.grid.pricing import Pricing

        pricing = Pricing.from_args(args.gpu, args.utilisation)
    elif args.gpu is not None or args.utilisation is not None:
        raise InputError("--gpu and --utilisation set what a --dry-run prices on; without --dry-run they do nothing")
    return run_grid(args.grid, args.overrides, args.workers, args.device, args.dry_run, pricing=pricing,
                    max_cells=getattr(args, "max_cells", MAX_CELLS)).exit_code
