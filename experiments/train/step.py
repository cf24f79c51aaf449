"""One training step: the function `wg2 train` runs at every step and `wg2 bench` times, so the benchmark measures
the step a config trains with (its loss terms, weight averaging and gradient clipping).

Loss = noise loss (L1 on the predicted noise, on a random window; train.noise_loss) + train.duration_loss_weight x
duration loss (L2 on log(1 + frames)) + train.mel_loss_weight x the auxiliary mel loss (experiments/train/
mel_targets.py). Then AdamW on the clipped gradients (train.grad_clip), the learning rate warmed up and decayed
(learning_rate_factor), and the moving average of the weights updated (train.ema_decay; 0 = none). Dropout and
ZoneOut masks and the added noise are functions of (train.seed, step), so a resumed run repeats an uninterrupted
one. Only the network runs under bf16 autocast (train.precision); the diffusion arithmetic stays fp32.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from components.diffusion import Diffusion
from components.durations import DurationPredictor
from components.model import WaveGrad2
from experiments.config.run import TrainConfig
from experiments.config.schedules import resolve_schedule
from experiments.train.batches import Batch
from experiments.train.mel_targets import N_MELS
from experiments.train.precision import autocast


def learning_rate_factor(step: int, warmup: int, total: int, decay: str = "none") -> float:
    """Linear warm-up over `warmup` steps, then constant ("none") or cosine decay to 10% of the peak ("cosine")."""
    if step < warmup:
        return (step + 1) / warmup
    if decay == "none":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


class EMA:
    """Exponential moving average of a model's floating-point weights (buffers copied as they are)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].mul_(d).add_(v.detach(), alpha=1 - d)
            else:
                self.shadow[k].copy_(v)

    def state_dict(self) -> dict:
        return self.shadow

    def load_state_dict(self, state: dict) -> None:
        self.shadow = {k: v.clone() for k, v in state.items()}

    def copy_to(self, model: torch.nn.Module) -> None:
        model.load_state_dict(self.shadow)


def mel_regression_loss(head: torch.nn.Linear, states: torch.Tensor, target: torch.Tensor,
                        frame_mask: torch.Tensor) -> torch.Tensor:
    """Masked mean squared error of head(states) against the standardized log-mel. states (B, C, W);
    target (B, W, M); frame_mask (B, W)."""
    err = (head(states.transpose(1, 2)).float() - target) ** 2 * frame_mask[..., None]  # (B, W, M)
    return err.sum() / (frame_mask.sum() * target.shape[-1]).clamp(min=1)


@dataclass
class StepLosses:
    loss: torch.Tensor  # the weighted sum that was minimised
    noise_loss: torch.Tensor
    duration_loss: torch.Tensor
    mel_loss: torch.Tensor  # 0 without the auxiliary head


class TrainingStep:
    """What one training optimises and how: the model, the auxiliary mel head (when train.mel_loss_weight > 0),
    the diffusion of train.schedule, AdamW over both and the moving average. Calling it runs one step."""

    def __init__(self, model: WaveGrad2, t: TrainConfig, device: torch.device, dtype: torch.dtype | None):
        self.model, self.t, self.device, self.dtype = model, t, device, dtype
        self.diffusion = Diffusion(resolve_schedule(t.schedule), t.noise_loss)
        self.mel_head = (torch.nn.Linear(model.encoder.out_channels, N_MELS).to(device)
                         if t.mel_loss_weight > 0 else None)
        self.parameters = list(model.parameters()) + (list(self.mel_head.parameters()) if self.mel_head else [])
        self.optimizer = torch.optim.AdamW(self.parameters, lr=t.learning_rate, weight_decay=t.weight_decay)
        self.ema = EMA(model, t.ema_decay) if t.ema_decay > 0 else None

    def __call__(self, batch: Batch, step: int) -> StepLosses:
        """Step `step` (0-based) on `batch` (on the device): forward, loss, backward, clip, update, average."""
        t, model, device = self.t, self.model, self.device
        torch.manual_seed(t.seed * 1_000_003 + step)  # dropout and ZoneOut masks: a function of the step
        noise_rng = torch.Generator(device="cpu").manual_seed(t.seed * 1_000_003 + step)
        for group in self.optimizer.param_groups:
            group["lr"] = t.learning_rate * learning_rate_factor(step, t.warmup_steps, t.steps, t.lr_decay)
        with autocast(device, self.dtype):
            encoded, log_durations = model.encode(batch.phoneme_ids, batch.token_mask)
            duration_loss = DurationPredictor.loss(log_durations.float(), batch.durations, batch.token_mask)
            cond = model.condition(encoded, batch.durations, batch.token_mask, batch.frames)
            noise_loss = self.diffusion.loss(lambda x, level: model.denoise(x, cond.states, level), batch.signal,
                                             batch.signal_mask, noise_rng, step)
            mel_loss = (mel_regression_loss(self.mel_head, cond.states, batch.mel, batch.frame_mask)
                        if self.mel_head is not None else torch.zeros((), device=device))
        loss = noise_loss + t.duration_loss_weight * duration_loss + t.mel_loss_weight * mel_loss
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.parameters, t.grad_clip)
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update(model, step)
        return StepLosses(loss, noise_loss, duration_loss, mel_loss)
