"""`wg2 score` on real corpus speech: files at different rates, JSON, unaligned pairs, stereo and bad paths."""
from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from scipy.signal import resample_poly

from evaluation.metrics import METRICS, metric_names
from experiments.cli import main

REPO = Path(__file__).resolve().parents[1]


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def pair(corpus_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The reference at 22050 Hz and a noisy copy resampled to 16000 Hz."""
    reference = sorted((corpus_dir / "wavs").glob("*.wav"))[0]
    x, sr = sf.read(str(reference), dtype="float64")
    assert sr == 22050
    noisy = x + 0.003 * np.random.default_rng(0).standard_normal(len(x))
    degraded = tmp_path_factory.mktemp("score") / "degraded16k.wav"
    sf.write(str(degraded), resample_poly(noisy, 320, 441), 16000, subtype="FLOAT")
    return reference, degraded


def test_score_table_at_different_rates(pair):
    code, out, _ = run_cli(["score", str(pair[0]), str(pair[1])])
    assert code == 0
    assert "aligned: yes" in out and "resampled to 22050 Hz" in out
    for name in metric_names(aligned=True):
        line = next(row for row in out.splitlines() if row.startswith(name + " "))
        assert "missing" not in line
        assert METRICS[name].better in line


def test_score_json_parses_with_every_metric(pair):
    code, out, _ = run_cli(["score", str(pair[0]), str(pair[1]), "--json"])
    assert code == 0
    data = json.loads(out)
    assert (data["reference_rate"], data["degraded_rate"], data["aligned"]) == (22050, 16000, True)
    assert set(data["scores"]) == set(metric_names(aligned=True))
    assert all(isinstance(v, float) for v in data["scores"].values())
    assert 1.0 < data["scores"]["pesq_wb"] < 4.64 and 0.5 < data["scores"]["stoi"] < 1.0


def test_score_as_a_subprocess_exits_zero(pair):
    proc = subprocess.run([sys.executable, "-m", "experiments.cli", "score", str(pair[0]), str(pair[1]), "--json"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["aligned"] is True


def test_score_unaligned_and_stereo(pair, tmp_path):
    x, sr = sf.read(str(pair[0]), dtype="float64")
    half = tmp_path / "half.wav"
    sf.write(str(half), x[: len(x) // 2], sr)
    code, out, _ = run_cli(["score", str(pair[0]), str(half), "--json"])
    data = json.loads(out)
    assert code == 0 and data["aligned"] is False
    assert set(data["scores"]) == {"mel_cd_dtw", "length_ratio"}
    assert data["scores"]["length_ratio"] == pytest.approx(0.5, abs=1e-3)
    stereo = tmp_path / "stereo.wav"
    sf.write(str(stereo), np.stack([x, x], axis=1), sr, subtype="FLOAT")
    code, out, _ = run_cli(["score", str(pair[0]), str(stereo), "--json"])
    assert json.loads(out)["scores"]["pesq_wb"] == pytest.approx(4.644, abs=0.005)


def test_score_bad_paths_exit_2_naming_the_file(pair, tmp_path):
    missing = tmp_path / "nope.wav"
    code, _, err = run_cli(["score", str(pair[0]), str(missing)])
    assert code == 2 and str(missing) in err and "no such audio file" in err
    junk = tmp_path / "junk.wav"
    junk.write_text("not audio")
    code, _, err = run_cli(["score", str(junk), str(pair[1])])
    assert code == 2 and str(junk) in err and "cannot read audio" in err
