"""Score many utterance pairs in parallel worker processes, so 100 utterances x 4 schedules is not bound by one core.

Start method: "forkserver" with the metric modules preloaded. Not "fork": the parent usually has torch loaded with
its OpenMP/intra-op thread pools running, and forking a threaded process can deadlock the child. "spawn" would be
safe too but re-imports numpy/scipy/pesq/pystoi/parselmouth in every worker (about a second each); the forkserver
imports them once, in a clean process that never saw torch, and forks workers from it in milliseconds, also for
later calls in the same parent (the server lives as long as the parent). Falls back to "spawn" where forkserver
does not exist (Windows).
"""
from __future__ import annotations

import math
import multiprocessing as mp
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from typing import cast

import numpy as np
from tqdm import tqdm

from evaluation.metrics import Missing, Scores, metric_names
from evaluation.progress import progress_enabled
from evaluation.scoring import describe_error, score_pair

_PRELOAD = ["evaluation.scoring", "evaluation.pool", "pesq", "pystoi", "parselmouth"]


@dataclass(frozen=True)
class ScoreJob:
    """One pair to score. `tag` is free-form (e.g. the inference schedule) and is not used for scoring."""
    id: str
    reference: np.ndarray  # (T_ref,) float in [-1, 1]
    degraded: np.ndarray  # (T_deg,) float in [-1, 1]
    sample_rate: int
    degraded_rate: int | None = None
    aligned: bool = True
    tag: str | None = None


def score_job(job: ScoreJob) -> Scores:
    """Score one job; an unexpected exception (a bug, not a metric failure, which score_pair already records)
    still becomes Missing for every metric so that one bad utterance never loses a whole evaluation."""
    try:
        return score_pair(job.reference, job.degraded, job.sample_rate, job.degraded_rate, aligned=job.aligned)
    except Exception as err:  # noqa: BLE001
        reason = f"scoring failed for {job.id}: {describe_error(err)}"
        return {k: Missing(reason) for k in metric_names(job.aligned)}


def _score_chunk(jobs: list[ScoreJob]) -> list[Scores]:
    return [score_job(job) for job in jobs]


def _context() -> mp.context.BaseContext:
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(_PRELOAD)  # only takes effect if this parent's server has not started yet
        return ctx
    return mp.get_context("spawn")


def score_many(pairs: Iterable[ScoreJob], workers: int, progress: bool = True,
               chunksize: int | None = None) -> list[Scores]:
    """Scores for every job, in input order. workers <= 1 scores inline in this process.

    chunksize: jobs sent to a worker at once; default 1 (one job is ~0.1-0.5 s of work against ~1 ms of transfer,
    so batching gains nothing and costs load balance at the end of the run).
    """
    jobs = list(pairs)
    bar = tqdm(total=len(jobs), desc="scoring", unit="utt", disable=not progress_enabled(progress) or not jobs)
    if workers <= 1 or len(jobs) <= 1:
        inline: list[Scores] = []
        for job in jobs:
            inline.append(score_job(job))
            bar.update(1)
        bar.close()
        return inline
    size = max(1, chunksize or 1)
    chunks = [(start, jobs[start:start + size]) for start in range(0, len(jobs), size)]
    results: list[Scores | None] = [None] * len(jobs)
    n_workers = min(workers, math.ceil(len(jobs) / size))
    try:
        with ProcessPoolExecutor(max_workers=n_workers, mp_context=_context()) as pool:
            futures = {pool.submit(_score_chunk, chunk): start for start, chunk in chunks}
            for future in as_completed(futures):
                start = futures[future]
                chunk_scores = future.result()
                results[start:start + len(chunk_scores)] = chunk_scores
                bar.update(len(chunk_scores))
    finally:
        bar.close()
    return cast(list[Scores], results)  # every slot is filled by now (a failed chunk raised above)
