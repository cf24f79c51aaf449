"""Training batches: a random window of `train.window_frames` frames per utterance, with its signal.

Every random choice is a pure function of (seed, step), so a resumed run draws exactly the batches
an uninterrupted run would have drawn, with no RNG state to store.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class TrainingItem:
    phoneme_ids: np.ndarray  # (N,) int64
    durations: np.ndarray  # (N,) int64 frames
    signal: np.ndarray  # (C_x, frames * hop_signal) float32: waveform (C_x = 1) or latent
    mel: np.ndarray | None = None  # (frames, M) float32: normalized log-mel target of the auxiliary loss


@dataclass
class Batch:
    phoneme_ids: torch.Tensor  # (B, N) long, 0 = padding
    token_mask: torch.Tensor  # (B, N) float
    durations: torch.Tensor  # (B, N) float frames (ground truth)
    frames: torch.Tensor  # (B, W) long: absolute frame indices of the window
    signal: torch.Tensor  # (B, C_x, W * hop_signal)
    signal_mask: torch.Tensor  # (B, 1, W * hop_signal): 1 on real signal, 0 past the utterance's end
    mel: torch.Tensor  # (B, W, M) log-mel target of the window's frames (M = 0 without targets)
    frame_mask: torch.Tensor  # (B, W): 1 on real frames

    def to(self, device) -> Batch:
        return Batch(*(getattr(self, f).to(device, non_blocking=True) for f in self.__dataclass_fields__))


def batch_indices(n_items: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """Indices of the items in batch `step`: epochs are seeded permutations, the last partial batch dropped."""
    batch_size = min(batch_size, n_items)
    per_epoch = n_items // batch_size
    epoch, position = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(n_items)
    return order[position * batch_size:(position + 1) * batch_size]


def make_batch(items: list[TrainingItem], window_frames: int, hop_signal: int, seed: int, step: int) -> Batch:
    """Collate items, each cut to a random window of `window_frames` frames (shorter ones padded, masked)."""
    rng = np.random.default_rng([seed, step, 1])
    batch, n_tokens = len(items), max(len(it.phoneme_ids) for it in items)
    channels = items[0].signal.shape[0]
    ids = np.zeros((batch, n_tokens), np.int64)
    mask = np.zeros((batch, n_tokens), np.float32)
    durations = np.zeros((batch, n_tokens), np.float32)
    frames = np.zeros((batch, window_frames), np.int64)
    signal = np.zeros((batch, channels, window_frames * hop_signal), np.float32)
    signal_mask = np.zeros((batch, 1, window_frames * hop_signal), np.float32)
    bands = items[0].mel.shape[1] if items[0].mel is not None else 0
    mel = np.zeros((batch, window_frames, bands), np.float32)
    frame_mask = np.zeros((batch, window_frames), np.float32)
    for b, item in enumerate(items):
        n = len(item.phoneme_ids)
        ids[b, :n], mask[b, :n], durations[b, :n] = item.phoneme_ids, 1.0, item.durations
        total = int(item.durations.sum())
        start = int(rng.integers(0, max(total - window_frames, 0) + 1))
        frames[b] = start + np.arange(window_frames)
        piece = item.signal[:, start * hop_signal:(start + window_frames) * hop_signal]
        signal[b, :, :piece.shape[1]] = piece
        signal_mask[b, :, :piece.shape[1]] = 1.0
        real = min(window_frames, total - start)
        frame_mask[b, :real] = 1.0
        if item.mel is not None:  # every item has targets when the first has (bands > 0)
            mel[b, :real] = item.mel[start:start + real]
    return Batch(*(torch.from_numpy(a) for a in (ids, mask, durations, frames, signal, signal_mask, mel, frame_mask)))
