"""Text encoder of WaveGrad 2 (sec. 2): phoneme embedding, 3 convolutions, a BiLSTM with ZoneOut.

ZoneOut (Krueger et al. 2017): in training each LSTM unit keeps its previous hidden and cell state
with probability `zoneout`; at eval the expectation is used (a fixed blend of old and new state).
With zoneout = 0 the fused cuDNN/oneDNN LSTM runs instead of the Python cell loop.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from components.configs import model_default
from components.registry import Registry


class Encoder(nn.Module):
    """Interface: phoneme ids (B, N) and a token mask (B, N) -> encoder states (B, N, C), zero at padding.
    Built as `cls(config: cls.Config, vocab_size=...)`."""

    out_channels: int

    def forward(self, phoneme_ids: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class ZoneOutLSTM(nn.Module):
    """One direction of an LSTM run step by step, with ZoneOut on hidden and cell state."""

    def __init__(self, input_size: int, hidden_size: int, zoneout: float):
        super().__init__()
        self.cell = nn.LSTMCell(input_size, hidden_size)
        self.hidden_size, self.zoneout = hidden_size, zoneout

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, N, C_in) -> (B, N, H)
        batch, steps, _ = x.shape
        h = x.new_zeros(batch, self.hidden_size)
        c = x.new_zeros(batch, self.hidden_size)
        outputs = []
        for t in range(steps):
            h_new, c_new = self.cell(x[:, t], (h, c))
            if self.training:
                keep_h = torch.bernoulli(torch.full_like(h, self.zoneout))
                keep_c = torch.bernoulli(torch.full_like(c, self.zoneout))
                h = keep_h * h + (1 - keep_h) * h_new
                c = keep_c * c + (1 - keep_c) * c_new
            else:  # the expectation of the training-time mask
                h = self.zoneout * h + (1 - self.zoneout) * h_new
                c = self.zoneout * c + (1 - self.zoneout) * c_new
            outputs.append(h)
        return torch.stack(outputs, dim=1)


def reverse_padded(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse each sequence within its own length, leaving padding at the end. x: (B, N, C)."""
    steps = x.shape[1]
    idx = torch.arange(steps, device=x.device)[None, :].expand(len(lengths), -1)  # (B, N)
    rev = lengths[:, None] - 1 - idx
    rev = torch.where(rev >= 0, rev, idx)  # padding positions stay where they are
    return x.gather(1, rev[..., None].expand(-1, -1, x.shape[2]))


class BiLSTM(nn.Module):
    """Bidirectional LSTM over padded sequences: fused when zoneout = 0, a ZoneOut cell loop otherwise."""

    def __init__(self, input_size: int, hidden_size: int, zoneout: float = 0.0):
        super().__init__()
        self.zoneout = zoneout
        if zoneout > 0:
            self.forward_rnn = ZoneOutLSTM(input_size, hidden_size, zoneout)
            self.backward_rnn = ZoneOutLSTM(input_size, hidden_size, zoneout)
        else:
            self.rnn = nn.LSTM(input_size, hidden_size, batch_first=True, bidirectional=True)

    def forward(self, x: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:  # (B, N, C) -> (B, N, 2H)
        lengths = token_mask.sum(1).clamp(min=1).long()
        if self.zoneout > 0:
            fwd = self.forward_rnn(x)
            bwd = reverse_padded(self.backward_rnn(reverse_padded(x, lengths)), lengths)
            out = torch.cat([fwd, bwd], dim=-1)
        else:
            packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
            out, _ = self.rnn(packed)
            out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return out * token_mask[..., None]


class WaveGrad2Encoder(Encoder):
    @dataclass(frozen=True)
    class Config:
        """The [model] keys it reads (defaults and the paper's numbers: components/configs.py, ModelConfig)."""
        encoder_channels: int = model_default("encoder_channels")
        encoder_kernel_size: int = model_default("encoder_kernel_size")
        encoder_conv_layers: int = model_default("encoder_conv_layers")
        encoder_dropout: float = model_default("encoder_dropout")
        zoneout: float = model_default("zoneout")

    def __init__(self, config: Config, vocab_size: int):
        super().__init__()
        channels = config.encoder_channels
        self.out_channels = channels
        self.embedding = nn.Embedding(vocab_size, channels, padding_idx=0)
        self.convs = nn.ModuleList(
            nn.Conv1d(channels, channels, config.encoder_kernel_size, padding=config.encoder_kernel_size // 2)
            for _ in range(config.encoder_conv_layers))
        self.norms = nn.ModuleList(nn.BatchNorm1d(channels) for _ in range(config.encoder_conv_layers))
        self.dropout = config.encoder_dropout
        self.lstm = BiLSTM(channels, channels // 2, config.zoneout)

    def forward(self, phoneme_ids: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        mask = token_mask[:, None, :].float()  # (B, 1, N)
        x = self.embedding(phoneme_ids).transpose(1, 2)  # (B, C, N)
        for conv, norm in zip(self.convs, self.norms):
            x = F.dropout(F.relu(norm(conv(x * mask))), self.dropout, self.training)
        return self.lstm(x.transpose(1, 2) * token_mask[..., None], token_mask.float())  # (B, N, C)


ENCODERS: Registry[Encoder] = Registry("encoder", Encoder, {"wavegrad2": WaveGrad2Encoder})
