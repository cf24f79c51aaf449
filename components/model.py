"""WaveGrad 2 assembled from its swappable parts (ModelConfig picks each registry entry).

phonemes -> encoder -> duration (and range) prediction -> upsampling to frame rate -> WaveGrad decoder.
The decoder refines the waveform, or with model.space = "latent" the latent sequence of a stage-one
autoencoder (then it has `latent_channels` signal channels and hop / stride samples per frame).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from components.configs import AutoencoderConfig, ModelConfig
from components.decoder import DECODERS
from components.durations import DurationPredictor, RangePredictor
from components.encoder import ENCODERS
from components.upsampler import UPSAMPLERS


@dataclass
class Conditioning:
    states: torch.Tensor  # (B, C, W): encoder states at frame rate for the frames asked for
    weights: torch.Tensor  # (B, W, N): how much each token contributes to each frame (alignment)


class WaveGrad2(nn.Module):
    def __init__(self, config: ModelConfig, vocab_size: int, autoencoder: AutoencoderConfig | None = None):
        super().__init__()
        self.config = config
        latent = config.space == "latent"
        self.signal_channels = 1
        if latent:
            if autoencoder is None:
                raise ValueError("model.space = 'latent' needs the autoencoder config")
            self.signal_channels = autoencoder.latent_channels
        self.encoder = ENCODERS.get(config.encoder)(config, vocab_size)
        channels = self.encoder.out_channels
        self.duration_predictor = DurationPredictor(channels, config.duration_channels)
        self.upsampler = UPSAMPLERS.get(config.upsampler)()
        self.range_predictor = (RangePredictor(channels, config.duration_channels, config.sigma_floor)
                                if self.upsampler.uses_range else None)
        self.decoder = DECODERS.get(config.decoder)(config.decoder_preset, channels, self.signal_channels,
                                                    config.upsample_factors)

    @property
    def hop(self) -> int:
        """Signal steps per frame the decoder produces (samples, or latent steps in latent space)."""
        return self.decoder.hop

    def encode(self, phoneme_ids: torch.Tensor, token_mask: torch.Tensor):
        """-> encoder states (B, N, C) and predicted log(1 + durations) (B, N)."""
        encoded = self.encoder(phoneme_ids, token_mask)
        return encoded, self.duration_predictor(encoded, token_mask)

    def condition(self, encoded: torch.Tensor, durations: torch.Tensor, token_mask: torch.Tensor,
                  frames: torch.Tensor) -> Conditioning:
        """Upsample encoder states to the frames asked for. durations: (B, N) frames; frames: (B, W) long."""
        sigma = self.range_predictor(encoded, durations, token_mask) if self.range_predictor is not None else None
        states, weights = self.upsampler(encoded, durations, sigma, token_mask, frames)
        return Conditioning(states.transpose(1, 2), weights)

    def denoise(self, noisy: torch.Tensor, condition: torch.Tensor, noise_level: torch.Tensor) -> torch.Tensor:
        return self.decoder(noisy, condition, noise_level)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
