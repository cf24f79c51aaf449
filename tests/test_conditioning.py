"""The conditioning gain: 1 for a decoder that ignores its text, far above 1 for one that reads it, and a
diagnostic whose shift does nothing (the broken variant) cannot tell the two apart."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import evaluation.conditioning as conditioning
from components.configs import ModelConfig
from components.model import Conditioning, WaveGrad2
from evaluation.conditioning import ConditioningItem, conditioning_gain, reads_text

HOP = 300


class OracleModel(WaveGrad2):
    """A WaveGrad2 whose conditioning states carry the clean signal itself (hop samples per frame) and whose
    denoiser inverts the noising exactly from them: the perfect reader of its conditioning."""

    def __init__(self, clean: torch.Tensor, reads: bool = True):
        super().__init__(ModelConfig(encoder_channels=8, duration_channels=4, decoder_preset="tiny", zoneout=0.0),
                         vocab_size=8)
        self.clean, self.reads = clean, reads  # clean: (1, 1, T)

    def condition(self, encoded, durations, token_mask, frames):
        states = self.clean.reshape(1, -1, HOP).transpose(1, 2)  # (1, hop, F): frame f holds its samples
        return Conditioning(states, torch.zeros(1, states.shape[-1], encoded.shape[1]))

    def denoise(self, noisy, condition, noise_level):
        a = noise_level[:, None, None]
        if not self.reads:  # the best a text-blind predictor can do for this signal: a fixed shrinkage
            return noisy * torch.sqrt(1 - a**2)
        clean = condition.transpose(1, 2).reshape(noisy.shape)
        return (noisy - a * clean) / torch.sqrt(1 - a**2)


def speech_like_item(frames: int = 40, seed: int = 0) -> ConditioningItem:
    """A unit-variance signal with a loud and a silent half, like speech and pauses."""
    rng = np.random.default_rng(seed)
    signal = rng.standard_normal(frames * HOP).astype(np.float32)
    signal[: frames * HOP // 2] *= 0.05
    signal /= signal.std()
    return ConditioningItem(np.array([1, 2, 3]), np.array([10, 20, frames - 30]), signal[None])


def gain_of(reads: bool, n: int = 3) -> conditioning.GainResult:
    items = [speech_like_item(seed=i) for i in range(n)]
    results = [conditioning_gain(OracleModel(torch.from_numpy(it.signal)[None], reads), [it], "l1") for it in items]
    per = [r.per_utterance[0] for r in results]
    return conditioning.GainResult(per, results[0].per_level, conditioning.summarize(per))


def test_a_model_that_ignores_its_text_scores_exactly_one():
    result = gain_of(reads=False)
    assert result.per_utterance == pytest.approx([1.0] * 3, abs=1e-12)
    assert not reads_text(result.summary)


def test_a_model_that_reads_its_text_scores_far_above_one_at_every_level():
    result = gain_of(reads=True)
    assert result.summary["ci_low"] > 5 and reads_text(result.summary)
    assert all(ratio > 1.5 for ratio in result.per_level.values()), result.per_level


def test_a_diagnostic_that_does_not_shift_cannot_see_the_text(monkeypatch):
    """The broken variant: if the 'shifted' conditioning were the true one, the perfect reader would score 1."""
    monkeypatch.setattr(conditioning, "shift_frames", lambda states: states)
    result = gain_of(reads=True)
    assert result.per_utterance == pytest.approx([1.0] * 3, abs=1e-9)
    assert not reads_text(result.summary)


def test_gain_is_deterministic_and_restores_training_mode():
    item = speech_like_item()
    model = OracleModel(torch.from_numpy(item.signal)[None])
    model.train()
    first = conditioning_gain(model, [item], "l2", seed=3)
    second = conditioning_gain(model, [item], "l2", seed=3)
    assert first.per_utterance == second.per_utterance and model.training


def test_bad_arguments_name_what_is_allowed():
    model = OracleModel(torch.zeros(1, 1, 40 * HOP))
    with pytest.raises(ValueError, match="no utterances"):
        conditioning_gain(model, [], "l1")
    with pytest.raises(ValueError, match="allowed: l1, l2"):
        conditioning_gain(model, [speech_like_item()], "huber")
