"""Learnability: a tiny model trained by the real training loop on one short utterance reads its text, and
ground-truth-duration synthesis lands near that utterance; the same run with zeroed conditioning (the broken
variant: a decoder that cannot read its text) does not.

Measured on the test corpus's shortest training utterance (2-core CPU, one torch thread, 500 steps, about two
minutes): reading its text, gain > 1.1, MCD 5.53 dB, STOI 0.345; with zeroed conditioning, gain exactly 1,
MCD 7.09 dB, STOI 0.121. The bars sit between the two: MCD < 6.3 dB and STOI > 0.25 (ground-truth durations,
linear-50). A model that reads its text but is this small and this briefly trained does not sound like the
utterance yet; it lands on its silences, loudness and spectral envelope, which is what these bars test.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from components.configs import ModelConfig
from components.model import WaveGrad2
from components.schedules import resolve_schedule_name
from evaluation.metrics import GAIN_KEY
from evaluation.scoring import score_pair
from experiments.config.run import RunConfig, TrainConfig
from experiments.corpus.dataset import load_dataset
from experiments.infer.synth import load_checkpoint, synthesize
from experiments.train.loop import train

STEPS = 500
GAIN_BAR = 1.1  # conditioning gain on the utterance itself (EMA weights)
MCD_BAR = 6.3  # dB, ground-truth durations, linear-50
STOI_BAR = 0.25


def overfit(data_config, out, zero_conditioning: bool, monkeypatch) -> tuple[float, dict]:
    torch.manual_seed(0)
    dataset = load_dataset(data_config, progress=False)
    utterance = min(dataset.train, key=lambda u: len(u.audio))
    one = dataclasses.replace(dataset, train=[utterance] * 8, val=[utterance], test=[])
    if zero_conditioning:
        real = WaveGrad2.condition

        def zeroed(self, *args, **kwargs):
            cond = real(self, *args, **kwargs)
            cond.states = cond.states * 0
            return cond
        monkeypatch.setattr(WaveGrad2, "condition", zeroed)
    config = RunConfig(
        data=data_config,
        model=ModelConfig(encoder_channels=32, duration_channels=16, decoder_preset="tiny", encoder_dropout=0.0,
                          zoneout=0.0, upsampler="repeat", signal_std=1.0),
        # the CPU configs' departures (experiments/configs/quickstart.toml), which this test is about
        train=TrainConfig(steps=STEPS, batch_size=4, window_frames=32, learning_rate=3e-3, warmup_steps=20,
                          schedule="cosine-1000", checkpoint_every=STEPS, log_every=50, gain_utterances=1,
                          mel_loss_weight=1.0, ema_decay=0.999, weight_decay=1e-2, lr_decay="cosine"))
    result = train(config, out, device="cpu", progress=False, dataset=one)
    gain = result.history[-1][GAIN_KEY]
    loaded = load_checkpoint(result.checkpoint, "cpu")
    audio = synthesize(loaded, [dataset.vocab.encode(utterance.phonemes)], resolve_schedule_name("linear-50"),
                       [utterance.durations], seed=1)[0].audio
    scores = score_pair(utterance.audio, audio, dataset.sample_rate)
    measured = {k: float(scores[k]) for k in ("stoi", "mel_cd")}
    print(f"zeroed={zero_conditioning}: conditioning gain {gain:.4f}, {measured}")
    return gain, measured


@pytest.mark.slow
def test_a_tiny_model_learns_to_read_its_text_and_speak_one_utterance(data_config, tmp_path, monkeypatch):
    gain, scores = overfit(data_config, tmp_path / "run", False, monkeypatch)
    assert gain > GAIN_BAR, f"conditioning gain {gain:.3f}"
    assert scores["mel_cd"] < MCD_BAR and scores["stoi"] > STOI_BAR, scores


@pytest.mark.slow
def test_the_same_run_with_zeroed_conditioning_does_not_reach_the_bar(data_config, tmp_path, monkeypatch):
    gain, scores = overfit(data_config, tmp_path / "run", True, monkeypatch)
    assert gain == pytest.approx(1.0, abs=1e-9)
    assert not (scores["mel_cd"] < MCD_BAR and scores["stoi"] > STOI_BAR), scores
