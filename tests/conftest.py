"""Shared fixtures: a small default corpus of real espeak-ng speech, built once per test session."""
from __future__ import annotations

import os

# One torch thread per test process: pytest runs two processes on two cores, and more threads than
# cores makes torch's OpenMP kernels spin (a conv measured 8x slower). Subprocesses inherit this.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path

import pytest
import torch

from experiments.config import DataConfig

torch.set_num_threads(1)

CORPUS_SENTENCES = 24


@pytest.fixture(scope="session", autouse=True)
def private_mlflow_store(tmp_path_factory: pytest.TempPathFactory):
    """`wg2 train` and `wg2 eval` track by default: tests that do not choose a store get a private SQLite one
    (never ./mlflow.db in the repository). Tests that need a store of their own set MLFLOW_TRACKING_URI."""
    with pytest.MonkeyPatch.context() as patch:
        if not os.environ.get("MLFLOW_TRACKING_URI"):
            patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}")
        yield


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default corpus (`wg2 corpus build --limit 24`): metadata.csv, wavs/, alignments/."""
    from experiments.corpus_build import build_corpus

    out = tmp_path_factory.mktemp("corpus") / "harvard"
    return build_corpus(out, limit=CORPUS_SENTENCES, workers=2, progress=False)


@pytest.fixture
def data_config(corpus_dir: Path, tmp_path: Path) -> DataConfig:
    """A DataConfig on `corpus_dir` with its own cache. The fractions split the 24 IDs 14/9/1; val and test
    utterances holding a phoneme the 14 training ones lack are dropped, which leaves 4 in val."""
    return DataConfig(root=str(corpus_dir), cache_dir=str(tmp_path / "cache"), val_fraction=0.3,
                      test_fraction=0.1)
