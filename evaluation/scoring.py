"""Scoring one synthesized utterance against its reference: `score_pair` computes every METRICS entry for the
pair and returns a `Scores` dict (metric name -> float or `Missing`). A metric that cannot be computed is
`Missing(reason)`, never a crash and never a made-up number: silent, too short or non-finite audio makes every
metric missing, and any metric's own failure (a PESQ error, too few frames) makes that metric missing."""
from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from evaluation.metrics import METRICS, Missing, PairView, Scores, dnsmos_module, metric_names
from evaluation.signal_features import (
    log_mel_distance,
    log_mel_features,
    mel_cd,
    mel_cd_dtw,
    mel_cepstrum,
    pitch_track,
    resample,
)

MIN_DURATION_S = 0.25  # PESQ refuses shorter buffers and STOI needs 30 frames of 25.6 ms; below this nothing is honest
SILENCE_RMS = 1e-5  # -100 dBFS: quieter than any real recording's noise floor, so such output is treated as silent
ALIGN_TOLERANCE_S = 0.02  # about one 300-sample model hop at 22.05 kHz, rounded up


def _pitch_metrics(ref: np.ndarray, deg: np.ndarray, rate: int) -> dict[str, float | Missing]:
    f_ref, f_deg = pitch_track(ref, rate), pitch_track(deg, rate)
    n = min(len(f_ref), len(f_deg))
    if n == 0:
        return {k: Missing("no pitch frames") for k in ("f0_rmse_cents", "vuv_error")}
    f_ref, f_deg = f_ref[:n], f_deg[:n]
    v_ref, v_deg = f_ref > 0, f_deg > 0
    both = v_ref & v_deg
    out: dict[str, float | Missing] = {"vuv_error": float(np.mean(v_ref != v_deg))}
    if both.any():
        cents = 1200.0 * np.log2(f_deg[both] / f_ref[both])
        out["f0_rmse_cents"] = float(np.sqrt(np.mean(cents ** 2)))
    else:
        out["f0_rmse_cents"] = Missing("no frame is voiced in both reference and output")
    return out


# ---------------------------------------------------------------------------------------------- PESQ and STOI
def _pesq(ref: np.ndarray, deg: np.ndarray, rate: int, mode: str) -> float | Missing:
    import pesq

    fs = 16000 if mode == "wb" else 8000
    if rate < fs:
        return Missing(f"reference rate {rate} Hz is below the {fs} Hz that PESQ-{mode} needs")
    return float(pesq.pesq(fs, resample(ref, rate, fs), resample(deg, rate, fs), mode))


def _stoi(ref: np.ndarray, deg: np.ndarray, rate: int, extended: bool) -> float | Missing:
    from pystoi import stoi

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = stoi(ref, deg, rate, extended=extended)
    # pystoi returns a placeholder 1e-5 with a warning when fewer than 30 non-silent frames remain: not a score
    if any("Not enough STFT frames" in str(w.message) for w in caught):
        return Missing("fewer than 30 non-silent STFT frames (384 ms) after pystoi's silence removal")
    return float(value)


def _dnsmos(deg: np.ndarray, rate: int, module) -> dict[str, float | Missing]:
    result = module.run(resample(deg, rate, 16000).astype(np.float32), sr=16000)
    keys = {"dnsmos_ovrl": "ovrl_mos", "dnsmos_sig": "sig_mos", "dnsmos_bak": "bak_mos"}
    return {ours: (float(result[theirs]) if theirs in result else Missing(f"speechmos gave no {theirs}"))
            for ours, theirs in keys.items()}


def _unusable(x: np.ndarray, rate: int, role: str) -> str | None:
    if not np.all(np.isfinite(x)):
        return f"{role} audio contains NaN or inf"
    seconds = len(x) / rate
    if seconds < MIN_DURATION_S:
        return f"{role} audio too short: {seconds:.3f} s < {MIN_DURATION_S} s minimum"
    rms = float(np.sqrt(np.mean(np.square(x))))
    if rms < SILENCE_RMS:
        return f"{role} audio is silent (RMS {rms:.2e} < {SILENCE_RMS:.0e})"
    return None


def describe_error(err: BaseException) -> str:
    """"Type: message"; pesq's C errors carry bytes messages, shown as text."""
    message: object = err
    if len(err.args) == 1 and isinstance(err.args[0], bytes):
        message = err.args[0].decode("utf-8", "replace")
    return f"{type(err).__name__}: {message}"


class Pair:
    """One pair being scored, at one rate: the whole signals, their aligned (trimmed to the shorter) versions, and
    the work several metrics share (log-mel features, cepstra, pitch tracks, DNSMOS), each done at most once. A
    failure of shared work is kept and raised again to every metric that needs it, so each records its reason."""

    reference: np.ndarray  # whole signals
    degraded: np.ndarray
    ref: np.ndarray  # trimmed to the shorter
    deg: np.ndarray
    rate: int

    def __init__(self, reference: np.ndarray, degraded: np.ndarray, rate: int):
        self.reference, self.degraded, self.rate = reference, degraded, rate
        n = min(len(reference), len(degraded))
        self.ref, self.deg = reference[:n], degraded[:n]
        self._done: dict[str, Any] = {}
        self._failed: dict[str, Exception] = {}

    def _shared(self, name: str, make: Callable[[], Any]) -> Any:
        if name not in self._done and name not in self._failed:
            try:
                self._done[name] = make()
            except Exception as err:  # noqa: BLE001 - raised again below, to every metric that needs this work
                self._failed[name] = err
        if name in self._failed:
            raise self._failed[name]
        return self._done[name]

    def log_mel(self) -> tuple[np.ndarray, np.ndarray]:
        """(T_ref, N_MELS), (T_deg, N_MELS) log-mel in dB of the whole signals."""
        return self._shared("log_mel", lambda: log_mel_features(self.reference, self.degraded, self.rate))

    def cepstra(self) -> tuple[np.ndarray, np.ndarray]:
        """(T_ref, 24), (T_deg, 24) mel-cepstra."""
        return self._shared("cepstra", lambda: tuple(mel_cepstrum(x) for x in self.log_mel()))

    def pitch(self) -> dict[str, float | Missing]:
        return self._shared("pitch", lambda: _pitch_metrics(self.ref, self.deg, self.rate))

    def pesq(self, mode: str) -> float | Missing:
        return _pesq(self.ref, self.deg, self.rate, mode)

    def stoi(self, extended: bool) -> float | Missing:
        return _stoi(self.ref, self.deg, self.rate, extended)

    def mel_cd(self) -> float:
        return mel_cd(*self.cepstra())

    def mel_cd_dtw(self) -> float:
        return mel_cd_dtw(*self.cepstra())

    def log_mel_distance(self) -> float:
        return log_mel_distance(*self.log_mel())

    def dnsmos(self) -> dict[str, float | Missing]:
        return self._shared("dnsmos", lambda: _dnsmos(self.degraded, self.rate, dnsmos_module()))


def _guarded(compute: Callable[[PairView], float | Missing], pair: Pair) -> float | Missing:
    """One metric's value for the pair; any exception becomes Missing with its type and message."""
    try:
        return compute(pair)
    except Exception as err:  # noqa: BLE001 - a metric's own failure (PesqError, parselmouth error, ...) is recorded, not raised
        return Missing(describe_error(err))


def score_pair(reference: np.ndarray, degraded: np.ndarray, sample_rate: int, degraded_rate: int | None = None,
               *, aligned: bool = True) -> Scores:
    """Score `degraded` against `reference` (1-D float arrays in [-1, 1]; `degraded_rate` defaults to
    `sample_rate`, and a different rate is resampled to the reference's).

    aligned=True (ground-truth durations): every metric. The aligned ones need equal lengths within
    ALIGN_TOLERANCE_S (both are trimmed to the shorter); a bigger difference makes them Missing ("lengths differ").
    aligned=False (free-running output): only the length-robust `mel_cd_dtw` and `length_ratio` (plus DNSMOS).
    """
    reference = np.asarray(reference, dtype=np.float64)
    degraded = np.asarray(degraded, dtype=np.float64)
    if reference.ndim != 1 or degraded.ndim != 1:
        raise ValueError(f"score_pair needs 1-D mono arrays, got shapes {reference.shape} and {degraded.shape}")
    if sample_rate <= 0 or (degraded_rate is not None and degraded_rate <= 0):
        raise ValueError(f"sample rates must be positive, got {sample_rate} and {degraded_rate}")
    with _single_threaded_blas():
        return _score(reference, degraded, sample_rate, degraded_rate or sample_rate, aligned)


def _single_threaded_blas() -> threadpool_limits:
    """BLAS pools limited to one thread while scoring. The matrices here are small, so OpenBLAS's threads only add
    hand-off and busy-waiting that steals the core back from the next step: measured 290 ms -> 126 ms per 2.5 s
    utterance on 2 cores, and it is what lets worker processes scale."""
    return threadpool_limits(limits=1)


def _score(reference: np.ndarray, degraded: np.ndarray, sample_rate: int, degraded_rate: int,
           aligned: bool) -> Scores:
    names = metric_names(aligned)
    problem = _unusable(reference, sample_rate, "reference") or _unusable(degraded, degraded_rate, "degraded")
    if problem:
        return {k: Missing(problem) for k in names}
    if degraded_rate != sample_rate:
        degraded = resample(degraded, degraded_rate, sample_rate)
    rate = sample_rate
    gap = abs(len(reference) - len(degraded)) / rate
    unaligned = None
    if aligned and gap > ALIGN_TOLERANCE_S:
        unaligned = Missing(f"lengths differ: reference {len(reference) / rate:.3f} s, degraded "
                            f"{len(degraded) / rate:.3f} s (aligned metrics need equal length within "
                            f"{ALIGN_TOLERANCE_S * 1000:.0f} ms)")
    pair = Pair(reference, degraded, rate)
    scores: Scores = {}
    for name in names:
        info = METRICS[name]
        scores[name] = unaligned if unaligned and info.aligned_only else _guarded(info.compute, pair)
    return scores
