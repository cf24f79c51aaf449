"""benchmarks/gpu.sh and benchmarks/gpu_wheels.sh on the CPU side: syntax, arguments, and --dry-run."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GPU, WHEELS = ROOT / "benchmarks" / "gpu.sh", ROOT / "benchmarks" / "gpu_wheels.sh"
pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", *args], capture_output=True, text=True, timeout=60, cwd=ROOT)


@pytest.mark.parametrize("script", [GPU, WHEELS], ids=["gpu", "gpu_wheels"])
def test_scripts_parse(script):
    assert run("-n", str(script)).returncode == 0


@pytest.mark.parametrize("args, message", [
    (["--wheels", "w"], "--out DIR is required"),
    (["--out", "o"], "--wheels DIR is required"),
    (["--wheels", "w", "--out"], "--out needs a folder"),
    (["--wheels", "w", "--out", "o", "--bogus"], "unknown argument '--bogus'"),
    (["--wheels", "w", "--out", "o", "--steps", "0", "--dry-run"], "'0': expected a positive integer"),
])
def test_gpu_script_refuses_bad_arguments_with_a_message(args, message, tmp_path):
    result = run(str(GPU), *[str(tmp_path / a) if a in ("w", "o") else a for a in args])
    assert result.returncode != 0 and message in result.stderr and "usage" not in result.stdout
    assert not (tmp_path / "o").exists()


def test_gpu_script_refuses_a_missing_wheels_folder(tmp_path):
    result = run(str(GPU), "--wheels", str(tmp_path / "none"), "--out", str(tmp_path / "o"))
    assert result.returncode == 2 and "no such folder" in result.stderr


def test_gpu_dry_run_prints_every_stage_in_order_and_runs_nothing(tmp_path):
    out, wheels = tmp_path / "out", tmp_path / "wheels"
    result = run(str(GPU), "--wheels", str(wheels), "--out", str(out), "--dry-run", "--python", "py3",
                 "--steps", "200", "--trials", "5")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    stages = [line.split("]")[0].lstrip("[") for line in lines]
    assert stages == ["install", "install_pesq", "versions", "corpus", "bench", "train", "search", "compile_train"]
    by = dict(zip(stages, lines))
    assert f"--find-links {wheels}" in by["install"] and "mlflow optuna pystoi soundfile espeakng-loader" in by["install"]
    assert "--no-build-isolation --no-binary pesq pesq" in by["install_pesq"]
    assert f"corpus build --out {out}/corpus/harvard" in by["corpus"]
    assert "bench --presets base,large --precision bf16 --device cuda" in by["bench"]
    assert "train experiments/configs/base.toml" in by["train"] and "train.steps=200" in by["train"]
    assert f"data.root={out}/corpus/harvard" in by["train"]
    assert f"search {out}/train/checkpoint.pt" in by["search"] and "--trials 5" in by["search"]
    assert "train.compile=true" in by["compile_train"]
    assert all(line.split()[1] == "timeout" for line in lines)
    assert all(line.startswith(f"[{s}] timeout") and "py3 " in line for s, line in zip(stages, lines))
    # every stage under a timeout; even when each one uses its whole limit, all fit the 8-minute budget
    limits = {s: int(line.split()[2].rstrip("s")) for s, line in zip(stages, lines)}
    serial = sum(v for s, v in limits.items() if s != "corpus")  # corpus runs beside bench
    assert serial <= 480 and limits["compile_train"] >= 30 and limits["corpus"] <= 480 - limits["install"]
    assert not out.exists() and not wheels.exists()


def test_wheels_script_dry_run_downloads_binaries_and_the_pesq_sdist(tmp_path):
    result = run(str(WHEELS), "--out", str(tmp_path / "w"), "--python-version", "3.12", "--dry-run")
    assert result.returncode == 0, result.stderr
    binary, sdist = result.stdout.strip().splitlines()
    assert "pip download" in binary and "--only-binary=:all:" in binary and "--python-version 3.12" in binary
    for name in ("mlflow", "optuna", "pystoi", "soundfile", "espeakng-loader", "Cython"):
        assert f" {name}" in binary
    assert "--no-binary pesq" in sdist and sdist.endswith(" pesq")
    assert not (tmp_path / "w").exists()
    missing = run(str(WHEELS))
    assert missing.returncode != 0 and "--out DIR is required" in missing.stderr
