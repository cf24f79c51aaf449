"""Signal spaces: where diffusion runs (`model.space`, registry `SPACES`). Callers use a space's methods
instead of branching on its name.

- `waveform`: the raw waveform, one channel, one signal step per sample (WaveGrad 2).
- `latent`: the latent sequence of a stage-one waveform autoencoder (components/autoencoder.py), with
  `autoencoder.latent_channels` channels and one signal step per `autoencoder.stride` samples
  (LSGM-style two-stage latent diffusion). Its config section is the [autoencoder] section.

Built like every registry entry: `cls(config: cls.Config)`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from components.autoencoder import AUTOENCODERS, WaveformAutoencoder, check_stride
from components.configs import AutoencoderConfig
from components.registry import Registry


@dataclass(frozen=True)
class NoSettings:
    """The config section of a space without settings."""


class SignalSpace:
    """Interface. audio (B, T) <-> diffusion signal (B, signal_channels, T // hop_divisor)."""

    Config: type = NoSettings
    config: Any

    uses_autoencoder: bool = False  # whether encode/decode need a trained stage-one autoencoder
    # the range an unscaled (gain 1) signal is clipped to when sampling; None: unbounded
    unscaled_clip: float | None = None

    def __init__(self, config: Any = None):
        self.config = config if config is not None else self.Config()

    @property
    def signal_channels(self) -> int:
        raise NotImplementedError

    @property
    def hop_divisor(self) -> int:
        """Waveform samples per signal step: the decoder's hop is data.hop_length / hop_divisor."""
        raise NotImplementedError

    def check(self, upsample_factors: list[int], hop_length: int) -> None:
        """The decoder's hop against the data's; raises ValueError naming the keys."""
        raise NotImplementedError

    def build_autoencoder(self) -> WaveformAutoencoder | None:
        """A fresh (untrained) stage-one autoencoder of this space, or None when it needs none."""
        return None

    def encode(self, audio: torch.Tensor, autoencoder: WaveformAutoencoder | None = None) -> torch.Tensor:
        """audio (B, T) -> signal (B, C, T // hop_divisor), the tail that fills no signal step cropped."""
        raise NotImplementedError

    def decode(self, signal: torch.Tensor, autoencoder: WaveformAutoencoder | None = None) -> torch.Tensor:
        """signal (B, C, L) -> audio (B, L * hop_divisor)."""
        raise NotImplementedError

    @torch.no_grad()
    def encode_each(self, audios: list[np.ndarray], autoencoder: WaveformAutoencoder | None = None) -> list[np.ndarray]:
        """Each waveform (T,) float32 -> its signal (C, T // hop_divisor) as a float32 array on the CPU."""
        return [self.encode(torch.from_numpy(a[None]), autoencoder)[0].float().cpu().numpy() for a in audios]


class WaveformSpace(SignalSpace):
    unscaled_clip = 1.0  # audio lies in [-1, 1]

    @property
    def signal_channels(self) -> int:
        return 1

    @property
    def hop_divisor(self) -> int:
        return 1

    def check(self, upsample_factors: list[int], hop_length: int) -> None:
        if math.prod(upsample_factors) != hop_length:
            raise ValueError(f"hop mismatch: product of model.upsample_factors {upsample_factors} = "
                             f"{math.prod(upsample_factors)} but data.hop_length = {hop_length}")

    def encode(self, audio, autoencoder=None):
        return audio[:, None, :]

    def decode(self, signal, autoencoder=None):
        return signal[:, 0]


class LatentSpace(SignalSpace):
    Config = AutoencoderConfig
    config: AutoencoderConfig
    uses_autoencoder = True

    @property
    def signal_channels(self) -> int:
        return self.config.latent_channels

    @property
    def hop_divisor(self) -> int:
        return self.config.stride

    def check(self, upsample_factors: list[int], hop_length: int) -> None:
        config = self.config
        if config.kind not in AUTOENCODERS:
            allowed = ", ".join(AUTOENCODERS.names())
            raise ValueError(f"autoencoder.kind = {config.kind!r} is unknown; allowed: {allowed}")
        check_stride(config.stride)
        if hop_length % config.stride:
            raise ValueError(f"data.hop_length = {hop_length} is not divisible by autoencoder.stride = "
                             f"{config.stride}: latent frames would not line up with phoneme frames")
        decoder_hop = math.prod(upsample_factors)
        if decoder_hop * config.stride != hop_length:
            raise ValueError(f"hop mismatch in latent space: product of model.upsample_factors "
                             f"{upsample_factors} = {decoder_hop} must equal data.hop_length / "
                             f"autoencoder.stride = {hop_length} / {config.stride} = "
                             f"{hop_length // config.stride}")

    def build_autoencoder(self) -> WaveformAutoencoder:
        return AUTOENCODERS.build(self.config.kind, self.config)

    def encode(self, audio, autoencoder=None):
        audio = audio[:, :audio.shape[-1] - audio.shape[-1] % self.hop_divisor]
        return self._require(autoencoder).encode(audio.to(autoencoder.latent_scale.device))

    def decode(self, signal, autoencoder=None):
        return self._require(autoencoder).decode(signal)

    @staticmethod
    def _require(autoencoder: WaveformAutoencoder | None) -> WaveformAutoencoder:
        if autoencoder is None:
            raise ValueError("latent space: encode and decode need the trained stage-one autoencoder")
        return autoencoder


SPACES: Registry[SignalSpace] = Registry("signal space", SignalSpace,
                                         {"waveform": WaveformSpace, "latent": LatentSpace})
