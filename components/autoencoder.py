"""Waveform autoencoders for latent-space diffusion (stage one of a two-stage model).

The idea is LSGM's (Vahdat et al. 2021) and NaturalSpeech 2's: train an autoencoder once, then run the
diffusion model on its compressed latent sequence instead of the raw waveform, and decode at the end.
The decoder network then runs at 1/R of the waveform rate per refinement step.

Variants (registry `AUTOENCODERS`, constructor `cls(config: AutoencoderConfig)`):
- `continuous`: a deterministic convolutional autoencoder; its latent is divided by a stored scale
  (`latent_scale`, set by `calibrate_scale` after training) so latents have unit variance and diffusion
  noise levels mean the same thing as on the waveform (the "scale factor" of latent diffusion).
- `vq`: the same networks with a vector-quantized bottleneck (VQ-VAE, van den Oord et al. 2017): nearest
  code, straight-through gradient, commitment loss, codebook learned by exponential moving averages
  (Razavi et al. 2019, VQ-VAE-2, app. A.1) with Laplace-smoothed cluster sizes, and dead codes restarted
  from encoder outputs of the current batch (Dhariwal et al. 2020, Jukebox sec. 2.3).

Length arithmetic: audio (B, T) with T % R == 0 -> latent (B, C, T // R) -> audio (B, T) exactly; other
lengths raise ValueError (callers pad or crop to a multiple of R).
"""
from __future__ import annotations

import abc
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from components.configs import AutoencoderConfig
from components.registry import Registry
from components.stft_loss import MultiResolutionSTFTLoss

# Per-block strides, coarse stages last; their product is R. Small strides first keep the early (wide in
# time, narrow in channels) layers cheap, and 4 is the largest factor so one kernel of 2*s taps sees
# every input sample of its output step.
STRIDE_FACTORS: dict[int, tuple[int, ...]] = {8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4)}
RESIDUAL_DILATIONS = (1, 3)  # two residual units per stage: receptive field grows before each downsample
DEAD_CODE_THRESHOLD = 1.0  # vq: a code whose EMA count (tokens per batch) falls below this is restarted
LAPLACE_EPS = 1e-5  # vq: additive smoothing of EMA cluster sizes, so no code divides by zero


def check_stride(stride: int) -> None:
    if stride not in STRIDE_FACTORS:
        allowed = ", ".join(str(s) for s in STRIDE_FACTORS)
        raise ValueError(f"autoencoder.stride = {stride!r}; allowed: {allowed}")


def _check_config(config: AutoencoderConfig) -> None:
    check_stride(config.stride)
    for key in ("latent_channels", "hidden_channels"):
        if getattr(config, key) < 1:
            raise ValueError(f"autoencoder.{key} = {getattr(config, key)!r}; expected a positive integer")


@dataclass
class AutoencoderOutput:
    reconstruction: torch.Tensor  # (B, T)
    latent: torch.Tensor  # (B, C, T // R), scaled: what `encode` returns
    aux_loss: torch.Tensor  # () : commitment loss for vq, 0 for continuous (already weighted)
    codebook_usage: torch.Tensor | None  # () : fraction of the K codes used in this batch; None if no codebook


class _ResidualUnit(nn.Module):
    def __init__(self, channels: int, dilation: int):
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, 7, dilation=dilation, padding=3 * dilation)
        self.proj = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, ch, L) -> (B, ch, L)
        return x + self.proj(F.elu(self.conv(F.elu(x))))


def _down(ch_in: int, ch_out: int, s: int) -> nn.Conv1d:
    # kernel 2s, padding s/2 (s even): L_out = (L + s - 2s) // s + 1 = L / s exactly when s | L
    return nn.Conv1d(ch_in, ch_out, 2 * s, stride=s, padding=s // 2)


def _up(ch_in: int, ch_out: int, s: int) -> nn.ConvTranspose1d:
    # L_out = (L - 1) s - 2 (s/2) + 2s = L s exactly: the mirror of `_down`
    return nn.ConvTranspose1d(ch_in, ch_out, 2 * s, stride=s, padding=s // 2)


class _Encoder(nn.Module):
    def __init__(self, factors: tuple[int, ...], hidden: int, latent: int):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv1d(1, hidden, 7, padding=3)]
        ch = hidden
        for s in factors:  # channels double at each downsampling
            layers += [_ResidualUnit(ch, d) for d in RESIDUAL_DILATIONS]
            layers += [nn.ELU(), _down(ch, 2 * ch, s)]
            ch *= 2
        layers += [nn.ELU(), nn.Conv1d(ch, latent, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:  # (B, 1, T) -> (B, C, T // R)
        return self.net(audio)


class _Decoder(nn.Module):
    def __init__(self, factors: tuple[int, ...], hidden: int, latent: int):
        super().__init__()
        ch = hidden * 2 ** len(factors)
        layers: list[nn.Module] = [nn.Conv1d(latent, ch, 7, padding=3)]
        for s in reversed(factors):
            layers += [nn.ELU(), _up(ch, ch // 2, s)]
            ch //= 2
            layers += [_ResidualUnit(ch, d) for d in RESIDUAL_DILATIONS]
        layers += [nn.ELU(), nn.Conv1d(ch, 1, 7, padding=3), nn.Tanh()]  # tanh: audio lies in [-1, 1]
        self.net = nn.Sequential(*layers)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:  # (B, C, L) -> (B, 1, L * R)
        return self.net(latent)


class WaveformAutoencoder(nn.Module, abc.ABC):
    """Interface of the family: encode/decode for diffusion, forward/loss for stage-one training.
    Built as `cls(config)`; its config section is the whole [autoencoder] section."""

    Config = AutoencoderConfig

    latent_scale: torch.Tensor  # buffer ()

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        _check_config(config)
        self.config = config
        self.stride: int = config.stride
        self.latent_channels: int = config.latent_channels
        factors = STRIDE_FACTORS[config.stride]
        self.encoder = _Encoder(factors, config.hidden_channels, config.latent_channels)
        self.decoder = _Decoder(factors, config.hidden_channels, config.latent_channels)
        self.stft_loss = MultiResolutionSTFTLoss()
        # raw latent = latent_scale * diffusion latent; 1 until `calibrate_scale` runs after training
        self.register_buffer("latent_scale", torch.ones(()))

    @abc.abstractmethod
    def _bottleneck(self, z: torch.Tensor, update: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Raw encoder output (B, C, L) -> (what the decoder sees (B, C, L), aux loss (), usage () or None)."""

    @abc.abstractmethod
    def _snap(self, z: torch.Tensor) -> torch.Tensor:
        """Raw latent (B, C, L) from outside (e.g. diffusion) -> what the decoder accepts (B, C, L)."""

    def _encode_raw(self, audio: torch.Tensor) -> torch.Tensor:
        if audio.dim() != 2:
            raise ValueError(f"autoencoder: expected audio of shape (B, T), got {tuple(audio.shape)}")
        if audio.shape[-1] % self.stride:
            raise ValueError(f"autoencoder: audio length {audio.shape[-1]} is not a multiple of autoencoder.stride "
                             f"= {self.stride}; pad or crop it to a multiple first")
        return self.encoder(audio.unsqueeze(1))  # (B, C, T // R)

    def encode(self, audio: torch.Tensor) -> torch.Tensor:
        """audio (B, T), T % R == 0 -> unit-variance latent (B, C, T // R). Never updates a codebook."""
        z, _, _ = self._bottleneck(self._encode_raw(audio), update=False)  # (B, C, L)
        return z / self.latent_scale

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """latent (B, C, L) in the scaled space of `encode` -> audio (B, L * R)."""
        if latent.dim() != 3 or latent.shape[1] != self.latent_channels:
            raise ValueError(f"autoencoder: expected latent (B, {self.latent_channels}, L), got {tuple(latent.shape)}")
        return self.decoder(self._snap(latent * self.latent_scale)).squeeze(1)  # (B, L * R)

    def forward(self, audio: torch.Tensor) -> AutoencoderOutput:
        z, aux, usage = self._bottleneck(self._encode_raw(audio), update=self.training)  # (B, C, L)
        reconstruction = self.decoder(z).squeeze(1)  # (B, T)
        return AutoencoderOutput(reconstruction, z / self.latent_scale, aux, usage)

    def loss(self, audio: torch.Tensor, output: AutoencoderOutput) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Waveform L1 + multi-resolution STFT (spectral convergence + log magnitude) + aux, equally weighted.
        Parts are detached scalars (call .item() only when logging, to avoid a device sync per step)."""
        l1 = F.l1_loss(output.reconstruction, audio)
        sc, log_mag = self.stft_loss(output.reconstruction, audio)
        total = l1 + sc + log_mag + output.aux_loss
        parts = {"l1": l1, "spectral_convergence": sc, "log_magnitude": log_mag, "aux": output.aux_loss,
                 "total": total}
        if output.codebook_usage is not None:
            parts["codebook_usage"] = output.codebook_usage
        return total, {k: v.detach() for k, v in parts.items()}

    @torch.no_grad()
    def calibrate_scale(self, latents: torch.Tensor) -> float:
        """Rescale so that latents have unit standard deviation. `latents` are outputs of `encode` under the
        current scale (any shape, e.g. a few batches concatenated), so calling it twice is harmless.
        Returns the new raw-space scale."""
        std = latents.detach().float().std()
        if not torch.isfinite(std) or std.item() <= 0:
            raise ValueError(f"autoencoder: cannot calibrate latent scale from latents with std {std.item()}")
        self.latent_scale.mul_(std.to(self.latent_scale))
        return float(self.latent_scale)


class ContinuousAutoencoder(WaveformAutoencoder):
    """Deterministic bottleneck: the encoder output is the latent (no KL term; the scale fixes the variance)."""

    def _bottleneck(self, z, update):
        return z, z.new_zeros(()), None

    def _snap(self, z):
        return z


class VQAutoencoder(WaveformAutoencoder):
    """Vector-quantized bottleneck: diffusion runs on the (scaled) quantized vectors. `decode` snaps its input
    to the nearest code first: the decoder was only trained on code vectors, and a diffusion sample that lies
    between codes is most plausibly the nearby code plus residual noise."""

    def __init__(self, config: AutoencoderConfig):
        super().__init__(config)
        self.codebook = EMACodebook(config.codebook_size, config.latent_channels, config.ema_decay,
                                    config.commitment_weight)

    def _bottleneck(self, z, update):
        return self.codebook(z, update)

    def _snap(self, z):
        return self.codebook.snap(z)


class EMACodebook(nn.Module):
    """K code vectors of size C, learned by EMA of the encoder outputs assigned to them (not by gradient)."""

    embedding: torch.Tensor  # buffers, registered in __init__
    cluster_size: torch.Tensor
    embed_sum: torch.Tensor
    initialized: torch.Tensor

    def __init__(self, size: int, dim: int, decay: float, commitment_weight: float):
        super().__init__()
        if size < 2:
            raise ValueError(f"autoencoder.codebook_size = {size!r}; expected an integer >= 2")
        if not 0.0 < decay < 1.0:
            raise ValueError(f"autoencoder.ema_decay = {decay!r}; expected 0 < decay < 1")
        if commitment_weight < 0:
            raise ValueError(f"autoencoder.commitment_weight = {commitment_weight!r}; expected >= 0")
        self.size, self.dim, self.decay, self.commitment_weight = size, dim, decay, commitment_weight
        self.register_buffer("embedding", torch.randn(size, dim))  # (K, C)
        self.register_buffer("cluster_size", torch.zeros(size))  # (K,) EMA of tokens per batch per code
        self.register_buffer("embed_sum", torch.zeros(size, dim))  # (K, C) EMA of summed assigned vectors
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    def nearest(self, flat: torch.Tensor) -> torch.Tensor:  # (N, C) -> (N,) code indices
        flat = flat.float()
        # |x - e|^2 = |x|^2 - 2 x.e + |e|^2; |x|^2 is constant per row, so it does not change the argmin
        dist = self.embedding.square().sum(1) - 2 * flat @ self.embedding.t()  # (N, K)
        return dist.argmin(1)

    def snap(self, z: torch.Tensor) -> torch.Tensor:  # (B, C, L) -> nearest codes (B, C, L)
        flat = z.transpose(1, 2).reshape(-1, self.dim)  # (B * L, C)
        return self.embedding[self.nearest(flat)].view(z.shape[0], z.shape[2], self.dim).transpose(1, 2).to(z)

    def forward(self, z: torch.Tensor, update: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, c, length = z.shape
        flat = z.transpose(1, 2).reshape(-1, c)  # (N = B * L, C)
        if update and not bool(self.initialized):
            self._init_from(flat.detach())
        index = self.nearest(flat)  # (N,)
        quantized = self.embedding[index].to(flat)  # (N, C)
        if update:
            self._ema_update(flat.detach().float(), index)
        commitment = self.commitment_weight * F.mse_loss(flat, quantized.detach())
        quantized = flat + (quantized - flat).detach()  # straight-through: decoder gradient reaches the encoder
        usage = (torch.bincount(index, minlength=self.size) > 0).float().mean()  # (): no host sync, unlike unique
        return quantized.view(b, length, c).transpose(1, 2), commitment, usage  # (B, C, L), (), ()

    @torch.no_grad()
    def _init_from(self, flat: torch.Tensor) -> None:
        # Data-dependent init: codes start on encoder outputs, not in empty regions of latent space.
        self.embedding.copy_(_sample_rows(flat, self.size))
        self.cluster_size.fill_(1.0)
        self.embed_sum.copy_(self.embedding)
        self.initialized.fill_(True)

    @torch.no_grad()
    def _ema_update(self, flat: torch.Tensor, index: torch.Tensor) -> None:  # flat (N, C), index (N,)
        onehot = F.one_hot(index, self.size).type(flat.dtype)  # (N, K)
        counts, sums = onehot.sum(0), onehot.t() @ flat  # (K,), (K, C)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + LAPLACE_EPS) / (n + self.size * LAPLACE_EPS) * n  # (K,) Laplace
        self.embedding.copy_(self.embed_sum / smoothed.unsqueeze(1))
        dead = self.cluster_size < DEAD_CODE_THRESHOLD  # (K,)
        n_dead = int(dead.sum())
        if n_dead:
            fresh = _sample_rows(flat, n_dead)  # (n_dead, C)
            self.embedding[dead] = fresh
            self.embed_sum[dead] = fresh * DEAD_CODE_THRESHOLD
            self.cluster_size[dead] = DEAD_CODE_THRESHOLD


def _sample_rows(flat: torch.Tensor, n: int) -> torch.Tensor:  # (N, C) -> (n, C) distinct where N >= n
    pick = torch.randperm(flat.shape[0], device=flat.device)[:n]
    if pick.numel() < n:  # fewer tokens than codes: repeat with a little noise so codes stay distinct
        pick = torch.randint(flat.shape[0], (n,), device=flat.device)
        return flat[pick] + 1e-3 * flat.std() * torch.randn(n, flat.shape[1], device=flat.device, dtype=flat.dtype)
    return flat[pick]


AUTOENCODERS: Registry[WaveformAutoencoder] = Registry(
    "autoencoder", WaveformAutoencoder, {"continuous": ContinuousAutoencoder, "vq": VQAutoencoder})


def latent_length(samples: int, stride: int) -> int:
    """Latent steps for `samples` waveform samples; raises ValueError unless samples % stride == 0."""
    check_stride(stride)
    if samples % stride:
        raise ValueError(f"autoencoder: {samples} samples is not a multiple of autoencoder.stride = {stride}")
    return samples // stride


__all__ = ["AUTOENCODERS", "AutoencoderOutput", "ContinuousAutoencoder", "EMACodebook", "STRIDE_FACTORS",
           "VQAutoencoder", "WaveformAutoencoder", "check_stride", "latent_length"]
