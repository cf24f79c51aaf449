"""Training, checkpoints, resume and synthesis on real corpus audio at tiny size."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import tiny_model

from components.schedules import resolve_schedule_name
from experiments.cli import main
from experiments.config.run import ConfigError, RunConfig, TrainConfig, load_config, replace
from experiments.corpus.dataset import load_dataset
from experiments.infer.synth import load_checkpoint, synthesize
from experiments.train.batches import batch_indices
from experiments.train.loop import train

TINY_MODEL = tiny_model(zoneout=0.1)  # the ZoneOut path trained too


def tiny_config(data_config, **train) -> RunConfig:
    t = TrainConfig(steps=6, batch_size=4, window_frames=16, learning_rate=1e-3, warmup_steps=2,
                    checkpoint_every=3, log_every=1)
    return RunConfig(data=data_config, model=TINY_MODEL, train=dataclasses.replace(t, **train))


def test_resume_reaches_the_same_loss_as_an_uninterrupted_run(data_config, tmp_path):
    config = tiny_config(data_config)
    straight = train(config, tmp_path / "straight", device="cpu", progress=False)
    # an interrupted run: stop after the first checkpoint (3 steps), then resume to 6
    first = train(replace(config, train__steps=3), tmp_path / "cut", device="cpu", progress=False)
    state = torch.load(first.checkpoint, weights_only=True)
    state["config"]["train"]["steps"] = config.train.steps  # the same run, cut short
    from experiments.config.identity import config_hash
    state["config_hash"] = config_hash(config)
    torch.save(state, first.checkpoint)
    resumed = train(config, tmp_path / "cut", device="cpu", resume=True, progress=False)
    assert resumed.steps == straight.steps == 6
    assert resumed.history[-1]["loss"] == pytest.approx(straight.history[-1]["loss"], rel=1e-5)
    assert [h["step"] for h in resumed.history] == [h["step"] for h in straight.history]


def test_existing_checkpoint_without_resume_is_an_error(data_config, tmp_path):
    config = tiny_config(data_config, steps=3)
    train(config, tmp_path / "run", device="cpu", progress=False)
    with pytest.raises(ConfigError.__mro__[1], match="another training config"):
        train(replace(config, train__learning_rate=5e-3), tmp_path / "run", device="cpu", progress=False)
    # eval settings never change the weights: the checkpoint is this config's model (what lets an eval-only grid
    # axis, or `wg2 eval` with other settings, reuse a training)
    reused = train(replace(config, eval__limit=2, eval__schedules=("linear-50",)), tmp_path / "run", device="cpu",
                   progress=False)
    assert reused.steps == 3


def test_window_longer_than_utterances_fails_before_training(data_config, tmp_path):
    with pytest.raises(ValueError, match="window_frames = 100000"):
        train(tiny_config(data_config, window_frames=100000), tmp_path / "run", device="cpu", progress=False)
    assert not (tmp_path / "run").exists()


def test_batches_are_a_function_of_seed_and_step():
    assert batch_indices(10, 4, 0, 5).tolist() == batch_indices(10, 4, 0, 5).tolist()
    epoch0 = np.concatenate([batch_indices(10, 5, 0, s) for s in range(2)])
    assert sorted(epoch0.tolist()) == list(range(10)), "one epoch visits every item once"


def test_cli_train_then_synth_corpus_utterance_and_new_sentence(data_config, tmp_path, capsys):
    cfg_file = tmp_path / "run.toml"
    cfg_file.write_text(f"""
[data]
root = "{data_config.root}"
cache_dir = "{data_config.cache_dir}"
val_fraction = {data_config.val_fraction}
test_fraction = {data_config.test_fraction}
[model]
encoder_channels = 32
duration_channels = 16
decoder_preset = "tiny"
[train]
steps = 30
batch_size = 4
window_frames = 16
learning_rate = 2e-3
warmup_steps = 3
log_every = 5
checkpoint_every = 30
""")
    out = tmp_path / "run"
    assert main(["train", str(cfg_file), "--device", "cpu", "--out", str(out)]) == 0
    history = torch.load(out / "checkpoint.pt", weights_only=True)["history"]
    assert np.mean([h["loss"] for h in history[-2:]]) < np.mean([h["loss"] for h in history[:2]]), "loss falls"

    dataset = load_dataset(data_config, progress=False)
    utt = dataset.train[0]
    wav = tmp_path / "utt.wav"
    assert main(["synth", str(out / "checkpoint.pt"), "--utterance", utt.id, "-o", str(wav), "--device", "cpu"]) == 0
    audio, rate = sf.read(wav)
    assert rate == dataset.sample_rate and len(audio) == utt.durations.sum() * dataset.hop_length

    wav = tmp_path / "new.wav"
    assert main(["synth", str(out / "checkpoint.pt"), "The birch canoe slid on the smooth planks.", "-o", str(wav),
                 "--schedule", "linear-50", "--device", "cpu"]) == 0
    audio, _ = sf.read(wav)
    assert len(audio) > 0 and len(audio) % dataset.hop_length == 0
    assert "wrote" in capsys.readouterr().err

    # an unknown phoneme is a clear error naming it; exit code 2
    assert main(["synth", str(out / "checkpoint.pt"), "--phonemes", "ZZ9", "-o", str(tmp_path / "x.wav")]) == 2
    assert "ZZ9" in capsys.readouterr().err


def test_batched_synthesis_with_true_durations_has_exact_lengths(data_config, tmp_path):
    result = train(tiny_config(data_config, steps=2), tmp_path / "run", device="cpu", progress=False)
    loaded = load_checkpoint(result.checkpoint, "cpu")
    dataset = load_dataset(data_config, progress=False)
    utts = dataset.train[:3]
    outs = synthesize(loaded, [dataset.vocab.encode(u.phonemes) for u in utts], resolve_schedule_name("manual-6"),
                      [u.durations for u in utts], batch_size=3)
    assert [len(o.audio) for o in outs] == [len(u.audio) for u in utts]


def test_config_errors_name_key_and_allowed_values(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[model]\nupsampler = 'linear'\n")
    with pytest.raises(ConfigError, match=r"model.upsampler = 'linear' is unknown; allowed: gaussian, repeat"):
        load_config(bad)
    bad.write_text("[train]\nstepz = 3\n")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) stepz; allowed: steps"):
        load_config(bad)
    bad.write_text("[train]\nsteps = 'many'\n")
    with pytest.raises(ConfigError, match=r"train.steps: expected int, got 'many'"):
        load_config(bad)
    with pytest.raises(ConfigError, match="hop mismatch"):
        load_config(None, ["data.hop_length=256"])
    assert load_config(None, ["model.upsampler=repeat", "train.steps=5"]).train.steps == 5
    assert main(["train", str(bad)]) == 2


def test_shipped_run_configs_load():
    root = Path(__file__).resolve().parents[1] / "experiments" / "configs"
    paths = sorted(root.glob("*.toml"))
    assert {"base.toml", "quickstart.toml", "tiny.toml"} <= {p.name for p in paths}, f"no run configs in {root}"
    for path in paths:
        load_config(path)
