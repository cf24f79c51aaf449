"""WaveGrad decoder (WaveGrad fig. 3; WaveGrad 2 fig. 2), in the paper's words.

UBlocks upsample the frame-rate conditioning by the `upsample_factors` (coarse -> fine; hop = their
product). DBlocks downsample the noisy signal by the same factors in reverse. At every resolution a
FiLM module turns the DBlock features plus a sinusoidal embedding of the continuous noise level
sqrt(alpha_bar) into a scale and shift for the UBlock of that resolution. The output is the
predicted noise. The network knows nothing else about diffusion.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TypedDict

import torch
import torch.nn.functional as F
from torch import nn

from components.configs import model_default
from components.registry import Registry


class DecoderPreset(TypedDict):
    input: int  # channels of the convolution on the conditioning
    ublocks: list[int]
    dblocks: list[int]


# Channels per level. `ublocks` coarse -> fine, `dblocks` fine -> coarse (the first entry is the
# convolution on the noisy signal). `base` is WaveGrad 2 fig. 2: 768 in, UBlocks 512, 512, 256, 128,
# 128; DBlocks 128, 128, 256, 512 after a 32-channel input convolution. With fewer factors than
# levels (latent space) the coarse UBlock widths and the coarse DBlock widths are kept.
DECODER_PRESETS: dict[str, DecoderPreset] = {
    "tiny": {"input": 32, "ublocks": [32, 32, 16, 16, 16], "dblocks": [8, 16, 16, 16, 32]},
    "mini": {"input": 128, "ublocks": [128, 128, 64, 32, 16], "dblocks": [8, 16, 32, 64, 128]},
    "small": {"input": 256, "ublocks": [256, 256, 128, 64, 64], "dblocks": [16, 64, 64, 128, 256]},
    "base": {"input": 768, "ublocks": [512, 512, 256, 128, 128], "dblocks": [32, 128, 128, 256, 512]},
    "large": {"input": 1024, "ublocks": [1024, 1024, 512, 256, 256], "dblocks": [64, 256, 256, 512, 1024]},
}

LEAK = 0.2
NOISE_LEVEL_SCALE = 5000.0  # WaveGrad scales sqrt(alpha_bar) in [0, 1] before the sinusoidal encoding


def noise_level_embedding(noise_level: torch.Tensor, channels: int) -> torch.Tensor:
    """Sinusoidal embedding of the continuous noise level. (B,) -> (B, channels)."""
    half = channels // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=noise_level.device) / max(half, 1))
    arg = NOISE_LEVEL_SCALE * noise_level.float()[:, None] * freqs[None, :]  # (B, half)
    emb = torch.cat([torch.sin(arg), torch.cos(arg)], dim=-1)
    return F.pad(emb, (0, channels - emb.shape[-1]))


class FiLM(nn.Module):
    """Feature-wise linear modulation from DBlock features and the noise level."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.input_conv = nn.Conv1d(in_channels, in_channels, 3, padding=1)
        self.scale_conv = nn.Conv1d(in_channels, out_channels, 3, padding=1)
        self.shift_conv = nn.Conv1d(in_channels, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, noise_level: torch.Tensor):  # x: (B, C_d, L)
        # the noise-level embedding is added after the LeakyReLU, as in lmnt-com/wavegrad
        x = F.leaky_relu(self.input_conv(x), LEAK) + noise_level_embedding(noise_level, x.shape[1])[..., None]
        return self.scale_conv(x), self.shift_conv(x)  # each (B, C_u, L)


# UBlock dilations (WaveGrad fig. 3, lmnt-com/wavegrad): the two coarsest UBlocks (the factor-5 ones at
# hop 300) use (1, 2, 1, 2), the finer ones (1, 2, 4, 8).
COARSE_DILATIONS, FINE_DILATIONS = (1, 2, 1, 2), (1, 2, 4, 8)


class UBlock(nn.Module):
    """Upsample by `factor`; four dilated convolutions modulated by FiLM; two residual paths."""

    def __init__(self, in_channels: int, out_channels: int, factor: int, dilations: tuple[int, ...] = FINE_DILATIONS):
        super().__init__()
        self.factor = factor
        self.shortcut = nn.Conv1d(in_channels, out_channels, 1)
        self.convs = nn.ModuleList(nn.Conv1d(in_channels if i == 0 else out_channels, out_channels, 3, dilation=d,
                                             padding=d) for i, d in enumerate(dilations))

    def forward(self, x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=self.factor, mode="nearest")  # (B, C_in, L)
        skip = self.shortcut(x)
        h = self.convs[0](F.leaky_relu(x, LEAK))
        h = self.convs[1](F.leaky_relu(scale * h + shift, LEAK))
        x = h + skip
        h = self.convs[2](F.leaky_relu(scale * x + shift, LEAK))
        h = self.convs[3](F.leaky_relu(scale * h + shift, LEAK))
        return x + h  # (B, C_out, L)


class DBlock(nn.Module):
    """Downsample by `factor` (strided convolution); three dilated convolutions; a residual path."""

    def __init__(self, in_channels: int, out_channels: int, factor: int):
        super().__init__()
        self.shortcut = nn.Conv1d(in_channels, out_channels, 1)
        self.down = nn.Conv1d(in_channels, in_channels, factor, stride=factor)
        self.convs = nn.ModuleList(nn.Conv1d(in_channels if i == 0 else out_channels, out_channels, 3,
                                             dilation=d, padding=d) for i, d in enumerate((1, 2, 4)))
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, L) -> (B, C_out, L / factor)
        skip = self.shortcut(F.avg_pool1d(x, self.factor))
        h = self.down(x)
        for conv in self.convs:
            h = conv(F.leaky_relu(h, LEAK))
        return h + skip


class Decoder(nn.Module):
    """Interface: noisy signal (B, C_x, T), conditioning (B, C_cond, frames), noise level (B,) -> noise (B, C_x, T),
    with T = frames * hop. Built as `cls(config: cls.Config, cond_channels=..., signal_channels=...)`."""

    hop: int

    def forward(self, noisy: torch.Tensor, condition: torch.Tensor, noise_level: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class WaveGradDecoder(Decoder):
    @dataclass(frozen=True)
    class Config:
        """The [model] keys it reads (defaults: components/configs.py, ModelConfig)."""
        decoder_preset: str = model_default("decoder_preset")
        upsample_factors: list[int] = model_default("upsample_factors")  # coarse -> fine

    def __init__(self, config: Config, cond_channels: int, signal_channels: int):
        super().__init__()
        spec = DECODER_PRESETS[config.decoder_preset]
        upsample_factors = config.upsample_factors
        levels = len(upsample_factors)
        ublocks = list(spec["ublocks"])[:levels]  # coarse -> fine
        dblocks = list(spec["dblocks"])[-levels:]  # fine -> coarse
        self.factors, self.hop = list(upsample_factors), math.prod(upsample_factors)
        self.input_conv = nn.Conv1d(cond_channels, spec["input"], 3, padding=1)
        widths = [spec["input"]] + ublocks
        self.upsample = nn.ModuleList(UBlock(widths[k], widths[k + 1], f, COARSE_DILATIONS if k < 2 else FINE_DILATIONS)
                                      for k, f in enumerate(self.factors))
        self.signal_conv = nn.Conv1d(signal_channels, dblocks[0], 5, padding=2)
        # DBlock j brings resolution from level j-1 to level j (fine -> coarse) by the factors in reverse.
        down_factors = self.factors[::-1][:-1]
        self.downsample = nn.ModuleList(DBlock(dblocks[j], dblocks[j + 1], f) for j, f in enumerate(down_factors))
        # FiLM at fine->coarse level j feeds the UBlock whose output has that resolution: UBlock levels-1-j.
        self.films = nn.ModuleList(FiLM(dblocks[j], ublocks[levels - 1 - j]) for j in range(levels))
        self.output_conv = nn.Conv1d(ublocks[-1], signal_channels, 3, padding=1)
        # Zero-initialised output: an untrained decoder predicts zero noise, so sampling with it is
        # stable and training starts from a well-conditioned point (as in DDPM's U-Net).
        for parameter in self.output_conv.parameters():  # weight and bias
            nn.init.zeros_(parameter)

    def forward(self, noisy, condition, noise_level):
        if noisy.shape[-1] != condition.shape[-1] * self.hop:
            raise ValueError(f"decoder: signal length {noisy.shape[-1]} != frames {condition.shape[-1]} "
                             f"x hop {self.hop}")
        features = [self.signal_conv(noisy)]  # fine -> coarse, (B, C_d, T / prod)
        for block in self.downsample:
            features.append(block(features[-1]))
        films = [film(f, noise_level) for film, f in zip(self.films, features)]
        x = self.input_conv(condition)  # (B, C_in, frames)
        for k, block in enumerate(self.upsample):
            scale, shift = films[len(films) - 1 - k]
            x = block(x, scale, shift)
        return self.output_conv(x)  # (B, C_x, T)


DECODERS: Registry[Decoder] = Registry("decoder", Decoder, {"wavegrad": WaveGradDecoder})
