"""train.compile / eval.compile: torch.compile of the decoder for training and synthesis."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_model

from components.schedules import resolve_schedule_name
from experiments.config.identity import config_hash
from experiments.config.run import EvalConfig, InputError, RunConfig, TrainConfig, flatten, load_config
from experiments.infer.synth import load_checkpoint, synthesize
from experiments.train import precision
from experiments.train.loop import train

TINY = tiny_model(encoder_dropout=0.0)


def test_compile_keys_default_off_are_params_and_keep_old_hashes():
    config = load_config(None)
    assert config.train.compile is False and config.eval.compile is False
    assert flatten(config)["train.compile"] is False and "eval.compile" in flatten(config)  # logged as MLflow params
    on = load_config(None, ["train.compile=true", "eval.compile=true"])
    assert on.train.compile and on.eval.compile
    assert config_hash(on) != config_hash(config)  # compiled runs are runs of their own ...
    # compile = false hashes as before the keys existed: tests/test_precision.py, old checkpoint config
    assert config_hash(load_config(None, ["train.compile=true"])) != config_hash(load_config(None, ["eval.compile=true"]))


def test_compile_that_does_not_work_here_is_an_input_error_naming_the_key(monkeypatch):
    monkeypatch.setattr(precision, "compile_unavailable", lambda device_type: "InvalidCxxCompiler: no C compiler")
    model = torch.nn.Module()
    model.decoder = torch.nn.Conv1d(1, 1, 3)
    with pytest.raises(InputError, match=r"train.compile = true.*no C compiler.*train.compile=false"):
        precision.compile_decoder(model, "cpu", None, "train.compile")
    assert model.decoder._compiled_call_impl is None


@pytest.mark.slow
def test_compiled_tiny_model_trains_and_samples_finite_audio(data_config, tmp_path):
    why = precision.compile_unavailable("cpu")
    if why is not None:
        pytest.skip(f"torch.compile does not work on this platform: {why}")
    t = TrainConfig(steps=2, batch_size=4, window_frames=16, warmup_steps=1, checkpoint_every=2, log_every=1,
                    gain_utterances=0, compile=True)
    config = RunConfig(data=data_config, model=TINY, train=t, eval=EvalConfig(compile=True))
    result = train(config, tmp_path / "run", device="cpu", progress=False)
    assert result.steps == 2 and all(np.isfinite(h["loss"]) for h in result.history)
    state = torch.load(result.checkpoint, weights_only=True)
    assert not any("_orig_mod" in k for k in state["model"]), "compiled in place: checkpoint keys unchanged"

    loaded = load_checkpoint(result.checkpoint, device="cpu")
    from experiments.corpus.dataset import load_dataset
    utterances = load_dataset(data_config, progress=False).val[:2]
    ids = [loaded.vocab.encode(u.phonemes) for u in utterances]
    out = synthesize(loaded, ids, resolve_schedule_name("manual-6"), [u.durations for u in utterances])
    assert loaded.model.decoder._compiled_call_impl is not None  # eval.compile = true in the checkpoint
    for u, s in zip(utterances, out):  # two lengths: one dynamic-shape graph
        assert s.audio.shape == (int(u.durations.sum()) * loaded.hop_length,) and np.isfinite(s.audio).all()


def test_eager_runs_a_compiled_module_uncompiled_and_restores_it():
    """training's conditioning-gain probe runs the decoder eagerly (other shapes and grad mode than training)"""
    model = torch.nn.Module()
    model.decoder = torch.nn.Conv1d(1, 1, 3, padding=1)
    if precision.compile_unavailable("cpu") is not None:
        pytest.skip(f"torch.compile does not work on this platform: {precision.compile_unavailable('cpu')}")
    assert precision.compile_decoder(model, "cpu", None, "train.compile")
    compiled = model.decoder._compiled_call_impl
    x = torch.randn(1, 1, 16)
    with precision.eager(model.decoder) as decoder:
        assert decoder._compiled_call_impl is None
        torch.testing.assert_close(decoder(x), decoder.forward(x))
    assert model.decoder._compiled_call_impl is compiled
    assert not precision.compile_decoder(model, "cpu", None, "train.compile")  # idempotent
