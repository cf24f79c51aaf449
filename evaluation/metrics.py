"""Objective speech metrics: one synthesized utterance against its reference.

`score_pair` returns a `Scores` dict (metric name -> float or `Missing`). A metric that cannot be computed is
`Missing(reason)`, never a crash and never a made-up number: silent, too short or non-finite audio makes every
metric missing, and any metric's own failure (a PESQ error, too few frames) makes that metric missing.

Spectral features shared by mel_cd, mel_cd_dtw and the log-mel distance (rate-independent, stated in seconds):
- frames: 25 ms Hann window, 5 ms hop, FFT size the next power of two, no centring (last partial frame dropped);
- 80 triangular mel bands (HTK mel scale, 2595 log10(1 + f/700)) from 0 Hz to half the reference rate, applied
  to the power spectrum; log in dB with a floor 80 dB below the reference's loudest mel bin (both signals share
  that floor, so digital silence in the reference does not dominate the distances);
- mel-cepstra of order 24: DCT-II of the natural-log mel *magnitude*, scaled as in the cepstrum definition
  ln|S_m| = c0 + 2 sum_d c_d cos(pi d (m + 1/2) / M), i.e. c = DCT-II(ln|S|) / (2M). c0 (energy) is excluded;
  mel_cd = 10/ln10 * sqrt(2 * sum_{d=1..24} (c_d - c'_d)^2) per frame, averaged over frames (Kubichek's convention).
These are not SPTK mel-cepstra (no all-pass frequency warping of an mcep analysis), so mel_cd is a mel-cepstral
distance on a log-mel DCT, not comparable to MCD figures computed from SPTK/pysptk mcep.
"""
from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from scipy.fft import dct
from scipy.signal import resample_poly
from threadpoolctl import threadpool_limits

WINDOW_S = 0.025
HOP_S = 0.005
N_MELS = 80
CEPSTRAL_ORDER = 24
TOP_DB = 80.0
MIN_DURATION_S = 0.25  # PESQ refuses shorter buffers and STOI needs 30 frames of 25.6 ms; below this nothing is honest
SILENCE_RMS = 1e-5  # -100 dBFS: quieter than any real recording's noise floor, so such output is treated as silent
ALIGN_TOLERANCE_S = 0.02  # about one 300-sample model hop at 22.05 kHz, rounded up
PITCH_STEP_S = 0.01
PITCH_FLOOR_HZ = 75.0
PITCH_CEILING_HZ = 600.0
_MCD_SCALE = 10.0 / math.log(10.0) * math.sqrt(2.0)


@dataclass(frozen=True)
class Missing:
    """A metric value that could not be computed, and why."""
    reason: str


Scores = dict[str, "float | Missing"]

# The pass of `wg2 eval` a metric belongs to (README, "Evaluation protocol"):
ON_ALIGNED = "aligned"  # ground-truth durations: needs output and reference to line up sample for sample
ON_FREE_RUNNING = "free-running"  # predicted durations: length-robust, recorded from this pass only
ON_EITHER = "either"  # needs no alignment (no reference at all) but is recorded once, from the aligned pass
GAIN_KEY = "conditioning_gain"  # evaluation.conditioning's figure: its name in eval summaries, MLflow runs, reports


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
    compute: Callable[[Pair], float | Missing]  # its value for one pair; an exception is recorded as Missing
    headline: bool = False  # a column of each schedule's table in `wg2 compare` reports
    extra: str | None = None  # optional dependency group that provides it

    @property
    def aligned_only(self) -> bool:
        """Meaningless unless output and reference line up sample for sample."""
        return self.eval_pass == ON_ALIGNED


INF = math.inf
# One entry per metric; everything else (what score_pair computes and returns, eval's passes, report columns,
# directions, interval clipping, the README's table) is derived from it. `compute` gets the `Pair` being scored
# (defined below, with the work metrics share).
METRICS: dict[str, MetricInfo] = {
    "pesq_wb": MetricInfo(
        description="PESQ wide-band (ITU-T P.862.2) at 16 kHz: perceived quality", low=1.0, high=4.64,
        better="higher", unit="MOS-LQO", eval_pass=ON_ALIGNED, headline=True,
        compute=lambda p: _pesq(p.ref, p.deg, p.rate, "wb")),
    "pesq_nb": MetricInfo(
        description="PESQ narrow-band (P.862 + P.862.1 mapping) at 8 kHz", low=1.0, high=4.55,
        better="higher", unit="MOS-LQO", eval_pass=ON_ALIGNED,
        compute=lambda p: _pesq(p.ref, p.deg, p.rate, "nb")),
    "stoi": MetricInfo(
        description="short-time objective intelligibility (pystoi, 10 kHz internally)", low=0.0, high=1.0,
        better="higher", eval_pass=ON_ALIGNED, headline=True,
        compute=lambda p: _stoi(p.ref, p.deg, p.rate, extended=False)),
    "estoi": MetricInfo(
        description="extended STOI, robust to modulated noise", low=0.0, high=1.0,
        better="higher", eval_pass=ON_ALIGNED, headline=True,
        compute=lambda p: _stoi(p.ref, p.deg, p.rate, extended=True)),
    "mel_cd": MetricInfo(
        description="mel-cepstral distance on an 80-band log-mel DCT, order 24 without c0, on aligned frames "
                    "(not SPTK-mcep MCD)", low=0.0, high=INF,
        better="lower", unit="dB", eval_pass=ON_ALIGNED, headline=True,
        compute=lambda p: _mcd(*p.cepstra())),
    "mel_cd_dtw": MetricInfo(
        description="mel-cepstral distance on an 80-band log-mel DCT after dynamic time warping (any output "
                    "length)", low=0.0, high=INF,
        better="lower", unit="dB", eval_pass=ON_FREE_RUNNING, headline=True,
        compute=lambda p: _mcd_dtw(*p.cepstra())),
    "log_mel_distance": MetricInfo(
        description="mean over frames of the RMS over 80 mel bands of the log-mel difference", low=0.0, high=INF,
        better="lower", unit="dB", eval_pass=ON_ALIGNED,
        compute=lambda p: _log_mel_distance(*p.log_mel())),
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
    GAIN_KEY: Figure(description="noise-prediction loss with time-shifted conditioning over the loss with the true "
                     "one (1: the text is ignored)", low=0.0, high=INF, better="higher"),
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
def _dnsmos_module():
    """speechmos's dnsmos module, or None when the `[dnsmos]` extra is not installed (imported lazily: it pulls in
    onnxruntime and librosa, which most runs do not need)."""
    try:
        from speechmos import dnsmos
    except Exception:  # noqa: BLE001 - ImportError, or a broken onnxruntime install: either way the metric is unavailable
        return None
    return dnsmos


def available_metrics() -> dict[str, bool]:
    """Every metric name -> whether this installation computes it (the DNSMOS ones need the `[dnsmos]` extra)."""
    has_dnsmos = _dnsmos_module() is not None
    return {name: (info.extra != "dnsmos" or has_dnsmos) for name, info in METRICS.items()}


def metric_names(aligned: bool = True) -> list[str]:
    """The keys `score_pair` returns in this installation, in METRICS order."""
    available = available_metrics()
    return [k for k, info in METRICS.items() if available[k] and (aligned or not info.aligned_only)]


def to_jsonable(scores: Scores) -> dict:
    return {k: ({"missing": v.reason} if isinstance(v, Missing) else float(v)) for k, v in scores.items()}


def from_jsonable(data: dict) -> Scores:
    return {k: (Missing(v["missing"]) if isinstance(v, dict) else float(v)) for k, v in data.items()}


def resample(x: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Polyphase resampling (anti-aliased), never sample dropping; a no-op at equal rates."""
    if from_rate == to_rate:
        return np.asarray(x, dtype=np.float64)
    g = math.gcd(int(from_rate), int(to_rate))
    return resample_poly(np.asarray(x, dtype=np.float64), to_rate // g, from_rate // g)


# ----------------------------------------------------------------------------------------------- spectral features
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int = N_MELS) -> np.ndarray:
    """Triangular filters on the HTK mel scale from 0 Hz to Nyquist. Returns (n_mels, n_fft // 2 + 1)."""
    def to_mel(f):
        return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)
    edges_hz = 700.0 * (10.0 ** (np.linspace(0.0, to_mel(sample_rate / 2), n_mels + 2) / 2595.0) - 1.0)
    bins_hz = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    lower, centre, upper = edges_hz[:-2, None], edges_hz[1:-1, None], edges_hz[2:, None]
    rising = (bins_hz[None, :] - lower) / (centre - lower)
    falling = (upper - bins_hz[None, :]) / (upper - centre)
    return np.maximum(0.0, np.minimum(rising, falling))


def mel_power(x: np.ndarray, sample_rate: int) -> np.ndarray:
    """Mel power spectrogram, (frames, N_MELS); 25 ms Hann frames every 5 ms."""
    win = int(round(WINDOW_S * sample_rate))
    hop = int(round(HOP_S * sample_rate))
    n_fft = 1 << (win - 1).bit_length()
    if len(x) < win:
        return np.zeros((0, N_MELS))
    frames = np.lib.stride_tricks.sliding_window_view(np.asarray(x, dtype=np.float64), win)[::hop]  # (T, win)
    spec = np.abs(np.fft.rfft(frames * np.hanning(win), n=n_fft, axis=-1)) ** 2  # (T, n_fft/2+1)
    return spec @ mel_filterbank(sample_rate, n_fft).T  # (T, N_MELS)


def frame_mel_power(x: np.ndarray, sample_rate: int, hop: int, n_frames: int, window: int = 1024) -> np.ndarray:
    """Mel power on a model's frame grid, (n_frames, N_MELS): frame t is a Hann window of `window` samples
    centred on samples [t * hop, (t + 1) * hop) (the signal is zero-padded at both ends)."""
    n_fft = 1 << (window - 1).bit_length()
    start = hop // 2  # centre of frame t in the padded signal: t * hop + hop / 2 + window / 2 - window / 2
    padded = np.pad(np.asarray(x, dtype=np.float64), (window // 2, window // 2 + n_frames * hop))
    frames = np.lib.stride_tricks.sliding_window_view(padded, window)[start::hop][:n_frames]  # (n_frames, window)
    spec = np.abs(np.fft.rfft(frames * np.hanning(window), n=n_fft, axis=-1)) ** 2
    return spec @ mel_filterbank(sample_rate, n_fft).T


def log_mel_db(power: np.ndarray, floor_db: float) -> np.ndarray:
    return np.maximum(10.0 * np.log10(np.maximum(power, 1e-20)), floor_db)


def mel_cepstrum(log_mel: np.ndarray) -> np.ndarray:
    """(T, M) log-mel in dB -> (T, CEPSTRAL_ORDER) cepstra c1..c24 of the natural-log magnitude (c0 dropped)."""
    ln_magnitude = log_mel * (math.log(10.0) / 20.0)
    c = dct(ln_magnitude, type=2, axis=-1) / (2 * log_mel.shape[-1])
    return c[:, 1:CEPSTRAL_ORDER + 1]


def _features(ref: np.ndarray, deg: np.ndarray, rate: int) -> tuple[np.ndarray, np.ndarray]:
    p_ref, p_deg = mel_power(ref, rate), mel_power(deg, rate)
    floor = 10.0 * math.log10(max(float(p_ref.max(initial=0.0)), 1e-20)) - TOP_DB
    return log_mel_db(p_ref, floor), log_mel_db(p_deg, floor)


def dtw_path(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dynamic time warping of frame sequences a (N, D) and b (M, D) with Euclidean local cost and steps
    (1,1), (1,0), (0,1), path from (0,0) to (N-1,M-1). Returns the path's row and column indices and local costs.

    Row-wise and vectorised: within row i, acc[i,j] = c[i,j] + min(up_j, acc[i,j-1]) with up_j the best of the
    diagonal and vertical predecessors; unrolled, acc[i,j] = S_j + min_{k<=j}(up_k - S_{k-1}) with S the row's prefix
    sums of c, i.e. one cumulative minimum per row. Memory is one byte of back-pointer per cell (N*M bytes).
    """
    n, m = len(a), len(b)
    b_sq = np.einsum("md,md->m", b, b)
    moves = np.empty((n, m), dtype=np.int8)  # 0 diagonal, 1 vertical (from row above), 2 horizontal
    prev = None
    for i in range(n):
        cost = np.sqrt(np.maximum(b_sq + a[i] @ a[i] - 2.0 * (b @ a[i]), 0.0))  # (M,)
        if prev is None:
            up = np.full(m, np.inf)
            up[0] = 0.0
            from_diag = np.zeros(m, dtype=bool)
        else:
            diag = np.concatenate(([np.inf], prev[:-1]))
            from_diag = diag <= prev
            up = np.where(from_diag, diag, prev)
        s = np.cumsum(cost)
        s_before = s - cost
        entry = up - s_before
        best_entry = np.minimum.accumulate(entry)
        row = s + best_entry
        horizontal = entry > best_entry  # the best way in came from an earlier column of this row
        moves[i] = np.where(horizontal, 2, np.where(from_diag, 0, 1))
        prev = row
    rows, cols = [n - 1], [m - 1]
    i, j = n - 1, m - 1
    while i > 0 or j > 0:
        move = moves[i, j]
        if move == 0:
            i, j = i - 1, j - 1
        elif move == 1:
            i -= 1
        else:
            j -= 1
        rows.append(i)
        cols.append(j)
    rows_a, cols_a = np.array(rows[::-1]), np.array(cols[::-1])
    local = np.linalg.norm(a[rows_a] - b[cols_a], axis=-1)
    return rows_a, cols_a, local


def _mcd(c_ref: np.ndarray, c_deg: np.ndarray) -> float:
    t = min(len(c_ref), len(c_deg))  # equal within the alignment tolerance; the extra frames have no partner
    c_ref, c_deg = c_ref[:t], c_deg[:t]
    return float(np.mean(_MCD_SCALE * np.linalg.norm(c_ref - c_deg, axis=-1)))


def _mcd_dtw(c_ref: np.ndarray, c_deg: np.ndarray) -> float:
    _, _, local = dtw_path(c_ref, c_deg)
    return float(np.mean(_MCD_SCALE * local))


def _log_mel_distance(l_ref: np.ndarray, l_deg: np.ndarray) -> float:
    t = min(len(l_ref), len(l_deg))
    l_ref, l_deg = l_ref[:t], l_deg[:t]
    return float(np.mean(np.sqrt(np.mean((l_ref - l_deg) ** 2, axis=-1))))


# ------------------------------------------------------------------------------------------------------ pitch
def pitch_track(x: np.ndarray, rate: int) -> np.ndarray:
    """F0 in Hz every 10 ms, 0 where unvoiced, from Praat's pitch tracker (praat-parselmouth).

    Why Praat: it is the standard pitch tracker of phonetics, maintained for decades; its autocorrelation method
    (Boersma 1993) with path finding over candidates is robust to octave errors and noise; parselmouth ships it as
    wheels with no system dependencies, and it runs in a few milliseconds per second of audio.
    """
    import parselmouth

    sound = parselmouth.Sound(np.asarray(x, dtype=np.float64), sampling_frequency=float(rate))
    pitch = sound.to_pitch(time_step=PITCH_STEP_S, pitch_floor=PITCH_FLOOR_HZ, pitch_ceiling=PITCH_CEILING_HZ)
    return np.nan_to_num(pitch.selected_array["frequency"], nan=0.0)


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


# ------------------------------------------------------------------------------------------------- score_pair
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
        return self._shared("log_mel", lambda: _features(self.reference, self.degraded, self.rate))

    def cepstra(self) -> tuple[np.ndarray, np.ndarray]:
        """(T_ref, 24), (T_deg, 24) mel-cepstra."""
        return self._shared("cepstra", lambda: tuple(mel_cepstrum(x) for x in self.log_mel()))

    def pitch(self) -> dict[str, float | Missing]:
        return self._shared("pitch", lambda: _pitch_metrics(self.ref, self.deg, self.rate))

    def dnsmos(self) -> dict[str, float | Missing]:
        return self._shared("dnsmos", lambda: _dnsmos(self.degraded, self.rate, _dnsmos_module()))


def _guarded(compute: Callable[[Pair], float | Missing], pair: Pair) -> float | Missing:
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


if __name__ == "__main__":
    print(metrics_markdown())
