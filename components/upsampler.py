"""Resampling encoder states (one per token) to frame rate.

Both upsamplers compute only the frames they are asked for (`frames`, absolute frame indices), so
training evaluates just the random window instead of the whole utterance.
"""
from __future__ import annotations

import torch
from torch import nn

from components.registry import Registry


class Upsampler(nn.Module):
    """Interface. encoded (B, N, C), durations (B, N) in frames, sigma (B, N) or None, token_mask (B, N),
    frames (B, W) long -> (states (B, W, C), weights (B, W, N))."""

    uses_range: bool = False

    def forward(self, encoded, durations, sigma, token_mask, frames):
        raise NotImplementedError


class GaussianUpsampler(Upsampler):
    """Non-Attentive Tacotron sec. 3.1: token i is a Gaussian over time centred at
    c_i = sum_{j<i} d_j + d_i / 2 with standard deviation sigma_i; frame t takes the states weighted by
    w_ti = N(t; c_i, sigma_i^2) / sum_k N(t; c_k, sigma_k^2). Frame t is evaluated at its centre t + 0.5,
    so with sigma_i proportional to d_i and tending to 0 the weights become `repeat`'s one-hot."""

    uses_range = True

    def forward(self, encoded, durations, sigma, token_mask, frames):
        durations = durations.float()
        centres = torch.cumsum(durations, dim=1) - durations / 2  # (B, N)
        t = frames.float()[..., None] + 0.5  # (B, W, 1)
        z = (t - centres[:, None, :]) / sigma[:, None, :]  # (B, W, N)
        logits = -0.5 * z**2 - torch.log(sigma)[:, None, :]
        logits = logits.masked_fill(~token_mask.bool()[:, None, :], float("-inf"))
        weights = torch.softmax(logits, dim=-1)  # (B, W, N), sums to 1 over tokens
        return weights @ encoded, weights


class RepeatUpsampler(Upsampler):
    """FastSpeech's length regulator: each state repeated round(d_i) times."""

    def forward(self, encoded, durations, sigma, token_mask, frames):
        ends = torch.cumsum(torch.round(durations.float()) * token_mask, dim=1)  # (B, N)
        # token index of frame t = number of token spans that end at or before t
        index = (frames[..., None].float() >= ends[:, None, :]).sum(-1).long()  # (B, W)
        last = (token_mask.sum(1, keepdim=True) - 1).clamp(min=0).long()
        index = torch.minimum(index, last)
        weights = torch.zeros(*frames.shape, encoded.shape[1], device=encoded.device, dtype=encoded.dtype)
        weights.scatter_(2, index[..., None], 1.0)
        return weights @ encoded, weights


UPSAMPLERS: Registry[Upsampler] = Registry("upsampler", Upsampler,
                                           {"gaussian": GaussianUpsampler, "repeat": RepeatUpsampler})
