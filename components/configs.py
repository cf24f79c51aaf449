"""Typed, frozen configs of the model's parts. Defaults are the paper's sizes; tiny runs override.
Checking them against the registries: components/validation.py. Each registry entry reads its own section
of these keys: its frozen `Config`, filled by key name (components/registry.py, config_section), whose
defaults are read from here (model_default)."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

# Field metadata of a key added after runs were recorded: the key is left out of a run's identity (its config
# hash) while it holds its default, so those runs keep their hashes (experiments/config/identity.py, config_hash).
ADDED_KEY = {"identity": "when not default"}


@dataclass(frozen=True)
class ModelConfig:
    # encoder (WaveGrad 2 sec. 2: Tacotron 2's encoder with ZoneOut)
    encoder: str = "wavegrad2"
    encoder_channels: int = 512  # embedding width = conv width = 2 x LSTM units per direction
    encoder_kernel_size: int = 5
    encoder_conv_layers: int = 3
    encoder_dropout: float = 0.5
    zoneout: float = 0.1  # 0 takes the fused LSTM; > 0 a cell loop with ZoneOut
    # duration and range prediction (Non-Attentive Tacotron sec. 3)
    duration_channels: int = 256  # units per direction of each predictor's BiLSTM
    sigma_floor: float = 0.1  # frames: the range predictor's softplus output never falls below this
    # resampling to frame rate
    upsampler: str = "gaussian"
    # decoder (WaveGrad fig. 3; WaveGrad 2 fig. 2)
    decoder: str = "wavegrad"
    decoder_preset: str = "base"
    upsample_factors: list[int] = field(default_factory=lambda: [5, 5, 3, 2, 2])  # coarse -> fine
    # where diffusion runs (components/spaces.py): the raw waveform, or the latent sequence of a learned autoencoder
    space: str = "waveform"
    # The diffusion signal is scaled to this corpus-wide standard deviation (the gain is measured on the
    # training split and stored in the checkpoint; synthesis divides it out). 0 keeps the waveform as it is, the
    # paper's choice (speech std 0.06-0.09, so most training noise levels bury it 10-27 dB under the noise), and
    # scales latents to the waveform's std. 1 (a departure the CPU configs take) puts both spaces at unit variance:
    # the text then decides more of the loss. Its effect is measured in results/departures.
    signal_std: float = field(default=0.0, metadata=ADDED_KEY)

    def decoder_hop(self) -> int:
        """Samples (or latent steps) per frame the decoder produces: the product of its factors."""
        return math.prod(self.upsample_factors)


def model_default(name: str) -> Any:
    """The dataclass field of a variant's own Config (components/registry.py) for the [model] key `name`: its
    default is ModelConfig's, so each default is declared once, here."""
    declared = ModelConfig.__dataclass_fields__[name]
    if declared.default_factory is not dataclasses.MISSING:
        return field(default_factory=declared.default_factory)
    return field(default=declared.default)


@dataclass(frozen=True)
class AutoencoderConfig:
    """Stage one of latent-space runs: a waveform autoencoder (used only when model.space = "latent")."""
    kind: str = "continuous"  # registry: continuous | vq
    stride: int = 16  # R: total downsampling of the encoder
    latent_channels: int = 16  # C
    hidden_channels: int = 64
    codebook_size: int = 256  # vq only: K
    commitment_weight: float = 0.25  # vq only
    ema_decay: float = 0.99  # vq only: codebook EMA
    steps: int = 2000
    batch_size: int = 16
    segment_samples: int = 8192
    learning_rate: float = 1e-3
    seed: int = 0

