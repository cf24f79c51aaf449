"""Shared fixtures: a small default corpus of real espeak-ng speech and a tiny trained checkpoint, each built once
per test session; the tiny run preset (experiments/configs/tiny.toml) as tests use it."""
from __future__ import annotations

import dataclasses
import os
from typing import Any

# One torch thread per test process: pytest runs two processes on two cores, and more threads than
# cores makes torch's OpenMP kernels spin (a conv measured 8x slower). Subprocesses inherit this.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path

import pytest
import torch

from components.configs import ModelConfig
from experiments.config.run import DataConfig, EvalConfig, RunConfig, TrainConfig, load_config, read_toml

torch.set_num_threads(1)

CORPUS_SENTENCES = 24
TINY_PRESET = Path(__file__).resolve().parents[1] / "experiments" / "configs" / "tiny.toml"


def tiny_model(**changes: Any) -> ModelConfig:
    """The tiny preset's model, with `changes` (what a test is about)."""
    return dataclasses.replace(load_config(TINY_PRESET).model, **changes)


def tiny_tables() -> dict[str, dict[str, Any]]:
    """The tiny preset as TOML tables ({"model": {...}, "train": {...}, "eval": {...}}), for grid and run files."""
    return read_toml(TINY_PRESET)


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
    from experiments.corpus.build import build_corpus

    out = tmp_path_factory.mktemp("corpus") / "harvard"
    return build_corpus(out, limit=CORPUS_SENTENCES, workers=2, progress=False)


@pytest.fixture(scope="session")
def tiny_checkpoint(corpus_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model trained long enough (60 steps, ~12 s) that sampling beats pure noise on log-mel distance;
    its eval settings score 3 utterances inline and keep audio. Shared: tests must not write beside it."""
    from experiments.train.loop import train

    root = tmp_path_factory.mktemp("tiny-model")
    data = DataConfig(root=str(corpus_dir), cache_dir=str(root / "cache"), val_fraction=0.3, test_fraction=0.1)
    config = RunConfig(data=data, model=tiny_model(),
                       train=TrainConfig(steps=60, batch_size=4, window_frames=16, learning_rate=2e-3, warmup_steps=3,
                                         checkpoint_every=60, log_every=20),
                       eval=EvalConfig(limit=3, metric_workers=1, audio_artifacts=1))
    return train(config, root / "run", device="cpu", progress=False).checkpoint


@pytest.fixture
def data_config(corpus_dir: Path, tmp_path: Path) -> DataConfig:
    """A DataConfig on `corpus_dir` with its own cache. The fractions split the 24 IDs 14/9/1; val and test
    utterances holding a phoneme the 14 training ones lack are dropped, which leaves 4 in val."""
    return DataConfig(root=str(corpus_dir), cache_dir=str(tmp_path / "cache"), val_fraction=0.3,
                      test_fraction=0.1)
