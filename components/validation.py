"""Checks a model config against the registries of the parts (encoder, upsampler, decoder, signal space and
its autoencoder) and the sizes that must agree (decoder hop against the data's hop length, checked by the
signal space)."""
from __future__ import annotations

import math

from components.configs import AutoencoderConfig, ModelConfig
from components.decoder import DECODER_PRESETS, DECODERS
from components.encoder import ENCODERS
from components.spaces import SPACES
from components.upsampler import UPSAMPLERS


def validate_model_config(model: ModelConfig, autoencoder: AutoencoderConfig, hop_length: int) -> None:
    """Registry names and coupled sizes; raises ValueError naming the key and what is allowed."""
    if model.encoder not in ENCODERS:
        _unknown("model.encoder", model.encoder, ENCODERS.names())
    if model.upsampler not in UPSAMPLERS:
        _unknown("model.upsampler", model.upsampler, UPSAMPLERS.names())
    if model.decoder not in DECODERS:
        _unknown("model.decoder", model.decoder, DECODERS.names())
    if model.decoder_preset not in DECODER_PRESETS:
        _unknown("model.decoder_preset", model.decoder_preset, list(DECODER_PRESETS))
    if model.space not in SPACES:
        _unknown("model.space", model.space, SPACES.names())
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
    SPACES.build(model.space, autoencoder).check(model.upsample_factors, hop_length)


def _unknown(key: str, value: str, allowed: list[str]) -> None:
    raise ValueError(f"{key} = {value!r} is unknown; allowed: {', '.join(allowed)}")
