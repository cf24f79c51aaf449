"""Objective speech metrics: one synthesized utterance against its reference.

`score_pair` (evaluation.scoring) returns a `Scores` dict (metric name -> float or `Missing`) for every entry of
METRICS, the table here that says what each metric is, which pass of `wg2 eval` records it, its range and which
way is better; RUN_FIGURES does the same for the figures reported beside them. The signal features the metrics
share are evaluation.signal_features.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Missing:
    """A metric value that could not be computed, and why."""
    reason: str


Scores = dict[str, "float | Missing"]

# The pass of `wg2 eval` a metric belongs to (README, "Evaluation protocol"):
ON_ALIGNED = "aligned"  # ground-truth durations: needs output and reference to line up sample for sample
ON_FREE_RUNNING = "free-running"  # predicted durations: length-robust, recorded from this pass only
ON_EITHER = "either"  # needs no alignment (no reference at all) but is recorded once, from the aligned pass
# evaluation.conditioning's two figures: their names in eval summaries, MLflow runs and reports
GAIN_KEY = "envelope_gain"  # states rolled by half the utterance, on speech frames
PHONEME_GAIN_KEY = "phoneme_gain"  # speech phonemes deranged, durations and silences kept: "reads its text"


class PairView(Protocol):
    """What a metric's `compute` gets: the pair being scored (evaluation.scoring.Pair), whole and aligned (trimmed
    to the shorter), with the work several metrics share done at most once."""
    reference: np.ndarray
    degraded: np.ndarray
    ref: np.ndarray
    deg: np.ndarray
    rate: int

    def pesq(self, mode: str) -> float | Missing: ...
    def stoi(self, extended: bool) -> float | Missing: ...
    def mel_cd(self) -> float: ...
    def mel_cd_dtw(self) -> float: ...
    def log_mel_distance(self) -> float: ...
    def pitch(self) -> dict[str, float | Missing]: ...
    def dnsmos(self) -> dict[str, float | Missing]: ...


@dataclass(frozen=True, kw_only=True)
class Figure:
    """A number the suite reports: what it is, the values it can take and which way is better."""
    description: str
    low: float  # the range of values it can take (math.inf for no bound): interval ends are clipped to it
    high: float
    better: str  # "higher", "lower", "closer to 1" (not ranked) or "" (not a quality: nothing to rank)
    unit: str = ""
    per_utterance: bool = False  # a run figure scored per utterance like the METRICS (listed beside them)

    @property
    def direction(self) -> int:
        """+1 higher is better, -1 lower is better, 0 neither."""
        return 1 if self.better == "higher" else -1 if self.better == "lower" else 0

    @property
    def range_text(self) -> str:
        return f"{self.low:g}-{self.high:g}"


@dataclass(frozen=True, kw_only=True)
class MetricInfo(Figure):
    """A metric `score_pair` computes for a pair of signals."""
    eval_pass: str  # ON_ALIGNED, ON_FREE_RUNNING or ON_EITHER
    compute: Callable[[PairView], float | Missing]  # its value for one pair; an exception is recorded as Missing
    headline: bool = False  # a column of each schedule's table in `wg2 compare` reports
    extra: str | None = None  # optional dependency group that provides it

    @property
    def aligned_only(self) -> bool:
        """Meaningless unless output and reference line up sample for sample."""
        return self.eval_pass == ON_ALIGNED


INF = math.inf
# One entry per metric; everything else (what score_pair computes and returns, eval's passes, report columns,
# directions, interval clipping, the README's table) is derived from it. `compute` gets the `Pair` being scored
# (evaluation.scoring.Pair, with the work metrics share).
DEFAULT_METRIC = "pesq_wb"  # what reports rank by and searches optimise unless told otherwise (--metric, --objective)
METRICS: dict[str, MetricInfo] = {
    "pesq_wb": MetricInfo(
        description="PESQ wide-band (ITU-T P.862.2) at 16 kHz: perceived quality", low=1.0, high=4.64,
        better="higher", unit="MOS-LQO", eval_pass=ON_ALIGNED, headline=True,
        compute=lambda p: p.pesq("wb")),
    "pesq_nb": MetricInfo(
        description="PESQ narrow-band (P.862 + P.862.1 mapping) at 8 kHz", low=1.0, high=4.55,
        better="higher", unit="MOS-LQO", eval_pass=ON_ALIGNED,
        compute=lambda p: p.pesq("nb")),
    "stoi": MetricInfo(
        description="short-time objective intelligibility (pystoi, 10 kHz internally)", low=0.0, high=1.0,
        better="higher", eval_pass=ON_ALIGNED, headline=True,
        compute=lambda p: p.stoi(extended=False)),
    "estoi": MetricInfo(
        description="extended STOI, robust to modulated noise", low=0.0, high=1.0,
        better="higher", eval_pass=ON_ALIGNED, headline=True,
        compute=lambda p: p.stoi(extended=True)),
    "mel_cd": MetricInfo(
        description="mel-cepstral distance on an 80-band log-mel DCT, order 24 without c0, on aligned frames "
                    "(not SPTK-mcep MCD)", low=0.0, high=INF,
        better="lower", unit="dB", eval_pass=ON_ALIGNED, headline=True,
        compute=lambda p: p.mel_cd()),
    "mel_cd_dtw": MetricInfo(
        description="mel-cepstral distance on an 80-band log-mel DCT after dynamic time warping (any output "
                    "length)", low=0.0, high=INF,
        better="lower", unit="dB", eval_pass=ON_FREE_RUNNING, headline=True,
        compute=lambda p: p.mel_cd_dtw()),
    "log_mel_distance": MetricInfo(
        description="mean over frames of the RMS over 80 mel bands of the log-mel difference", low=0.0, high=INF,
        better="lower", unit="dB", eval_pass=ON_ALIGNED,
        compute=lambda p: p.log_mel_distance()),
    "f0_rmse_cents": MetricInfo(
        description="F0 RMSE on frames voiced in both (Praat autocorrelation pitch)", low=0.0, high=INF,
        better="lower", unit="cents", eval_pass=ON_ALIGNED,
        compute=lambda p: p.pitch()["f0_rmse_cents"]),
    "vuv_error": MetricInfo(
        description="fraction of frames whose voiced/unvoiced decision differs", low=0.0, high=1.0,
        better="lower", eval_pass=ON_ALIGNED,
        compute=lambda p: p.pitch()["vuv_error"]),
    "length_ratio": MetricInfo(
        description="output length over reference length", low=0.0, high=INF,
        better="closer to 1", eval_pass=ON_FREE_RUNNING,
        compute=lambda p: len(p.degraded) / len(p.reference)),
    "dnsmos_ovrl": MetricInfo(
        description="DNSMOS P.835 overall quality, no reference", low=1.0, high=5.0,
        better="higher", unit="MOS", eval_pass=ON_EITHER, extra="dnsmos",
        compute=lambda p: p.dnsmos()["dnsmos_ovrl"]),
    "dnsmos_sig": MetricInfo(
        description="DNSMOS P.835 speech-signal quality, no reference", low=1.0, high=5.0,
        better="higher", unit="MOS", eval_pass=ON_EITHER, extra="dnsmos",
        compute=lambda p: p.dnsmos()["dnsmos_sig"]),
    "dnsmos_bak": MetricInfo(
        description="DNSMOS P.835 background-noise quality, no reference", low=1.0, high=5.0,
        better="higher", unit="MOS", eval_pass=ON_EITHER, extra="dnsmos",
        compute=lambda p: p.dnsmos()["dnsmos_bak"]),
}

# Figures reported beside the METRICS that are not scores of a pair (a key may carry a prefix: "manual-6/rtf",
# "train/loss"). One entry per figure, as for METRICS.
RUN_FIGURES: dict[str, Figure] = {
    "duration_error_frames": Figure(description="mean absolute error of predicted vs true phone durations "
                                    "(free-running pass)", low=0.0, high=INF, better="lower", unit="frames",
                                    per_utterance=True),
    GAIN_KEY: Figure(description="envelope gain: noise-prediction loss on speech frames with the states rolled by "
                     "half the utterance over the loss with the true ones (1: the text is ignored)", low=0.0,
                     high=INF, better="higher"),
    PHONEME_GAIN_KEY: Figure(description="phoneme gain: loss on speech frames with every speech phoneme deranged "
                             "(durations, silences kept) over the true one (1: phoneme identity is ignored)",
                             low=0.0, high=INF, better="higher"),
    "rtf": Figure(description="real-time factor: synthesis seconds over audio seconds", low=0.0, high=INF,
                  better="lower"),
    "peak_memory_mb": Figure(description="peak memory: CUDA allocator peak on GPU, peak resident set on CPU",
                             low=0.0, high=INF, better="lower", unit="MiB"),
    "audio_seconds": Figure(description="seconds of audio synthesized", low=0.0, high=INF, better="", unit="s"),
    "synthesis_seconds": Figure(description="seconds spent synthesizing", low=0.0, high=INF, better="", unit="s"),
    "audio_seconds_per_sec": Figure(description="training throughput in seconds of audio per second", low=0.0,
                                    high=INF, better="higher"),
    "steps_per_sec": Figure(description="training steps per second", low=0.0, high=INF, better="higher"),
    "wall_seconds": Figure(description="training wall-clock time", low=0.0, high=INF, better="lower", unit="s"),
    "loss": Figure(description="training loss: the weighted sum of the noise, duration and mel losses", low=0.0,
                   high=INF, better="lower"),
    "noise_loss": Figure(description="noise-prediction loss", low=0.0, high=INF, better="lower"),
    "duration_loss": Figure(description="duration-predictor loss", low=0.0, high=INF, better="lower"),
}


def figure_info(key: str) -> Figure | None:
    """The METRICS or RUN_FIGURES entry of a key, which may carry a prefix ("manual-6/pesq_wb"); None if unknown."""
    name = key.rsplit("/", 1)[-1]
    return METRICS.get(name) or RUN_FIGURES.get(name)


def value_range(key: str) -> tuple[float, float] | None:
    """(low, high) a figure's values can take (see `figure_info`). None when unknown: nothing to clip to."""
    info = figure_info(key)
    return None if info is None else (info.low, info.high)


def headline_metrics() -> tuple[str, ...]:
    """The headline quality metrics (columns of each schedule's table in reports), in METRICS order."""
    return tuple(name for name, info in METRICS.items() if info.headline)


def metrics_markdown() -> str:
    """The METRICS table, with the per-utterance RUN_FIGURES, in Markdown (the README's table is this text)."""
    lines = ["| metric | what it measures | range | better | unit |", "|---|---|---|---|---|"]
    rows = [*METRICS.items(), *((k, f) for k, f in RUN_FIGURES.items() if f.per_utterance)]
    for name, info in rows:
        extra = f" (extra `[{info.extra}]`)" if isinstance(info, MetricInfo) and info.extra else ""
        lines.append(f"| `{name}` | {info.description}{extra} | {info.range_text} | {info.better} | "
                     f"{info.unit or '-'} |")
    return "\n".join(lines)


@functools.lru_cache(maxsize=1)
def dnsmos_module():
    """speechmos's dnsmos module, or None when the `[dnsmos]` extra is not installed (imported lazily: it pulls in
    onnxruntime and librosa, which most runs do not need)."""
    try:
        from speechmos import dnsmos
    except Exception:  # noqa: BLE001 - ImportError, or a broken onnxruntime install: either way the metric is unavailable
        return None
    return dnsmos


def available_metrics() -> dict[str, bool]:
    """Every metric name -> whether this installation computes it (the DNSMOS ones need the `[dnsmos]` extra)."""
    has_dnsmos = dnsmos_module() is not None
    return {name: (info.extra != "dnsmos" or has_dnsmos) for name, info in METRICS.items()}


def metric_names(aligned: bool = True) -> list[str]:
    """The keys `score_pair` returns in this installation, in METRICS order."""
    available = available_metrics()
    return [k for k, info in METRICS.items() if available[k] and (aligned or not info.aligned_only)]


def to_jsonable(scores: Scores) -> dict:
    return {k: ({"missing": v.reason} if isinstance(v, Missing) else float(v)) for k, v in scores.items()}


def from_jsonable(data: dict) -> Scores:
    return {k: (Missing(v["missing"]) if isinstance(v, dict) else float(v)) for k, v in data.items()}


if __name__ == "__main__":
    print(metrics_markdown())
