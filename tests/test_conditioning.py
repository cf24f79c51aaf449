"""Does the model read its text? The envelope gain (states rolled by half the utterance, on speech frames) and the
phoneme gain (speech phonemes deranged, durations and silences kept): a model that only knows where speech is scores
exactly 1 on the phoneme gain but passes the envelope gain; a model that knows its phonemes scores above 1 on both;
and the broken variants of the diagnostic (no derangement; no roll; all frames instead of speech frames) fail."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

import evaluation.conditioning as conditioning
from evaluation.conditioning import (
    ConditioningItem,
    conditioning_gain,
    derangement,
    reads_text,
    speech_mask,
    swap_phonemes,
)

HOP = 50
PAD, SILENCE = 0, 1
SPEECH = [2, 3, 4, 5, 6, 7]
# Each speech phoneme is a level of the clean signal (silence is 0): knowing the phoneme is knowing the signal.
LEVEL = {PAD: 0.0, SILENCE: 0.0, 2: 1.0, 3: 1.1, 4: 1.2, 5: 1.3, 6: 1.4, 7: 1.5}
SPEECH_MEAN = float(np.mean([LEVEL[i] for i in SPEECH]))


class ReaderModel(torch.nn.Module):
    """A model whose states carry the phoneme ids frame by frame and whose denoiser inverts the noising from its
    own clean-signal estimate: the phoneme level (`knows="phonemes"`), or only whether the frame is speech, at the
    mean speech level (`knows="envelope"`)."""

    def __init__(self, knows: str):
        super().__init__()
        self.knows = knows
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # a device to run on

    def encode(self, ids, mask):
        return ids.float()[..., None], None  # (1, N, 1)

    def condition(self, encoded, durations, mask, frames):
        per_frame = torch.repeat_interleave(encoded[0, :, 0], durations[0].long())  # (F,)
        return SimpleNamespace(states=per_frame[None, None])  # (1, 1, F)

    def estimate(self, states: torch.Tensor) -> torch.Tensor:
        ids = states[0, 0].round().long().tolist()
        if self.knows == "phonemes":
            values = [LEVEL[i] for i in ids]
        else:
            values = [SPEECH_MEAN if i in SPEECH else 0.0 for i in ids]
        return torch.tensor(values).repeat_interleave(HOP)[None, None]  # (1, 1, T)

    def denoise(self, noisy, states, level):
        a = level[:, None, None]
        return (noisy - a * self.estimate(states)) / torch.sqrt(1 - a**2)


def utterance(seed: int) -> ConditioningItem:
    """A long leading silence, eight speech phonemes, a pause, eight more, a trailing silence (as in the corpus,
    where the roll by half the utterance lands speech on silence); the clean signal is each phoneme's level with a
    little noise."""
    rng = np.random.default_rng(seed)
    ids = np.array([SILENCE, *rng.choice(SPEECH, 8), SILENCE, *rng.choice(SPEECH, 8), SILENCE])
    durations = rng.integers(2, 6, len(ids))
    durations[0], durations[-1] = 30, 10
    signal = np.repeat([LEVEL[int(i)] for i in ids], durations * HOP) + 0.05 * rng.standard_normal(durations.sum() * HOP)
    return ConditioningItem(ids, durations, signal[None].astype(np.float32))


ITEMS = [utterance(s) for s in range(5)]


def diagnose(knows: str):
    return conditioning_gain(ReaderModel(knows), ITEMS, SPEECH, "l1")


def test_a_model_that_only_knows_the_envelope_scores_one_on_phonemes_but_passes_the_envelope_gain():
    result = diagnose("envelope")
    assert result.phoneme.per_utterance == pytest.approx([1.0] * len(ITEMS), abs=1e-12)
    assert not result.reads_text
    # the envelope gain (roll by half the utterance) alone would call it a reader: what the control is for
    assert reads_text(result.envelope.summary) and result.envelope.summary["ci_low"] > 1.1


def test_a_model_that_knows_its_phonemes_scores_above_one_and_a_diagnostic_without_derangement_cannot_see_it(
        monkeypatch):
    result = diagnose("phonemes")
    assert result.reads_text and result.phoneme.summary["ci_low"] > 1.5, result.phoneme.summary
    assert all(ratio > 1.0 for ratio in result.phoneme.per_level.values()), result.phoneme.per_level
    # broken variant: a "derangement" that maps each phoneme to itself
    monkeypatch.setattr(conditioning, "derangement", lambda ids, seed=0: {i: i for i in ids})
    broken = diagnose("phonemes")
    assert broken.phoneme.per_utterance == pytest.approx([1.0] * len(ITEMS), abs=1e-12) and not broken.reads_text


def test_losses_are_taken_on_speech_frames_only(monkeypatch):
    """Padding the utterances with long silences changes nothing; the broken variant (every frame weighs) dilutes
    the phoneme gain towards 1 as silence grows."""
    def padded(item: ConditioningItem) -> ConditioningItem:
        ids = np.concatenate([[SILENCE], item.phoneme_ids, [SILENCE]])
        durations = np.concatenate([[200], item.durations, [200]])
        hiss = 0.05 * np.random.default_rng(0).standard_normal((2, 200 * HOP))  # room noise in the pauses
        signal = np.concatenate([hiss[0], item.signal[0], hiss[1]])[None].astype(np.float32)
        return ConditioningItem(ids, durations, signal)

    long_items = [padded(it) for it in ITEMS]
    plain = conditioning_gain(ReaderModel("phonemes"), ITEMS, SPEECH, "l1").phoneme.summary["mean"]
    padded_gain = conditioning_gain(ReaderModel("phonemes"), long_items, SPEECH, "l1").phoneme.summary["mean"]
    assert padded_gain == pytest.approx(plain, rel=0.05)
    monkeypatch.setattr(conditioning, "speech_mask", lambda ids, durations, speech, length: np.ones(length, "f4"))
    diluted = conditioning_gain(ReaderModel("phonemes"), long_items, SPEECH, "l1").phoneme.summary["mean"]
    assert diluted < 1 + 0.5 * (plain - 1)


def test_derangement_moves_every_phoneme_and_is_fixed():
    mapping = derangement(SPEECH)
    assert sorted(mapping) == SPEECH and sorted(mapping.values()) == SPEECH
    assert all(mapping[i] != i for i in SPEECH) and derangement(SPEECH) == mapping
    assert list(swap_phonemes(np.array([PAD, SILENCE, 2, 3]), mapping)) == [PAD, SILENCE, mapping[2], mapping[3]]
    with pytest.raises(ValueError, match="at least two"):
        derangement([2])


def test_speech_mask_follows_durations_and_steps_per_frame():
    mask = speech_mask(np.array([SILENCE, 2, SILENCE]), np.array([1, 2, 1]), set(SPEECH), 4 * 3)
    assert mask.tolist() == [0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0]
    with pytest.raises(ValueError, match="whole number"):
        speech_mask(np.array([2]), np.array([3]), set(SPEECH), 10)


def test_gain_is_deterministic_and_restores_training_mode():
    model = ReaderModel("phonemes")
    model.train()
    first = conditioning_gain(model, ITEMS[:2], SPEECH, "l2", seed=3)
    second = conditioning_gain(model, ITEMS[:2], SPEECH, "l2", seed=3)
    assert first.phoneme.per_utterance == second.phoneme.per_utterance and model.training


def test_bad_arguments_name_what_is_allowed():
    model = ReaderModel("phonemes")
    with pytest.raises(ValueError, match="no utterances"):
        conditioning_gain(model, [], SPEECH, "l1")
    with pytest.raises(ValueError, match="allowed: l1, l2"):
        conditioning_gain(model, ITEMS[:1], SPEECH, "huber")
    silent = ConditioningItem(np.array([SILENCE]), np.array([4]), np.zeros((1, 4 * HOP), np.float32))
    with pytest.raises(ValueError, match="no utterance has a speech frame"):
        conditioning_gain(model, [silent], SPEECH, "l1")
