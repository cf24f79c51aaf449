"""Latent space end to end at tiny size: stage-one autoencoder (cached), latent diffusion, synthesis, scoring."""
from __future__ import annotations

import dataclasses

import pytest
from conftest import tiny_model

from components.configs import AutoencoderConfig
from experiments.config.run import ConfigError, EvalConfig, RunConfig, TrainConfig, load_config, validate
from experiments.infer.evaluate import evaluate
from experiments.infer.synth import load_checkpoint
from experiments.train.loop import train


@pytest.fixture
def latent_config(data_config, tmp_path, monkeypatch) -> RunConfig:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    return RunConfig(
        data=dataclasses.replace(data_config, hop_length=256),
        model=tiny_model(space="latent", upsample_factors=[4, 4]),
        autoencoder=AutoencoderConfig(kind="continuous", stride=16, latent_channels=4, hidden_channels=8, steps=20,
                                      batch_size=4, segment_samples=4096),
        train=TrainConfig(steps=4, batch_size=4, window_frames=16, warmup_steps=1, checkpoint_every=4, log_every=1),
        eval=EvalConfig(schedules=["manual-6"], limit=2, audio_artifacts=1, metric_workers=1))


def test_latent_cell_trains_synthesizes_and_is_scored_and_the_autoencoder_cache_is_hit(latent_config, tmp_path,
                                                                                          monkeypatch):
    first = train(latent_config, tmp_path / "a", device="cpu", progress=False)
    assert first.autoencoder_run["cache_hit"] is False
    recon = first.autoencoder_run["recon"]
    assert {"recon/pesq_wb_n_missing", "recon/stoi_n_missing"} <= set(recon)
    assert first.autoencoder_run["mlflow_run_id"], "stage one is its own MLflow run"

    second_config = dataclasses.replace(latent_config, model=dataclasses.replace(latent_config.model, upsampler="repeat"))
    second = train(second_config, tmp_path / "b", device="cpu", progress=False)
    assert second.autoencoder_run["cache_hit"] is True, "the second cell finds stage one by hash"
    assert second.autoencoder_run["key"] == first.autoencoder_run["key"]
    assert second.autoencoder_run["mlflow_run_id"] == first.autoencoder_run["mlflow_run_id"]
    # `wg2 train --no-track` writes nothing to MLflow, stage one included
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/untracked.db")
    third = train(second_config, tmp_path / "c", device="cpu", progress=False, record_autoencoder=False)
    assert third.autoencoder_run["mlflow_run_id"] is None and not (tmp_path / "untracked.db").exists()

    loaded = load_checkpoint(first.checkpoint, "cpu")
    assert loaded.autoencoder is not None and loaded.model.signal_channels == 4
    result = evaluate(loaded, latent_config.eval, tmp_path / "eval", progress=False)
    assert result.metrics["manual-6/rtf"] > 0
    # every aligned metric is either a number or counted as missing: nothing silently dropped
    for metric in ("pesq_wb", "stoi", "mel_cd"):
        assert f"manual-6/{metric}" in result.metrics or result.metrics[f"manual-6/{metric}_n_missing"] == 2
    assert (tmp_path / "eval" / "summary.json").exists()


def test_latent_hop_arithmetic_is_checked(latent_config):
    validate(latent_config)
    for stride, factors in ((8, [4, 4, 2]), (16, [4, 4]), (32, [8])):
        validate(dataclasses.replace(latent_config, autoencoder=dataclasses.replace(latent_config.autoencoder, stride=stride),
                                     model=dataclasses.replace(latent_config.model, upsample_factors=factors)))
    with pytest.raises(ConfigError, match="256 / 16 = 16"):
        validate(dataclasses.replace(latent_config, model=dataclasses.replace(latent_config.model,
                                                                              upsample_factors=[4, 4, 2])))
    with pytest.raises(ConfigError, match="not divisible"):
        load_config(None, ["model.space=latent", "autoencoder.stride=16"])  # default hop 300
