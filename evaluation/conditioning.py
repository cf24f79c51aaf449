"""Does the model read its text? Two gains, each a ratio of noise-prediction losses on held-out utterances at a
fixed set of noise levels with fixed noise seeds, taken on SPEECH frames only (frames of a phoneme that is not
silence or padding), so that knowing where the pauses are cannot pass for reading:

- envelope gain = loss with the upsampled states rolled in time by half the utterance / loss with the true ones.
  The roll swaps speech for silence and back, so a model that only knows the speech/silence envelope already
  scores above 1 here.
- phoneme gain = loss with every speech phoneme replaced through a fixed derangement of the phoneme inventory
  (same durations, silences kept) / loss with the true phonemes. The envelope is untouched, so a model that only
  knows it scores 1 (to the last digit); one that reads phoneme identity scores above 1.

A model "reads its text" when the phoneme gain's 95% interval lies above 1. Per utterance a gain is
sum_levels loss_control / sum_levels loss_true; the summary is the mean over utterances with a 95% t-interval
(evaluation.stats.summarize), plus the ratio at each level. It costs three decoder passes per level and utterance
(and two encoder passes): seconds for tiny models, so training logs it.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from components.diffusion import LOSS_KINDS, add_noise, gaussian, noise_error
from evaluation.metrics import GAIN_KEY, PHONEME_GAIN_KEY
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


@dataclass
class Diagnostic:
    """Both gains of one model on the same utterances, levels and noise."""
    envelope: GainResult
    phoneme: GainResult

    def metrics(self) -> dict[str, float]:
        return {**self.envelope.metrics(GAIN_KEY), **self.phoneme.metrics(PHONEME_GAIN_KEY)}

    @property
    def reads_text(self) -> bool:
        return reads_text(self.phoneme.summary)

    def summaries(self) -> dict[str, dict]:
        """{GAIN_KEY: summary + per_level + per_utterance, PHONEME_GAIN_KEY: ...} for eval summaries."""
        return {key: {**g.summary, "per_level": g.per_level, "per_utterance": g.per_utterance}
                for key, g in ((GAIN_KEY, self.envelope), (PHONEME_GAIN_KEY, self.phoneme))}


def shift_frames(states: torch.Tensor) -> torch.Tensor:
    """Roll frame-rate states (B, C, F) by half their length: same statistics, wrong alignment."""
    return torch.roll(states, shifts=max(1, states.shape[-1] // 2), dims=-1)


def derangement(speech_ids: Iterable[int], seed: int = 0) -> dict[int, int]:
    """A fixed permutation of the speech phoneme inventory with no fixed point (each phoneme becomes another),
    drawn with a seeded generator so every model and run gets the same one. Needs at least two phonemes."""
    ids = sorted(set(int(i) for i in speech_ids))
    if len(ids) < 2:
        raise ValueError(f"phoneme control: need at least two speech phonemes to swap, got {ids}")
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(len(ids))
        if not np.any(order == np.arange(len(ids))):
            return {ids[i]: ids[int(j)] for i, j in enumerate(order)}


def swap_phonemes(phoneme_ids: np.ndarray, mapping: dict[int, int]) -> np.ndarray:
    """Every id in `mapping` replaced by its image; silences and padding (not in the mapping) kept. (N,)"""
    return np.asarray([mapping.get(int(i), int(i)) for i in phoneme_ids], dtype=np.int64)


def speech_mask(phoneme_ids: np.ndarray, durations: np.ndarray, speech_ids: set[int], length: int) -> np.ndarray:
    """(length,) float32: 1 on the signal steps of speech phonemes, 0 on silence and padding. `length` is the
    signal's length, a whole number of steps per frame."""
    frames = int(np.sum(durations))
    per_frame = np.repeat([float(int(i) in speech_ids) for i in phoneme_ids], np.asarray(durations, dtype=np.int64))
    if frames == 0 or length % frames:
        raise ValueError(f"speech mask: signal length {length} is not a whole number of steps per frame ({frames})")
    return np.repeat(per_frame, length // frames).astype(np.float32)


@torch.no_grad()
def conditioning_gain(model, items: list[ConditioningItem], speech_ids: Sequence[int], loss_kind: str = "l1",
                      levels: tuple[float, ...] = LEVELS, seed: int = 0, condition_fn=None) -> Diagnostic:
    """The envelope and phoneme gains of `model` (a components.model.WaveGrad2) on `items`. `speech_ids`: the
    vocabulary ids of speech phonemes (not silence, not padding). `condition_fn(states) -> states` replaces the
    true conditioning (tests use it to show a model that ignores its text scores 1). Utterances without a speech
    frame are skipped."""
    if not items:
        raise ValueError("conditioning_gain: no utterances to probe")
    if loss_kind not in LOSS_KINDS:
        raise ValueError(f"conditioning_gain: loss {loss_kind!r}; allowed: {', '.join(LOSS_KINDS)}")
    speech = set(int(i) for i in speech_ids)
    swap = derangement(speech)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    controls = ("envelope", "phoneme")
    per_utterance: dict[str, list[float]] = {c: [] for c in controls}
    by_level = {c: np.zeros(len(levels)) for c in ("true", *controls)}

    def states_of(ids_np: np.ndarray, durations: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        ids = torch.from_numpy(ids_np)[None].to(device)  # (1, N)
        mask = torch.ones_like(ids, dtype=torch.float32)
        encoded, _ = model.encode(ids, mask)
        return model.condition(encoded, durations, mask, frames).states  # (1, C, F)

    for index, item in enumerate(items):
        ids_np = np.asarray(item.phoneme_ids, dtype=np.int64)
        clean = torch.from_numpy(np.asarray(item.signal, dtype=np.float32))[None].to(device)  # (1, C_x, T)
        weight = torch.from_numpy(speech_mask(ids_np, item.durations, speech, clean.shape[-1])).to(device)  # (T,)
        if float(weight.sum()) == 0:
            continue
        durations = torch.from_numpy(np.asarray(item.durations, dtype=np.float32))[None].to(device)  # (1, N)
        frames = torch.arange(int(durations.sum()), device=device)[None]  # (1, F)
        true_states = states_of(ids_np, durations, frames)
        if condition_fn is not None:
            true_states = condition_fn(true_states)
        states = {"true": true_states, "envelope": shift_frames(true_states),
                  "phoneme": states_of(swap_phonemes(ids_np, swap), durations, frames)}
        generator = torch.Generator(device="cpu").manual_seed(seed * 1_000_003 + index)
        sums = dict.fromkeys(states, 0.0)
        for k, level in enumerate(levels):
            noise = gaussian(tuple(clean.shape), generator, device)
            noisy = add_noise(clean, noise, float(level))
            lv = torch.full((1,), float(level), device=device)
            for name, cond in states.items():
                err = noise_error(model.denoise(noisy, cond, lv), noise, loss_kind)  # (1, C_x, T)
                loss = float((err * weight).sum() / (weight.sum() * err.shape[1]))
                by_level[name][k] += loss
                sums[name] += loss
        for c in controls:
            per_utterance[c].append(sums[c] / sums["true"])
    model.train(was_training)
    if not per_utterance["phoneme"]:
        raise ValueError("conditioning_gain: no utterance has a speech frame")
    results = [GainResult(per_utterance[c], {float(lv): float(s / t) for lv, s, t in
                                             zip(levels, by_level[c], by_level["true"])}, summarize(per_utterance[c]))
               for c in controls]
    return Diagnostic(*results)


def reads_text(summary: dict) -> bool:
    """True when the gain's 95% interval lies above 1 (with one utterance: its value above the threshold)."""
    if summary.get("ci_low") is not None:
        return summary["ci_low"] > 1.0
    return summary.get("mean") is not None and summary["mean"] > READS_TEXT_THRESHOLD
