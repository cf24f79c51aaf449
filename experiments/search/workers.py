"""Running the queue: one process takes waiting trials until none is left; `--workers N` starts N spawned
processes on the study while the parent reports each trial they finish."""
from __future__ import annotations

import multiprocessing
import os
import time

import optuna
import torch

from experiments.grid.workers import start_workers, stop_workers, watch_parent
from experiments.search.evaluator import Evaluator, load_evaluators
from experiments.search.queue import claim, load_study, lock_path
from experiments.search.spec import SearchSpec
from experiments.search.tracking import TrackingContext, TrialLogger
from experiments.search.trial import run_trial
from experiments.tracking import store
from experiments.tracking.ending import raise_on_sigterm


def work(study: optuna.Study, spec: SearchSpec, ev: Evaluator, logger: TrialLogger, on_trial=None) -> int:
    """Take waiting trials until none is left; returns how many this process ran."""
    lock, ran = lock_path(spec), 0
    while (trial := claim(study, lock)) is not None:
        frozen = run_trial(study, trial, spec, ev)
        logger(frozen)
        ran += 1
        if on_trial:
            on_trial(frozen)
    return ran


def _worker_main(spec: SearchSpec, ctx: TrackingContext, index: int) -> None:
    watch_parent()
    raise_on_sigterm()
    # more torch threads than cores makes the convolutions spin (measured 8x slower on 2 cores)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // spec.workers))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    store.quiet_mlflow_logs()
    work(load_study(spec, index), spec, load_evaluators(spec)[0], TrialLogger(ctx, spec))


def run_workers(spec: SearchSpec, ctx: TrackingContext, study: optuna.Study, workers: int, report) -> list[str]:
    """Start `workers` spawned processes on the study; `report(frozen)` for each trial they finish.
    Returns error lines for workers that exited abnormally."""
    mp = multiprocessing.get_context("spawn")  # not fork: this process holds torch threads (and maybe CUDA)
    procs = start_workers(mp, _worker_main, lambda i: (spec, ctx, i), workers, spec.device, "wg2-search-worker")
    seen = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}

    def poll() -> None:
        for t in study.get_trials(deepcopy=False):
            if t.state.is_finished() and t.number not in seen:
                seen.add(t.number)
                report(t)

    try:
        while any(p.is_alive() for p in procs):
            time.sleep(1.0)
            poll()
    except KeyboardInterrupt as err:
        stop_workers(procs, err)
        raise
    for proc in procs:
        proc.join()
    poll()
    return [f"{p.name} exited with code {p.exitcode}" for p in procs if p.exitcode]
