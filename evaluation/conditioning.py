"""Conditioning gain: does the model read its text?

gain = noise-prediction loss with time-shifted conditioning / loss with the true conditioning, on whole
held-out utterances at a fixed set of noise levels with fixed noise seeds. The shift rolls the
upsampled encoder states by half the utterance, so the decoder gets conditioning with the same
statistics (same phonemes, same speaker) that no longer lines up with the audio. A decoder that ignores
its conditioning scores 1 (to the last digit); one that reads it scores clearly above 1.

Per utterance the gain is sum_levels loss_shifted / sum_levels loss_true; the summary is the mean over
utterances with a 95% t-interval (evaluation.stats.summarize), plus the ratio at each level.
It costs two decoder passes per level and utterance: seconds for tiny models, so training logs it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from components.diffusion import gaussian
from evaluation.metrics import GAIN_KEY
from evaluation.stats import summarize

# sqrt(alpha_bar) levels probed: from nearly clean to mostly noise. 0.1 is inside every shipped
# schedule's range (training schedule linear-1000 ends at 0.081).
LEVELS = (0.99, 0.95, 0.8, 0.5, 0.3, 0.1)
# A model "reads its text" when the gain's 95% interval lies above 1 (1.0 exactly is a decoder that
# ignores its conditioning). With a single utterance there is no interval: then the gain must exceed this.
READS_TEXT_THRESHOLD = 1.02


@dataclass
class ConditioningItem:
    """One held-out utterance in the form the model needs (no corpus objects: this layer is below experiments)."""
    phoneme_ids: np.ndarray  # (N,) int64
    durations: np.ndarray  # (N,) int64 frames (ground truth)
    signal: np.ndarray  # (C_x, frames * hop) float32: the diffusion signal (waveform or latent)


@dataclass
class GainResult:
    per_utterance: list[float]
    per_level: dict[float, float]  # level -> ratio of summed shifted loss to summed true loss
    summary: dict = field(default_factory=dict)  # mean, ci_low, ci_high, n, ...

    @property
    def mean(self) -> float:
        return float(self.summary["mean"])

    def metrics(self, prefix: str = GAIN_KEY) -> dict[str, float]:
        out = {prefix: self.summary["mean"]}
        if self.summary.get("ci_low") is not None:
            out[f"{prefix}_ci_low"], out[f"{prefix}_ci_high"] = self.summary["ci_low"], self.summary["ci_high"]
        return {k: float(v) for k, v in out.items()}


def shift_frames(states: torch.Tensor) -> torch.Tensor:
    """Roll frame-rate states (B, C, F) by half their length: same statistics, wrong alignment."""
    return torch.roll(states, shifts=max(1, states.shape[-1] // 2), dims=-1)


@torch.no_grad()
def conditioning_gain(model, items: list[ConditioningItem], loss_kind: str = "l1",
                      levels: tuple[float, ...] = LEVELS, seed: int = 0,
                      condition_fn=None) -> GainResult:
    """The gain of `model` (a components.model.WaveGrad2) on `items`. `condition_fn(states) -> states`
    replaces the true conditioning (tests use it to show a model that ignores its text scores 1)."""
    if not items:
        raise ValueError("conditioning_gain: no utterances to probe")
    if loss_kind not in ("l1", "l2"):
        raise ValueError(f"conditioning_gain: loss {loss_kind!r}; allowed: l1, l2")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    per_utterance, true_by_level, shifted_by_level = [], np.zeros(len(levels)), np.zeros(len(levels))
    for index, item in enumerate(items):
        ids = torch.from_numpy(np.asarray(item.phoneme_ids, dtype=np.int64))[None].to(device)  # (1, N)
        mask = torch.ones_like(ids, dtype=torch.float32)
        durations = torch.from_numpy(np.asarray(item.durations, dtype=np.float32))[None].to(device)  # (1, N)
        frames = torch.arange(int(durations.sum()), device=device)[None]  # (1, F)
        encoded, _ = model.encode(ids, mask)
        states = model.condition(encoded, durations, mask, frames).states  # (1, C, F)
        if condition_fn is not None:
            states = condition_fn(states)
        shifted = shift_frames(states)
        clean = torch.from_numpy(np.asarray(item.signal, dtype=np.float32))[None].to(device)  # (1, C_x, T)
        generator = torch.Generator(device="cpu").manual_seed(seed * 1_000_003 + index)
        true_sum = shifted_sum = 0.0
        for k, level in enumerate(levels):
            noise = gaussian(tuple(clean.shape), generator, device)
            noisy = level * clean + (1 - level**2) ** 0.5 * noise
            lv = torch.full((1,), float(level), device=device)
            losses = []
            for cond in (states, shifted):
                err = model.denoise(noisy, cond, lv).float() - noise
                losses.append(float((err.abs() if loss_kind == "l1" else err**2).mean()))
            true_by_level[k] += losses[0]
            shifted_by_level[k] += losses[1]
            true_sum += losses[0]
            shifted_sum += losses[1]
        per_utterance.append(shifted_sum / true_sum)
    model.train(was_training)
    per_level = {float(lv): float(s / t) for lv, s, t in zip(levels, shifted_by_level, true_by_level)}
    return GainResult(per_utterance, per_level, summarize(per_utterance))


def reads_text(summary: dict) -> bool:
    """True when the gain's 95% interval lies above 1 (with one utterance: its value above the threshold)."""
    if summary.get("ci_low") is not None:
        return summary["ci_low"] > 1.0
    return summary.get("mean") is not None and summary["mean"] > READS_TEXT_THRESHOLD
