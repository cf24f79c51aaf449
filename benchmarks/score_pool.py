"""Benchmark (not a test): seconds to score N utterances inline (workers=1) and with the worker pool.

    .venv/bin/python benchmarks/score_pool.py [CORPUS_DIR] [--n 100] [--workers 2] [--snr 10] [--repeat 3]

Each corpus wav is degraded with seeded white noise and scored with every metric (aligned). Wall times cover the
whole `score_many` call, worker start-up included; inline and pool runs are interleaved `--repeat` times and the
best is reported (with the median), the very first pool call (which also starts the forkserver) separately. The
machine's own parallel capacity is measured too (a pure-Python CPU loop in 1 vs `workers` processes): no pool can
beat it, so read the speedup against it. All runs must give the same scores.
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation.metrics import Missing
from evaluation.pool import ScoreJob, _context, score_many


def _spin(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def parallel_capacity(workers: int, loops: int = 6_000_000) -> float:
    """Throughput of `workers` processes over one, on a CPU loop with no memory traffic: the ideal speedup here."""
    start = time.perf_counter()
    _spin(loops)
    one = time.perf_counter() - start
    with ProcessPoolExecutor(workers, mp_context=_context()) as pool:
        list(pool.map(_spin, [1000] * workers))  # workers up before timing
        start = time.perf_counter()
        list(pool.map(_spin, [loops] * workers))
        many = time.perf_counter() - start
    return workers * one / many


def same_scores(a: list, b: list) -> None:
    """Equal up to OpenBLAS's alignment-dependent last bits (ESTOI's matrix products)."""
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys() and all(
            x[k] == y[k] if isinstance(x[k], Missing) else math.isclose(x[k], y[k], rel_tol=1e-12) for k in x)


def make_jobs(corpus: Path, n: int, snr_db: float) -> list[ScoreJob]:
    wavs = sorted((corpus / "wavs").glob("*.wav"))
    if not wavs:
        raise SystemExit(f"{corpus}/wavs: no wav files (build one with `wg2 corpus build --out {corpus} --limit {n}`)")
    jobs = []
    for i in range(n):  # fewer wavs than n: reuse them, each time with its own noise
        x, rate = sf.read(str(wavs[i % len(wavs)]), dtype="float64", always_2d=True)
        x = x.mean(axis=1)
        noise = np.random.default_rng(i).standard_normal(len(x))
        noise *= math.sqrt(np.mean(x ** 2) / np.mean(noise ** 2) / 10 ** (snr_db / 10))
        jobs.append(ScoreJob(wavs[i % len(wavs)].stem, x, x + noise, rate))
    return jobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", nargs="?", default="corpora/harvard")
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--snr", type=float, default=10.0)
    parser.add_argument("--repeat", type=int, default=3, help="interleaved repetitions; the best is reported")
    args = parser.parse_args()
    jobs = make_jobs(Path(args.corpus), args.n, args.snr)
    audio_s = sum(len(j.reference) / j.sample_rate for j in jobs)
    print(f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
          f"os.cpu_count()={os.cpu_count()}, python {platform.python_version()}")
    print(f"work: {len(jobs)} utterances ({audio_s:.0f} s of audio at {jobs[0].sample_rate} Hz), every metric, "
          f"white noise at {args.snr:g} dB SNR")
    score_many(jobs[:2], workers=1, progress=False)  # imports and first-call set-up out of the inline timing

    def timed(workers: int) -> tuple[float, list]:
        start = time.perf_counter()
        scores = score_many(jobs, workers=workers, progress=False)
        return time.perf_counter() - start, scores

    t_first, reference = timed(args.workers)  # the very first pool call also starts the forkserver
    inline, pooled, capacity = [], [], []
    for _ in range(args.repeat):  # interleaved, so a burst of load from elsewhere hits both alike
        seconds, scores = timed(1)
        inline.append(seconds)
        same_scores(reference, scores)
        seconds, scores = timed(args.workers)
        pooled.append(seconds)
        same_scores(reference, scores)
        capacity.append(parallel_capacity(args.workers))
    t1, tn = min(inline), min(pooled)
    print(f"repeats: {args.repeat}, interleaved; best (median) wall seconds for the whole score_many call")
    print(f"workers=1 (inline):  {t1:7.2f} s ({statistics.median(inline):.2f})  {1000 * t1 / len(jobs):.0f} ms/utt")
    print(f"workers={args.workers} (pool):    {tn:7.2f} s ({statistics.median(pooled):.2f})  "
          f"speedup {t1 / tn:.2f}x (median {statistics.median(inline) / statistics.median(pooled):.2f}x)")
    print(f"workers={args.workers}, first call (forkserver start included): {t_first:.2f} s")
    print(f"machine parallel capacity, {args.workers} processes on a pure-Python loop: best {max(capacity):.2f}x, "
          f"median {statistics.median(capacity):.2f}x (the ceiling for any pool here)")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    print("method: evaluation.pool.score_many, ProcessPoolExecutor on a forkserver context (metric modules "
          "preloaded), chunksize 1, BLAS limited to one thread per process; identical scores checked")


if __name__ == "__main__":
    main()
