"""`wg2 bench` times the step `wg2 train` runs (experiments/train/step.py), with the config's loss terms, weight
averaging and gradient clipping, not a copy of its own."""
from __future__ import annotations

import dataclasses

import torch

from components.configs import ModelConfig
from components.diffusion import Diffusion
from components.durations import DurationPredictor
from components.model import WaveGrad2
from experiments.config.run import TrainConfig
from experiments.config.schedules import resolve_schedule
from experiments.infer.bench import PRESET_MODELS, VOCAB, bench_training
from experiments.train import step as step_module


def _tiny_model() -> WaveGrad2:
    torch.manual_seed(0)
    return WaveGrad2(dataclasses.replace(ModelConfig(decoder_preset="tiny"), **PRESET_MODELS["tiny"]), VOCAB)


def _timed_steps(monkeypatch, train: TrainConfig) -> list[dict]:
    """What each training step timed by bench_training ran with."""
    seen: list[dict] = []
    real = step_module.TrainingStep.__call__

    def spy(self, batch, step):
        losses = real(self, batch, step)
        seen.append({"mel_head": self.mel_head is not None, "ema": self.ema is not None, "clip": self.t.grad_clip,
                     "mel_loss": losses.mel_loss.item(), "duration_loss": losses.duration_loss.item()})
        return losses

    monkeypatch.setattr(step_module.TrainingStep, "__call__", spy)
    bench_training(_tiny_model(), train, torch.device("cpu"), None, repeats=1)
    return seen


def test_bench_times_the_training_step_with_the_configs_losses_averaging_and_clipping(monkeypatch):
    # the CPU configs' departures: the mel head and the weight average are in the timed step
    defaults = _timed_steps(monkeypatch, TrainConfig(batch_size=2, window_frames=8, mel_loss_weight=1.0,
                                                     ema_decay=0.999))
    assert len(defaults) == 3  # two warm-up steps, one timed
    assert all(s["mel_head"] and s["ema"] and s["clip"] == TrainConfig().grad_clip for s in defaults), defaults
    assert all(s["mel_loss"] > 0 and s["duration_loss"] > 0 for s in defaults), defaults

    paper = TrainConfig(batch_size=2, window_frames=8, mel_loss_weight=0.0, ema_decay=0.0, grad_clip=0.5)
    steps = _timed_steps(monkeypatch, paper)
    assert steps and all(not s["mel_head"] and not s["ema"] and s["clip"] == 0.5 for s in steps), steps

    # the check fails for a benchmark with its own copy of the step (what `wg2 bench` timed before): the noise and
    # duration losses, no mel loss, no averaging, no clipping, never through TrainingStep
    seen = []
    monkeypatch.setattr(step_module.TrainingStep, "__call__", lambda self, batch, step: seen.append(step))
    model = _tiny_model()
    ids, mask, durations = torch.randint(1, VOCAB, (2, 4)), torch.ones(2, 4), torch.full((2, 4), 2.0)
    encoded, log_durations = model.encode(ids, mask)
    cond = model.condition(encoded, durations, mask, torch.arange(8)[None].repeat(2, 1))
    signal = torch.randn(2, 1, 8 * model.hop)
    loss = Diffusion(resolve_schedule("linear-1000")).loss(lambda x, level: model.denoise(x, cond.states, level),
                                                           signal, torch.ones_like(signal))
    (loss + DurationPredictor.loss(log_durations, durations, mask)).backward()
    assert seen == []
