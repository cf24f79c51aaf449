"""Duration and range prediction (Non-Attentive Tacotron sec. 3).

Duration loss: L2 on log(1 + frames). Phone durations are skewed (many short phones, a few long
pauses); in the log domain a 2-frame error on a 4-frame phone costs more than on a 40-frame pause,
which matches what a listener hears, and the target's scale does not depend on the frame rate
choice as much as seconds-with-L2 would let long pauses dominate the gradient. Inference inverts it
with exp(pred) - 1, clamped at 0.

The range predictor has no target of its own: it learns through the Gaussian upsampler, whose
weights depend on sigma, from the decoder's noise loss (NAT's unsupervised setting).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from components.encoder import BiLSTM


class DurationPredictor(nn.Module):
    """Encoder states (B, N, C) -> log(1 + duration in frames) (B, N)."""

    def __init__(self, in_channels: int, hidden: int):
        super().__init__()
        self.lstm = BiLSTM(in_channels, hidden)
        self.proj = nn.Linear(2 * hidden, 1)

    def forward(self, encoded: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        return self.proj(self.lstm(encoded, token_mask)).squeeze(-1) * token_mask

    @staticmethod
    def loss(log_pred: torch.Tensor, durations: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        target = torch.log1p(durations.float())
        err = (log_pred - target) ** 2 * token_mask
        return err.sum() / token_mask.sum().clamp(min=1)

    @staticmethod
    def to_frames(log_pred: torch.Tensor, token_mask: torch.Tensor, pace: float = 1.0) -> torch.Tensor:
        """Predicted durations in frames (float, >= 0), divided by pace (> 1 speaks faster)."""
        return torch.expm1(log_pred).clamp(min=0) / pace * token_mask


class RangePredictor(nn.Module):
    """Encoder states and durations -> sigma in frames (B, N): softplus, plus a floor so sigma > 0."""

    def __init__(self, in_channels: int, hidden: int, sigma_floor: float):
        super().__init__()
        self.lstm = BiLSTM(in_channels + 1, hidden)
        self.proj = nn.Linear(2 * hidden, 1)
        self.sigma_floor = sigma_floor

    def forward(self, encoded: torch.Tensor, durations: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        x = torch.cat([encoded, durations.float()[..., None]], dim=-1)  # (B, N, C + 1)
        return F.softplus(self.proj(self.lstm(x, token_mask)).squeeze(-1)) + self.sigma_floor
