"""The published formulas, each checked against a hand computation or a reference layout, and each check shown to fail
on a deliberately broken variant inside the test: the noising formula, the training noise-level distribution, the
Gaussian upsampler with per-token sigma, and the decoder's UBlock dilations and FiLM order (lmnt-com/wavegrad)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from components import decoder as decoder_module
from components.configs import ModelConfig
from components.decoder import DECODERS, LEAK, UBlock, noise_level_embedding
from components.diffusion import Diffusion, add_noise
from components.schedules import resolve_schedule_name
from components.upsampler import GaussianUpsampler

# ----------------------------------------------------------------------------- the noising formula

def broken_add_noise(signal, noise, level):
    """sqrt(1 - a) where WaveGrad has sqrt(1 - a^2)."""
    level = torch.as_tensor(level, dtype=signal.dtype).reshape(-1, *([1] * (signal.dim() - 1)))
    return level * signal + torch.sqrt(1 - level) * noise


def check_noising(noise_fn) -> None:
    """a * x + sqrt(1 - a^2) * eps by hand at a few points, and the variance a^2 var(x) + 1 - a^2 on 400k draws."""
    x = torch.tensor([[[0.5, -1.0, 0.25]], [[2.0, 0.0, -0.5]]])
    eps = torch.tensor([[[1.0, 0.5, -2.0]], [[-1.0, 1.5, 0.0]]])
    a = torch.tensor([0.6, 0.28])
    by_hand = torch.tensor([[[0.6 * 0.5 + 0.8 * 1.0, 0.6 * -1.0 + 0.8 * 0.5, 0.6 * 0.25 + 0.8 * -2.0]],
                            [[0.28 * 2.0 + 0.96 * -1.0, 0.96 * 1.5, 0.28 * -0.5]]])  # sqrt(1 - 0.6^2) = 0.8 ...
    assert torch.allclose(noise_fn(x, eps, a), by_hand, atol=1e-6)
    assert torch.allclose(noise_fn(x[:1], eps[:1], 0.6), by_hand[:1], atol=1e-6)  # a float level
    generator = torch.Generator().manual_seed(0)
    std = 0.3
    for level in (0.2, 0.7, 0.95):
        signal = std * torch.randn(1, 1, 400_000, generator=generator)
        noisy = noise_fn(signal, torch.randn(1, 1, 400_000, generator=generator), torch.tensor([level]))
        expected = level**2 * std**2 + 1 - level**2
        assert float(noisy.var()) == pytest.approx(expected, rel=0.01), level


def test_noising_is_a_x_plus_sqrt_one_minus_a_squared_noise():
    check_noising(add_noise)
    with pytest.raises(AssertionError):
        check_noising(broken_add_noise)


# ----------------------------------------------------------------------------- training noise levels

DRAWS = 200_000


def mixture_cdf(levels: np.ndarray):
    """WaveGrad's continuous noise level: step s uniform on 1..N, then uniform between levels[s] and levels[s-1]."""
    low, high = levels[1:], levels[:-1]

    def cdf(x):
        x = np.asarray(x, dtype=np.float64)[..., None]
        return np.clip((x - low) / (high - low), 0.0, 1.0).mean(-1)
    return cdf


def check_noise_levels(draw, levels: np.ndarray) -> None:
    """A KS test of 200k draws against the exact mixture: the correct sampler passes at 1%."""
    sample = draw(DRAWS, torch.Generator().manual_seed(0)).double().numpy()
    assert sample.min() >= levels[-1] - 1e-6 and sample.max() <= 1.0
    assert stats.kstest(sample, mixture_cdf(levels)).pvalue > 0.01


def test_training_noise_levels_are_uniform_between_adjacent_schedule_levels():
    diffusion = Diffusion(resolve_schedule_name("linear-6"))  # six wide intervals: the variants differ clearly
    levels = diffusion.levels
    steps = len(levels) - 1
    table = torch.from_numpy(levels)
    check_noise_levels(diffusion.sample_noise_level, levels)

    def uniform(n, generator):  # U(lowest, 1)
        return (levels[-1] + torch.rand(n, generator=generator, dtype=torch.float64) * (1 - levels[-1])).float()

    def step_from_zero(n, generator):  # s from 0..N-1: levels[-1] wraps round, the noisiest interval is never drawn
        s = torch.randint(0, steps, (n,), generator=generator)
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        return (table[s - 1] + u * (table[s] - table[s - 1])).float()

    def next_interval(n, generator):  # levels[s], levels[s+1] for s in 1..N-1: the cleanest interval is never drawn
        s = torch.randint(1, steps, (n,), generator=generator)
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        return (table[s] + u * (table[s + 1] - table[s])).float()

    for broken in (uniform, step_from_zero, next_interval):
        with pytest.raises(AssertionError):
            check_noise_levels(broken, levels)


# ----------------------------------------------------------------------------- the Gaussian upsampler

class GaussianWithoutLogSigma(GaussianUpsampler):
    """The broken variant: the normal density's 1/sigma factor dropped (the same as it only while sigmas are equal)."""

    def forward(self, encoded, durations, sigma, token_mask, frames):
        centres = torch.cumsum(durations.float(), dim=1) - durations.float() / 2
        z = (frames.float()[..., None] + 0.5 - centres[:, None, :]) / sigma[:, None, :]
        logits = (-0.5 * z**2).masked_fill(~token_mask.bool()[:, None, :], float("-inf"))
        weights = torch.softmax(logits, dim=-1)
        return weights @ encoded, weights


def check_gaussian(upsampler, sigma: list[float]) -> None:
    """Weights w_ti = N(t + 0.5; c_i, sigma_i^2) / sum_k N(t + 0.5; c_k, sigma_k^2) by hand (Non-Attentive Tacotron
    sec. 3.1), with a padded fifth token that gets no weight."""
    durations = np.array([2.0, 3.0, 1.0, 4.0])
    centres = np.cumsum(durations) - durations / 2
    t = np.arange(10) + 0.5
    s = np.asarray(sigma)
    density = np.exp(-0.5 * ((t[:, None] - centres[None, :]) / s) ** 2) / (s * np.sqrt(2 * np.pi))  # (T, N)
    by_hand = density / density.sum(1, keepdims=True)
    encoded = torch.randn(1, 5, 3, generator=torch.Generator().manual_seed(0))
    states, weights = upsampler(encoded, torch.tensor([[*durations, 0.0]]), torch.tensor([[*sigma, 1.0]]),
                                torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0]]), torch.arange(10)[None])
    assert torch.all(weights[0, :, 4] == 0)
    np.testing.assert_allclose(weights[0, :, :4].double().numpy(), by_hand, atol=1e-6)
    np.testing.assert_allclose(states[0].double().numpy(), by_hand @ encoded[0, :4].double().numpy(), atol=1e-5)


def test_gaussian_upsampler_weights_with_per_token_sigma_match_the_normal_density():
    different = [0.5, 2.0, 1.0, 3.0]
    check_gaussian(GaussianUpsampler(), different)
    check_gaussian(GaussianWithoutLogSigma(), [1.5] * 4)  # equal sigmas cannot tell the two apart ...
    with pytest.raises(AssertionError):
        check_gaussian(GaussianWithoutLogSigma(), different)  # ... differing ones do


# ----------------------------------------------------------------------------- the decoder against lmnt-com/wavegrad

# lmnt-com/wavegrad src/wavegrad/model.py (commit 1e26e08), class WaveGrad: its UBlocks
#   UBlock(768, 512, 5, [1, 2, 1, 2]), UBlock(512, 512, 5, [1, 2, 1, 2]), UBlock(512, 256, 3, [1, 2, 4, 8]),
#   UBlock(256, 128, 2, [1, 2, 4, 8]), UBlock(128, 128, 2, [1, 2, 4, 8])
# its FiLMs (fine -> coarse) FiLM(32, 128), FiLM(128, 128), FiLM(128, 256), FiLM(256, 512), FiLM(512, 512),
# and its DBlocks DBlock(32, 128, 2), DBlock(128, 128, 2), DBlock(128, 256, 3), DBlock(256, 512, 5).
LMNT_UBLOCKS = [(768, 512, 5, (1, 2, 1, 2)), (512, 512, 5, (1, 2, 1, 2)), (512, 256, 3, (1, 2, 4, 8)),
                (256, 128, 2, (1, 2, 4, 8)), (128, 128, 2, (1, 2, 4, 8))]
LMNT_FILMS = [(32, 128), (128, 128), (128, 256), (256, 512), (512, 512)]
LMNT_DBLOCKS = [(32, 128, 2), (128, 128, 2), (128, 256, 3), (256, 512, 5)]


def check_layout(decoder) -> None:
    ublocks = [(b.convs[0].in_channels, b.convs[0].out_channels, b.factor, tuple(c.dilation[0] for c in b.convs))
               for b in decoder.upsample]
    assert ublocks == LMNT_UBLOCKS
    assert [(f.input_conv.in_channels, f.scale_conv.out_channels) for f in decoder.films] == LMNT_FILMS
    assert [(b.shortcut.in_channels, b.shortcut.out_channels, b.factor) for b in decoder.downsample] == LMNT_DBLOCKS


def test_decoder_layout_is_lmnt_wavegrads(monkeypatch):
    def build():
        return DECODERS.build("wavegrad", ModelConfig(), cond_channels=128, signal_channels=1)

    check_layout(build())
    monkeypatch.setattr(decoder_module, "COARSE_DILATIONS", decoder_module.FINE_DILATIONS)
    monkeypatch.setattr(decoder_module, "FINE_DILATIONS", (1, 2, 1, 2))
    with pytest.raises(AssertionError):
        check_layout(build())  # the dilations swapped


def lmnt_film(film, x, level):
    """lmnt's FiLM.forward: input_conv, leaky ReLU, + the noise-level encoding, then (shift, scale)."""
    x = F.leaky_relu(film.input_conv(x), LEAK) + noise_level_embedding(level, x.shape[1])[..., None]
    return film.shift_conv(x), film.scale_conv(x)


def lmnt_ublock(block, x, shift, scale):
    """lmnt's UBlock.forward, line by line (the FiLM as shift + scale * h before each activation but the first)."""
    size = x.shape[-1] * block.factor
    block1 = block.shortcut(F.interpolate(x, size=size))
    block2 = block.convs[0](F.interpolate(F.leaky_relu(x, LEAK), size=size))
    block2 = block.convs[1](F.leaky_relu(shift + scale * block2, LEAK))
    x = block1 + block2
    block3 = block.convs[2](F.leaky_relu(shift + scale * x, LEAK))
    block3 = block.convs[3](F.leaky_relu(shift + scale * block3, LEAK))
    return x + block3


def lmnt_decoder(decoder, audio, condition, level):
    """lmnt's WaveGrad.forward on this decoder's layers: FiLM k of the DBlock outputs feeds UBlock N-1-k."""
    x, downsampled = audio, []
    for film, layer in zip(decoder.films, [decoder.signal_conv, *decoder.downsample]):
        x = layer(x)
        downsampled.append(lmnt_film(film, x, level))
    x = decoder.input_conv(condition)
    for layer, (shift, scale) in zip(decoder.upsample, reversed(downsampled)):
        x = lmnt_ublock(layer, x, shift, scale)
    return decoder.output_conv(x)


def check_film_order(decoder) -> None:
    generator = torch.Generator().manual_seed(0)
    for parameter in decoder.output_conv.parameters():  # zero at init: give the output something to show
        parameter.data = torch.randn(parameter.shape, generator=generator)
    audio = torch.randn(2, 1, 3 * decoder.hop, generator=generator)
    condition = torch.randn(2, 8, 3, generator=generator)
    level = torch.tensor([0.3, 0.9])
    with torch.no_grad():
        torch.testing.assert_close(decoder(audio, condition, level), lmnt_decoder(decoder, audio, condition, level),
                                   rtol=1e-4, atol=1e-5)


def test_decoder_applies_film_in_lmnt_wavegrads_order(monkeypatch):
    config = dataclasses.replace(ModelConfig(), decoder_preset="tiny")
    decoder = DECODERS.build("wavegrad", config, cond_channels=8, signal_channels=1)
    check_film_order(decoder)
    forward = UBlock.forward
    monkeypatch.setattr(UBlock, "forward", lambda self, x, scale, shift: forward(self, x, shift, scale))
    with pytest.raises(AssertionError):
        check_film_order(decoder)  # scale and shift swapped
    monkeypatch.setattr(UBlock, "forward", lambda self, x, scale, shift: forward(self, x, scale, scale * shift))
    with pytest.raises(AssertionError):
        check_film_order(decoder)  # scale * (h + shift)
