"""train.precision / eval.precision: the setting, its resolution per device, bf16 training and synthesis on CPU."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_model

from components.schedules import resolve_schedule_name
from experiments.config.identity import config_hash
from experiments.config.run import (
    ConfigError,
    EvalConfig,
    RunConfig,
    TrainConfig,
    config_from_dict,
    flatten,
    load_config,
    to_dict,
    validate,
)
from experiments.infer.synth import load_checkpoint, synthesize
from experiments.train.loop import train
from experiments.train.precision import CPU_BF16_FLAGS, cpu_flags, precision_name, resolve_precision, set_threads

TINY_MODEL = tiny_model(zoneout=0.1)  # the ZoneOut path trained too


def tiny_config(data_config, **train_values) -> RunConfig:
    t = TrainConfig(steps=3, batch_size=4, window_frames=16, learning_rate=1e-3, warmup_steps=1,
                    checkpoint_every=3, log_every=1, precision="bf16")
    return RunConfig(data=data_config, model=TINY_MODEL, train=dataclasses.replace(t, **train_values),
                     eval=EvalConfig(precision="bf16"))


def test_bf16_tiny_model_trains_and_samples_finite_audio_on_cpu(data_config, tmp_path):
    result = train(tiny_config(data_config), tmp_path / "run", device="cpu", progress=False)
    assert result.steps == 3 and len(result.history) == 3
    assert all(np.isfinite(h["loss"]) and h["bf16"] == 1.0 for h in result.history)
    state = torch.load(result.checkpoint, weights_only=True)
    assert state["precision"] == "bf16"

    loaded = load_checkpoint(result.checkpoint, device="cpu")
    from experiments.corpus.dataset import load_dataset
    dataset = load_dataset(data_config, progress=False)
    utterances = dataset.val[:2]
    ids = [loaded.vocab.encode(u.phonemes) for u in utterances]
    betas = resolve_schedule_name("manual-6")
    out = synthesize(loaded, ids, betas, [u.durations for u in utterances], batch_size=2)  # eval.precision = bf16
    for u, s in zip(utterances, out):
        assert s.audio.dtype == np.float32 and s.audio.shape == (int(u.durations.sum()) * loaded.hop_length,)
        assert np.isfinite(s.audio).all() and np.abs(s.audio).max() <= 1.0
        assert s.weights.dtype == np.float32
    free = synthesize(loaded, ids[:1], betas, precision="bf16")[0]  # predicted durations
    assert np.isfinite(free.audio).all() and len(free.audio) == int(free.durations.sum()) * loaded.hop_length
    fp32 = synthesize(loaded, ids[:1], betas, [utterances[0].durations], precision="fp32")[0]
    assert fp32.audio.shape == out[0].audio.shape and not np.array_equal(fp32.audio, out[0].audio)


def test_precision_round_trips_through_a_checkpoint(data_config, tmp_path):
    config = tiny_config(data_config, steps=2, checkpoint_every=2)
    result = train(config, tmp_path / "run", device="cpu", progress=False)
    loaded = load_checkpoint(result.checkpoint, device="cpu")
    assert loaded.config.train.precision == "bf16" and loaded.config.eval.precision == "bf16"
    assert loaded.config == config
    assert torch.load(result.checkpoint, weights_only=True)["config_hash"] == config_hash(loaded.config)


@pytest.mark.parametrize("key", ["train.precision", "eval.precision"])
def test_a_bad_precision_is_a_config_error_naming_the_key(key):
    with pytest.raises(ConfigError, match=rf"{key} = 'fp16'; allowed: fp32, bf16, auto"):
        load_config(None, [f"{key}=fp16"])
    for value in ("fp32", "bf16", "auto"):
        assert load_config(None, [f"{key}={value}"])


def test_the_old_bf16_key_maps_to_precision():
    assert config_from_dict({"train": {"bf16": True}}).train.precision == "bf16"
    assert config_from_dict({"train": {"bf16": False}}).train.precision == "fp32"
    assert load_config(None, ["train.bf16=true"]).train.precision == "bf16"
    assert config_from_dict({"train": {"bf16": True, "precision": "bf16"}}).train.precision == "bf16"
    with pytest.raises(ConfigError, match="contradicts"):
        config_from_dict({"train": {"bf16": False, "precision": "bf16"}})
    with pytest.raises(ConfigError, match=r"train\.bf16: expected bool"):
        config_from_dict({"train": {"bf16": "yes"}})


def test_an_old_checkpoint_config_loads_and_keeps_its_hash():
    """A config as stored before train.precision existed: `train.bf16`, no `eval.precision`."""
    for old_value, precision in ((True, "bf16"), (False, "fp32")):
        raw = to_dict(RunConfig())
        # what a checkpoint of then held: the defaults of then (before the paper defaults), no keys added since
        raw["train"].update(ema_decay=0.999, mel_loss_weight=1.0, weight_decay=1e-2, warmup_steps=200, batch_size=16)
        raw["model"]["signal_std"] = 1.0
        raw["eval"]["schedules"] = ["linear-50"]  # manual-6 on a unit-variance signal is refused now (start SNR)
        del raw["train"]["lr_decay"], raw["eval"]["weights"]
        del raw["train"]["precision"], raw["eval"]["precision"]
        del raw["train"]["compile"], raw["eval"]["compile"]  # nor the compile keys (they came later)
        raw["train"]["bf16"] = old_value
        config = config_from_dict(raw, "old checkpoint")
        validate(config)
        assert config.train.precision == precision and config.eval.precision == "fp32"
        # the hash as it was computed then: every key, train.bf16 included
        old_items = {f"{s}.{k}": v for s, section in raw.items() for k, v in section.items()
                     if f"{s}.{k}" not in {"data.cache_dir", "train.num_workers", "eval.metric_workers"}}
        old_hash = hashlib.sha256(json.dumps(old_items, sort_keys=True, default=str).encode()).hexdigest()[:12]
        assert config_hash(config) == old_hash
    # settings the old key could not say are new identities
    auto = load_config(None, ["train.precision=auto"])
    hashes = {config_hash(RunConfig()), config_hash(auto), config_hash(load_config(None, ["eval.precision=bf16"])),
              config_hash(load_config(None, ["train.precision=bf16"]))}
    assert len(hashes) == 4
    assert "train.precision" in flatten(auto)


def test_auto_precision_on_cpu_follows_the_cpuinfo_flags(tmp_path):
    flags = cpu_flags()
    expected = torch.bfloat16 if flags & CPU_BF16_FLAGS else None
    assert resolve_precision("auto", torch.device("cpu")) == expected
    assert resolve_precision("fp32", "cpu") is None and resolve_precision("bf16", "cpu") == torch.bfloat16
    assert precision_name(resolve_precision("auto", "cpu")) == ("bf16" if expected else "fp32")
    fake = tmp_path / "cpuinfo"
    fake.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16\n\nprocessor\t: 1\nflags\t: fpu amx_bf16\n")
    assert cpu_flags(fake) >= {"avx512_bf16", "amx_bf16", "fpu"}
    assert cpu_flags(tmp_path / "missing") == frozenset()
    with pytest.raises(ValueError, match="allowed: fp32, bf16, auto"):
        resolve_precision("fp16", "cpu")


def test_set_threads_respects_omp_num_threads(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert set_threads() == 1 and torch.get_num_threads() == 1
        monkeypatch.delenv("OMP_NUM_THREADS")
        assert set_threads() >= 1
    finally:
        torch.set_num_threads(before)


def test_precision_curves_verdict_compares_bf16_with_the_fp32_seed_spread():
    """benchmarks/precision_curves.py's verdict, on made-up loss histories: bf16 runs that track their fp32 seed
    pass; a bf16 that shifts every loss by more than the seeds differ (a broken autocast) fails."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "precision_curves.py"
    spec = importlib.util.spec_from_file_location("precision_curves", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def runs(shift: float) -> dict:
        curve = {seed: [1.0 + 0.05 * seed + 1.0 / (1 + step) for step in range(40)] for seed in (0, 1, 2)}
        return {"fp32": {s: {"history": [{"loss": v} for v in c]} for s, c in curve.items()},
                "bf16": {s: {"history": [{"loss": v + shift * (1 if s % 2 else -1) + 0.3 * abs(shift)} for v in c]}
                         for s, c in curve.items()}}

    good = module.compare(runs(0.004))
    assert good["paired_within_spread"] and good["spread_width"] == pytest.approx(0.1)
    assert module.level([{"loss": v} for v in (9.0, 9.0, 9.0, 1.0, 2.0, 3.0, 4.0, 5.0)]) == pytest.approx(4.5)
    broken = module.compare(runs(0.2))
    assert not broken["paired_within_spread"] and not broken["bf16_inside_spread"]
