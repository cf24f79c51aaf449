"""Targets of the auxiliary mel loss: each utterance's log-mel spectrogram on the model's frame grid.

Why (README, modelling decisions): the noise loss reaches the encoder only through a decoder that at first
ignores its conditioning, so the text path learns tens of times slower than the decoder. A linear head
that predicts each frame's log-mel from the upsampled encoder states gives the encoder and upsampler a
dense, low-variance signal of what the frame sounds like; the decoder then reads states that already
carry it (an oracle mel conditioning is read within hundreds of steps). `train.mel_loss_weight = 0` is the
paper's WaveGrad 2. The head is used only in training; synthesis never sees a mel.
"""
from __future__ import annotations

import numpy as np

from evaluation.signal_features import N_MELS, frame_mel_power

POWER_FLOOR = 1e-10  # -100 dB: below any real recording's noise floor


def log_mels(utterances, sample_rate: int, hop: int) -> list[np.ndarray]:
    """(frames, N_MELS) natural-log mel power per utterance."""
    return [np.log(np.maximum(frame_mel_power(u.audio, sample_rate, hop, u.n_frames), POWER_FLOOR))
            for u in utterances]


def normalized_targets(utterances, sample_rate: int, hop: int) -> list[np.ndarray]:
    """Log-mels standardized per band with the statistics of these (training) utterances, as float32."""
    mels = log_mels(utterances, sample_rate, hop)
    stacked = np.concatenate(mels)
    mean, std = stacked.mean(0), stacked.std(0) + 1e-3
    return [((m - mean) / std).astype(np.float32) for m in mels]


__all__ = ["N_MELS", "log_mels", "normalized_targets"]
