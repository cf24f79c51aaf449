"""`wg2` habits: --version, progress bars only on a terminal, --json that parses."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from evaluation.progress import LogLines, progress_enabled
from experiments.cli import main

REPO = Path(__file__).resolve().parents[1]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TQDM_DISABLE", "WG2_PROGRESS")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return {**env, **extra}


def test_version_prints_the_installed_version():
    proc = subprocess.run([sys.executable, "-m", "experiments.cli", "--version"], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"wg2 {version('wavegrad2-ablation')}"


def test_progress_rule(monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    monkeypatch.delenv("WG2_PROGRESS", raising=False)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert progress_enabled(True) and not progress_enabled(False)
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert not progress_enabled(True)
    monkeypatch.delenv("TQDM_DISABLE")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert not progress_enabled(True)
    monkeypatch.setenv("WG2_PROGRESS", "1")
    assert progress_enabled(True) and not progress_enabled(False)


def test_log_lines_without_a_bar_every_n_calls_and_at_the_last(monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    monkeypatch.delenv("WG2_PROGRESS", raising=False)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)  # a log file: no bar
    lines = LogLines(seconds=3600, calls=3)
    assert [lines.due() for _ in range(7)] == [False, False, True, False, False, True, False]
    assert lines.due(last=True)  # the last step always gets its line
    assert LogLines(seconds=0.0, calls=100).due()  # or once the seconds have passed
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)  # a bar is drawn: no lines
    assert not LogLines(seconds=0.0, calls=1).due(last=True)


def test_corpus_check_to_a_file_has_no_progress_bar(corpus_dir: Path, tmp_path: Path):
    err = tmp_path / "stderr.txt"
    with open(err, "w") as fh:
        proc = subprocess.run([sys.executable, "-m", "experiments.cli", "corpus", "check", str(corpus_dir)],
                              cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=fh, text=True, timeout=300)
    assert proc.returncode == 0, err.read_text()
    text = err.read_text()
    assert "reading corpus" not in text and "\r" not in text and "utt/s" not in text, text
    assert "usable" in proc.stdout


@pytest.mark.parametrize("quiet", [False, True])
def test_corpus_check_json_parses(corpus_dir: Path, capsys, quiet: bool):
    assert main(["corpus", "check", str(corpus_dir), "--json"] + (["-q"] if quiet else [])) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["usable"] is True and report["usable_utterances"] == report["listed"] > 0
    assert report["problems"] == [] and len(report["utterance_ids"]) == report["usable_utterances"]


def test_bench_json_is_the_only_stdout(monkeypatch, capsys):
    """--json prints the measured rows as one JSON document instead of the table (measuring itself stubbed)."""
    import torch

    import experiments.infer.bench

    row = {"preset": "tiny", "params_M": 1.5, "train_steps_per_s": 3.0}

    def measured(*args, **kwargs):
        return torch.device("cpu"), [row]

    monkeypatch.setattr(experiments.infer.bench, "run_bench", measured)
    assert main(["bench", "--presets", "tiny", "--device", "cpu", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["rows"] == [row]
    assert main(["bench", "--presets", "tiny", "--device", "cpu"]) == 0
    assert "| preset |" in capsys.readouterr().out
