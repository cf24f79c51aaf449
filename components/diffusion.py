"""Diffusion in WaveGrad's continuous noise-level form. Owns the schedule, the noising, the loss and the
sampler; the network is passed in as a function (noisy, noise_level) -> predicted noise."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from components.schedules import check_betas

NoisePredictor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# The noise-prediction losses: WaveGrad's L1 (the paper's) and DDPM's L2. Every list of loss kinds reads this one.
LOSS_KINDS = ("l1", "l2")


def add_noise(signal: torch.Tensor, noise: torch.Tensor, level: torch.Tensor | float) -> torch.Tensor:
    """WaveGrad's noising at continuous level a = sqrt(alpha_bar): a * signal + sqrt(1 - a^2) * noise.
    signal, noise: (B, C, T); level: (B,) or a float."""
    if isinstance(level, torch.Tensor):
        level = level.reshape(-1, *([1] * (signal.dim() - 1)))  # (B, 1, 1)
        return level * signal + torch.sqrt(1 - level**2) * noise
    return level * signal + (1 - level**2) ** 0.5 * noise


def noise_error(predicted: torch.Tensor, noise: torch.Tensor, kind: str) -> torch.Tensor:
    """Elementwise error of a noise estimate: |e| (l1) or e^2 (l2), in float32. (B, C, T)"""
    if kind not in LOSS_KINDS:
        raise ValueError(f"noise loss {kind!r}; allowed: {', '.join(LOSS_KINDS)}")
    err = predicted.float() - noise
    return err.abs() if kind == "l1" else err**2


def gaussian(shape: tuple[int, ...], generator: torch.Generator | None, device) -> torch.Tensor:
    """N(0, I) drawn on the generator's device (seeded runs repeat exactly), then moved to `device`."""
    if generator is None:
        return torch.randn(shape, device=device)
    return torch.randn(shape, generator=generator, device=generator.device).to(device)


class NonFiniteError(FloatingPointError):
    """A NaN or inf appeared in a loss or a sample; the message names the step."""


class Diffusion:
    def __init__(self, train_betas: np.ndarray, loss: str = "l1"):
        betas = check_betas(train_betas, "training schedule")
        # levels[s] = sqrt(alpha_bar) after s steps; levels[0] = 1 (clean signal)
        self.levels = np.concatenate([[1.0], np.sqrt(np.cumprod(1.0 - betas))])
        if loss not in LOSS_KINDS:
            raise ValueError(f"noise loss {loss!r}; allowed: {', '.join(LOSS_KINDS)}")
        self.loss_kind = loss

    def sample_noise_level(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """WaveGrad's continuous conditioning: pick a step s, then a level uniformly between
        levels[s-1] and levels[s] of the training schedule. (B,) float32."""
        steps = len(self.levels) - 1
        on = generator.device if generator is not None else "cpu"
        s = torch.randint(1, steps + 1, (batch,), generator=generator, device=on).cpu()
        u = torch.rand(batch, generator=generator, dtype=torch.float64, device=on).cpu()
        levels = torch.from_numpy(self.levels)
        return (levels[s - 1] + u * (levels[s] - levels[s - 1])).float()

    def loss(self, predict: NoisePredictor, clean: torch.Tensor, mask: torch.Tensor | None = None,
             generator: torch.Generator | None = None, step: int | None = None) -> torch.Tensor:
        """Noise-prediction loss. clean: (B, C, T); mask: (B, 1, T) with 1 where the signal is real."""
        level = self.sample_noise_level(clean.shape[0], generator).to(clean.device)  # (B,)
        noise = gaussian(clean.shape, generator, clean.device)
        err = noise_error(predict(add_noise(clean, noise, level), level), noise, self.loss_kind)
        if mask is None:
            value = err.mean()
        else:
            value = (err * mask).sum() / (mask.sum() * err.shape[1]).clamp(min=1)
        if not torch.isfinite(value):
            raise NonFiniteError(f"non-finite noise loss ({value.item()}) at training step {step}")
        return value

    @staticmethod
    @torch.no_grad()
    def sample(predict: NoisePredictor, shape: tuple[int, ...], betas: np.ndarray, device: torch.device | str = "cpu",
               generator: torch.Generator | None = None, clip: float | None = 1.0) -> torch.Tensor:
        """DDPM ancestral sampling for any schedule: start from N(0, I) and refine len(betas) times.

        At step n the network's noise estimate gives the clean-signal estimate
        x0_hat = (x_n - sqrt(1 - alpha_bar_n) * eps) / sqrt(alpha_bar_n), clipped to [-clip, clip] when
        `clip` is not None (`clip` is the signal's range: 1.0 for waveforms; None leaves it unbounded).
        The next sample is the DDPM posterior mean
        sqrt(alpha_bar_{n-1}) * beta_n / (1 - alpha_bar_n) * x0_hat
            + sqrt(alpha_n) * (1 - alpha_bar_{n-1}) / (1 - alpha_bar_n) * x_n
        (alpha_bar_{-1} = 1, so the last step returns x0_hat) plus sigma_n * N(0, I),
        sigma_n = sqrt((1 - alpha_bar_{n-1}) / (1 - alpha_bar_n) * beta_n), for n > 0.

        Without clipping this equals WaveGrad's Alg. 2 update
        (x_n - beta_n / sqrt(1 - alpha_bar_n) * eps) / sqrt(alpha_n).
        Clipping x0_hat at every step (not only the final sample) is what keeps the sampler bounded: at high
        noise 1/sqrt(alpha_bar_n) is large, so a modest error in eps makes an unbounded x0 estimate, and
        feeding that back step after step is what diverged latent R=8 at refinement step 38 of 50.
        A non-finite noise estimate or sample raises NonFiniteError naming the refinement step."""
        betas = check_betas(betas, "inference schedule")
        alpha_bar = np.cumprod(1.0 - betas)
        x = gaussian(shape, generator, device)
        steps = len(betas)
        for n in reversed(range(steps)):
            level = torch.full((shape[0],), float(np.sqrt(alpha_bar[n])), device=device)
            eps = predict(x, level).float()
            if not torch.isfinite(eps).all():  # clipping would hide it
                raise NonFiniteError(f"non-finite noise estimate at refinement step {steps - n} of {steps}")
            x = Diffusion.step(x, eps, n, betas, clip, generator)
            if not torch.isfinite(x).all():
                raise NonFiniteError(f"non-finite sample at refinement step {steps - n} of {steps}")
        return x

    @staticmethod
    def step(x: torch.Tensor, eps: torch.Tensor, n: int, betas: np.ndarray, clip: float | None = 1.0,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """One refinement step of `sample` (see its docstring): x_n and the noise estimate eps -> x_{n-1}.
        n counts down from len(betas) - 1 to 0; at n = 0 it returns the clipped clean-signal estimate."""
        alphas = 1.0 - betas
        alpha_bar = np.cumprod(alphas)
        x0_hat = (x - np.sqrt(1 - alpha_bar[n]) * eps) / np.sqrt(alpha_bar[n])
        if clip is not None:
            x0_hat = x0_hat.clamp(-clip, clip)
        if n == 0:  # alpha_bar_{-1} = 1: the coefficients are exactly 1 and 0
            return x0_hat
        coef_x0 = np.sqrt(alpha_bar[n - 1]) * betas[n] / (1 - alpha_bar[n])
        coef_x = np.sqrt(alphas[n]) * (1 - alpha_bar[n - 1]) / (1 - alpha_bar[n])
        sigma = np.sqrt((1 - alpha_bar[n - 1]) / (1 - alpha_bar[n]) * betas[n])
        return coef_x0 * x0_hat + coef_x * x + sigma * gaussian(tuple(x.shape), generator, x.device)
