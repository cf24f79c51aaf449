"""Typed, frozen configs of the model's parts. Defaults are the paper's sizes; tiny runs override."""
from __future__ import annotations

import math
from dataclasses import dataclass, field


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
    # where diffusion runs: the raw waveform, or the latent sequence of a learned autoencoder
    space: str = "waveform"
    # The diffusion signal is scaled to this corpus-wide standard deviation (the gain is measured on the
    # training split and stored in the checkpoint; synthesis divides it out). 0 keeps the waveform as it is
    # (WaveGrad: speech std 0.06-0.09, so most training noise levels bury it 10-27 dB under the noise and
    # the text barely changes the loss) and scales latents to the waveform's std. 1 puts both spaces at unit
    # variance: the text then decides most of the loss, and the decoder learns to read it many times faster.
    signal_std: float = 1.0

    def decoder_hop(self) -> int:
        """Samples (or latent steps) per frame the decoder produces: the product of its factors."""
        return math.prod(self.upsample_factors)


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


SPACES = ("waveform", "latent")


def validate_model_config(model: ModelConfig, autoencoder: AutoencoderConfig, hop_length: int) -> None:
    """Registry names and coupled sizes; raises ValueError naming the key and what is allowed."""
    from components.autoencoder import AUTOENCODERS, check_stride
    from components.decoder import DECODERS, DECODER_PRESETS
    from components.encoder import ENCODERS
    from components.upsampler import UPSAMPLERS

    if model.encoder not in ENCODERS:
        _unknown("model.encoder", model.encoder, ENCODERS.names())
    if model.upsampler not in UPSAMPLERS:
        _unknown("model.upsampler", model.upsampler, UPSAMPLERS.names())
    if model.decoder not in DECODERS:
        _unknown("model.decoder", model.decoder, DECODERS.names())
    if model.decoder_preset not in DECODER_PRESETS:
        _unknown("model.decoder_preset", model.decoder_preset, list(DECODER_PRESETS))
    if model.space not in SPACES:
        _unknown("model.space", model.space, list(SPACES))
    if not model.upsample_factors or any(f < 1 for f in model.upsample_factors):
        raise ValueError(f"model.upsample_factors = {model.upsample_factors}; expected positive integers")
    if not 0.0 <= model.zoneout < 1.0:
        raise ValueError(f"model.zoneout = {model.zoneout}; expected 0 <= zoneout < 1")
    if not (math.isfinite(model.signal_std) and model.signal_std >= 0):
        raise ValueError(f"model.signal_std = {model.signal_std}; expected a finite number >= 0 (0 = unscaled)")
    if model.sigma_floor <= 0:
        raise ValueError(f"model.sigma_floor = {model.sigma_floor}; expected > 0")
    max_levels = len(DECODER_PRESETS[model.decoder_preset]["ublocks"])
    if len(model.upsample_factors) > max_levels:
        raise ValueError(f"model.upsample_factors has {len(model.upsample_factors)} levels; preset "
                         f"{model.decoder_preset!r} has {max_levels}")
    if model.space == "waveform":
        if model.decoder_hop() != hop_length:
            raise ValueError(f"hop mismatch: product of model.upsample_factors {model.upsample_factors} = "
                             f"{model.decoder_hop()} but data.hop_length = {hop_length}")
    else:
        if autoencoder.kind not in AUTOENCODERS:
            _unknown("autoencoder.kind", autoencoder.kind, AUTOENCODERS.names())
        check_stride(autoencoder.stride)
        if hop_length % autoencoder.stride:
            raise ValueError(f"data.hop_length = {hop_length} is not divisible by autoencoder.stride = "
                             f"{autoencoder.stride}: latent frames would not line up with phoneme frames")
        if model.decoder_hop() * autoencoder.stride != hop_length:
            raise ValueError(f"hop mismatch in latent space: product of model.upsample_factors "
                             f"{model.upsample_factors} = {model.decoder_hop()} must equal data.hop_length / "
                             f"autoencoder.stride = {hop_length} / {autoencoder.stride} = {hop_length // autoencoder.stride}")


def _unknown(key: str, value: str, allowed: list[str]) -> None:
    raise ValueError(f"{key} = {value!r} is unknown; allowed: {', '.join(allowed)}")
