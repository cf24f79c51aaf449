"""Objective metrics on real espeak-ng speech from the default corpus: ideals, noise ordering, agreement with the
reference implementations, missing values with reasons, DTW, statistics, the worker pool and the pictures."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pesq
import pytest
import soundfile as sf
from pystoi import stoi
from scipy import stats as sps
from scipy.signal import resample_poly

from evaluation import metrics
from evaluation.metrics import METRICS, Missing, from_jsonable, to_jsonable
from evaluation.plots import alignment_plot, spectrogram_comparison
from evaluation.pool import ScoreJob, score_many
from evaluation.scoring import score_pair
from evaluation.signal_features import dtw_path
from evaluation.stats import mean_difference, summarize

QUALITY = [k for k, info in METRICS.items() if info.extra is None and k != "length_ratio"]


@pytest.fixture(scope="session")
def speech(corpus_dir: Path) -> list[tuple[np.ndarray, int]]:
    wavs = sorted((corpus_dir / "wavs").glob("*.wav"))[:4]
    assert len(wavs) == 4
    return [sf.read(str(w), dtype="float64") for w in wavs]


def add_noise(x: np.ndarray, snr_db: float, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).standard_normal(len(x))
    return x + noise * math.sqrt(np.mean(x ** 2) / np.mean(noise ** 2) / 10 ** (snr_db / 10))


def test_reference_against_itself_gives_each_ideal(speech):
    x, sr = speech[0]
    s = score_pair(x, x, sr)
    assert set(s) == set(metrics.metric_names(aligned=True))
    assert s["pesq_wb"] == pytest.approx(4.644, abs=0.005)
    assert s["pesq_nb"] == pytest.approx(4.549, abs=0.005)
    for key in ("stoi", "estoi", "length_ratio"):
        assert s[key] == pytest.approx(1.0, abs=1e-9)
    for key in ("mel_cd", "mel_cd_dtw", "log_mel_distance", "f0_rmse_cents", "vuv_error"):
        assert s[key] == pytest.approx(0.0, abs=1e-9)


def test_more_noise_is_worse_step_by_step(speech):
    for i, (x, sr) in enumerate(speech[:3]):
        rows = [score_pair(x, add_noise(x, snr, seed=i), sr) for snr in (20, 10, 0)]
        for key in QUALITY:
            values = [r[key] for r in rows]
            assert all(isinstance(v, float) for v in values), (key, values)
            if key == "f0_rmse_cents":
                # measured only on frames voiced in both: noise mostly moves frames out of that set (vuv_error
                # catches it) instead of bending their pitch, so it is worse than clean but not ordered by SNR
                assert min(values) > 0.0
                continue
            ordered = values if METRICS[key].better == "higher" else [-v for v in values]
            assert ordered[0] > ordered[1] > ordered[2], (key, values)


def test_wrapper_matches_direct_pesq_and_pystoi_calls(speech):
    x, sr = speech[1]
    y = add_noise(x, 10, seed=7)
    s = score_pair(x, y, sr)
    assert sr == 22050  # 22050 -> 16000 is up 320 / down 441; -> 8000 is 160 / 441
    ref16, deg16 = resample_poly(x, 320, 441), resample_poly(y, 320, 441)
    ref8, deg8 = resample_poly(x, 160, 441), resample_poly(y, 160, 441)
    assert s["pesq_wb"] == pesq.pesq(16000, ref16, deg16, "wb")
    assert s["pesq_nb"] == pesq.pesq(8000, ref8, deg8, "nb")
    assert s["stoi"] == stoi(x, y, sr, extended=False)
    # ESTOI's matrix products run under a one-thread BLAS limit in our wrapper and not in this direct call;
    # the summation order then differs in the last bit (seen: ...372 vs ...374), so 1e-12 relative, not ==.
    assert s["estoi"] == pytest.approx(stoi(x, y, sr, extended=True), rel=1e-12)


@pytest.mark.parametrize("case, needle", [("silent", "silent"), ("short", "too short: 0.100 s"),
                                          ("nan", "NaN or inf")])
def test_unusable_output_gives_missing_with_reason(speech, case, needle):
    x, sr = speech[0]
    bad = {"silent": np.zeros_like(x), "short": x[: int(0.1 * sr)], "nan": np.where(np.arange(len(x)) == 99, np.nan, x)}
    for aligned in (True, False):
        s = score_pair(x, bad[case], sr, aligned=aligned)
        assert set(s) == set(metrics.metric_names(aligned))
        for key, value in s.items():
            assert isinstance(value, Missing), key
            assert value.reason.startswith("degraded audio") and needle in value.reason
    silent_ref = score_pair(np.zeros_like(x), x, sr)
    assert all(isinstance(v, Missing) and "reference audio is silent" in v.reason for v in silent_ref.values())


def test_pesq_and_stoi_refusals_become_missing():
    # a 10 ms click in one second of near-silence: PESQ-nb finds no utterance and STOI keeps too few frames
    fs = 16000
    rng = np.random.default_rng(1)
    ref = 1e-5 * rng.standard_normal(fs)
    ref[8000:8160] += 0.5 * rng.standard_normal(160)
    deg = ref + 0.001 * rng.standard_normal(fs)
    with pytest.raises(pesq.NoUtterancesError):
        pesq.pesq(8000, resample_poly(ref, 1, 2), resample_poly(deg, 1, 2), "nb")
    s = score_pair(ref, deg, fs)
    assert s["pesq_nb"] == Missing("NoUtterancesError: No utterances detected")
    assert isinstance(s["stoi"], Missing) and "fewer than 30 non-silent STFT frames" in s["stoi"].reason
    assert isinstance(s["mel_cd"], float)  # one metric's refusal leaves the others alone
    # a reference below 16 kHz cannot give wide-band PESQ
    low = score_pair(resample_poly(ref, 1, 2), resample_poly(deg, 1, 2), 8000)
    assert low["pesq_wb"] == Missing("reference rate 8000 Hz is below the 16000 Hz that PESQ-wb needs")


def test_lengths_and_time_warping(speech):
    x, sr = speech[2]
    stretched = resample_poly(x, 11, 10)  # 10% slower: same speech, other length
    s = score_pair(x, stretched, sr, aligned=False)
    assert set(s) == {"mel_cd_dtw", "length_ratio"}
    assert s["length_ratio"] == pytest.approx(1.1, abs=1e-3)
    forced = score_pair(x, stretched, sr, aligned=True)
    assert isinstance(forced["pesq_wb"], Missing) and forced["pesq_wb"].reason.startswith("lengths differ")
    assert forced["mel_cd_dtw"] == s["mel_cd_dtw"]
    # DTW finds the stretch: far closer than comparing frames index by index on the common part
    naive = score_pair(x, stretched[: len(x)], sr)["mel_cd"]
    assert s["mel_cd_dtw"] < 0.5 * naive


def test_dtw_matches_a_plain_dynamic_programme():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n, m = rng.integers(1, 25, size=2)
        a, b = rng.standard_normal((n, 3)), rng.standard_normal((m, 3))
        cost = np.linalg.norm(a[:, None] - b[None], axis=-1)
        acc = np.full((n + 1, m + 1), np.inf)
        acc[0, 0] = 0.0
        for i in range(1, n + 1):
            for j in range(1, m + 1):
                acc[i, j] = cost[i - 1, j - 1] + min(acc[i - 1, j - 1], acc[i - 1, j], acc[i, j - 1])
        rows, cols, local = dtw_path(a, b)
        assert (rows[0], cols[0], rows[-1], cols[-1]) == (0, 0, n - 1, m - 1)
        steps = np.stack([np.diff(rows), np.diff(cols)], axis=1)
        assert all(tuple(s) in {(1, 1), (1, 0), (0, 1)} for s in steps)
        assert local.sum() == pytest.approx(acc[n, m])


def test_json_round_trip_and_availability():
    scores = {"pesq_wb": 3.5, "stoi": Missing("degraded audio is silent")}
    assert to_jsonable(scores) == {"pesq_wb": 3.5, "stoi": {"missing": "degraded audio is silent"}}
    assert from_jsonable(to_jsonable(scores)) == scores
    available = metrics.available_metrics()
    assert set(available) == set(METRICS)
    has_speechmos = metrics.dnsmos_module() is not None
    assert available["dnsmos_ovrl"] == has_speechmos and available["pesq_wb"]
    assert ("dnsmos_ovrl" in metrics.metric_names()) == has_speechmos


def test_summary_interval_and_missing_counts():
    values = [1.0, 2.0, 4.0, Missing("silent"), Missing("silent"), Missing("too short")]
    s = summarize(values)
    low, high = sps.t.interval(0.95, 2, loc=np.mean([1, 2, 4]), scale=sps.sem([1, 2, 4]))
    assert (s["n"], s["n_missing"]) == (3, 3)
    assert s["missing_reasons"] == {"silent": 2, "too short": 1}
    assert s["mean"] == pytest.approx(7 / 3) and s["std"] == pytest.approx(np.std([1, 2, 4], ddof=1))
    assert (s["ci_low"], s["ci_high"]) == (pytest.approx(low), pytest.approx(high))
    one = summarize([3.0, Missing("x")])
    assert one["mean"] == 3.0 and one["ci_low"] is None and one["std"] is None
    assert summarize([Missing("x")])["mean"] is None


def test_mean_difference_is_welch():
    a, b = [1.0, 2.0, 3.0, 5.0], [0.5, 0.7, 0.2, Missing("x"), 0.9, 1.1]
    d = mean_difference(a, b)
    b_present = [0.5, 0.7, 0.2, 0.9, 1.1]
    ref = sps.ttest_ind(a, b_present, equal_var=False).confidence_interval(0.95)
    assert d["diff"] == pytest.approx(np.mean(a) - np.mean(b_present))
    assert (d["ci_low"], d["ci_high"]) == (pytest.approx(ref.low), pytest.approx(ref.high))
    assert (d["n_a"], d["n_b"]) == (4, 5)
    assert mean_difference([1.0], [2.0, 3.0])["ci_low"] is None


def test_pool_gives_the_same_numbers_as_inline(speech):
    jobs = [ScoreJob("a", speech[0][0], add_noise(speech[0][0], 10, 0), 22050),
            ScoreJob("b", speech[1][0], add_noise(speech[1][0], 0, 1), 22050, tag="linear-50"),
            ScoreJob("c", speech[2][0], resample_poly(speech[2][0], 9, 10), 22050, aligned=False),
            ScoreJob("d", speech[3][0], np.zeros(100), 22050)]
    inline = score_many(jobs, workers=1, progress=False)
    pooled = score_many(jobs, workers=2, progress=False)
    # equal up to the last bits: OpenBLAS picks kernels by array alignment, so ESTOI's matrix products can
    # differ in the 16th digit between any two runs, inline or not
    assert [set(p) for p in pooled] == [set(i) for i in inline]
    for p, i in zip(pooled, inline):
        assert all(p[k] == i[k] if isinstance(i[k], Missing) else p[k] == pytest.approx(i[k], rel=1e-12) for k in i)
    assert set(inline[2]) == {"mel_cd_dtw", "length_ratio"}
    assert all(isinstance(v, Missing) for v in inline[3].values())


def test_pictures_are_written_atomically(speech, tmp_path):
    x, sr = speech[0]
    spec = spectrogram_comparison(tmp_path / "spec.png", [("clean", x, x), ("noisy", x, add_noise(x, 0, 3))], sr)
    align = alignment_plot(tmp_path / "sub" / "align.png", [3, 5, 2, 8], [4, 4, 3, 6], ["h", "@", "l", "oU"])
    for path in (spec, align):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["align.png", "spec.png"]
    with pytest.raises(ValueError, match="one duration per phoneme"):
        alignment_plot(tmp_path / "bad.png", [1, 2], [1], ["a", "b"])
