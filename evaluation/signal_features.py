"""Signal features the metrics share, on NumPy arrays (rate-independent, stated in seconds):
- frames: 25 ms Hann window, 5 ms hop, FFT size the next power of two, no centring (last partial frame dropped);
- 80 triangular mel bands (HTK mel scale, 2595 log10(1 + f/700)) from 0 Hz to half the reference rate, applied
  to the power spectrum; log in dB with a floor 80 dB below the reference's loudest mel bin (both signals share
  that floor, so digital silence in the reference does not dominate the distances);
- mel-cepstra of order 24: DCT-II of the natural-log mel *magnitude*, scaled as in the cepstrum definition
  ln|S_m| = c0 + 2 sum_d c_d cos(pi d (m + 1/2) / M), i.e. c = DCT-II(ln|S|) / (2M). c0 (energy) is excluded;
  mel_cd = 10/ln10 * sqrt(2 * sum_{d=1..24} (c_d - c'_d)^2) per frame, averaged over frames (Kubichek's convention).
These are not SPTK mel-cepstra (no all-pass frequency warping of an mcep analysis), so mel_cd is a mel-cepstral
distance on a log-mel DCT, not comparable to MCD figures computed from SPTK/pysptk mcep.
Also here: dynamic time warping, Praat pitch tracks and polyphase resampling.
"""
from __future__ import annotations

import math

import numpy as np
from scipy.fft import dct
from scipy.signal import resample_poly

WINDOW_S = 0.025
HOP_S = 0.005
N_MELS = 80
CEPSTRAL_ORDER = 24
TOP_DB = 80.0
PITCH_STEP_S = 0.01
PITCH_FLOOR_HZ = 75.0
PITCH_CEILING_HZ = 600.0
_MCD_SCALE = 10.0 / math.log(10.0) * math.sqrt(2.0)


def resample(x: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Polyphase resampling (anti-aliased), never sample dropping; a no-op at equal rates."""
    if from_rate == to_rate:
        return np.asarray(x, dtype=np.float64)
    g = math.gcd(int(from_rate), int(to_rate))
    return resample_poly(np.asarray(x, dtype=np.float64), to_rate // g, from_rate // g)


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


def log_mel_features(ref: np.ndarray, deg: np.ndarray, rate: int) -> tuple[np.ndarray, np.ndarray]:
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


def mel_cd(c_ref: np.ndarray, c_deg: np.ndarray) -> float:
    t = min(len(c_ref), len(c_deg))  # equal within the alignment tolerance; the extra frames have no partner
    c_ref, c_deg = c_ref[:t], c_deg[:t]
    return float(np.mean(_MCD_SCALE * np.linalg.norm(c_ref - c_deg, axis=-1)))


def mel_cd_dtw(c_ref: np.ndarray, c_deg: np.ndarray) -> float:
    _, _, local = dtw_path(c_ref, c_deg)
    return float(np.mean(_MCD_SCALE * local))


def log_mel_distance(l_ref: np.ndarray, l_deg: np.ndarray) -> float:
    t = min(len(l_ref), len(l_deg))
    l_ref, l_deg = l_ref[:t], l_deg[:t]
    return float(np.mean(np.sqrt(np.mean((l_ref - l_deg) ** 2, axis=-1))))


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
