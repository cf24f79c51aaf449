"""Noise schedules: pure functions returning float64 betas (WaveGrad sec. 3).

Nothing here holds state or reads files. A schedule is a 1-D float64 array of betas in (0, 1); the number
of refinement steps is len(betas). Named schedules are `FAMILY-N` (registry `SCHEDULES`): `linear-N` (the
training ramp spread over N steps; `linear-1000` is the training schedule), `cosine-N`, `fibonacci-N`
(`fibonacci-25` in WaveGrad) and `manual-6`, a family with a fixed step count. Schedule files (TOML/JSON
holding `betas = [...]`) are read by experiments/config/schedules.py.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from components.registry import Registry

BETA_MIN, BETA_MAX = 1e-7, 0.9  # the range every schedule must lie in (search space too)
MAX_STEPS = 10000  # more refinement steps than any schedule needs (the training schedule has 1000)


def linear(start: float, end: float, steps: int) -> np.ndarray:
    return np.linspace(start, end, steps, dtype=np.float64)


def cosine(steps: int, s: float = 0.008, max_beta: float = 0.9) -> np.ndarray:
    """Nichol & Dhariwal's cosine schedule: alpha_bar(t) = cos^2((t/T + s)/(1 + s) * pi/2)."""
    t = np.arange(steps + 1, dtype=np.float64) / steps
    alpha_bar = np.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    betas = 1 - alpha_bar[1:] / alpha_bar[:-1]
    return np.clip(betas, BETA_MIN, max_beta)


def fibonacci(steps: int = 25, final_level: float | None = None) -> np.ndarray:
    """Fibonacci-style schedule (WaveGrad sec. 4): beta_{n+2} = beta_n + beta_{n+1}, capped at BETA_MAX.
    The first two betas are chosen (by bisection, in log space) so the schedule ends at the same
    noise level sqrt(alpha_bar) as the training schedule linear-1000; sampling starts from N(0, I)."""
    target = final_level if final_level is not None else float(noise_levels(linear(1e-6, 0.01, 1000))[-1])

    def build(first: float) -> np.ndarray:
        betas = [first, first]
        while len(betas) < steps:
            betas.append(betas[-1] + betas[-2])
        return np.clip(np.asarray(betas[:steps], dtype=np.float64), BETA_MIN, BETA_MAX)

    lo, hi = math.log(BETA_MIN), math.log(BETA_MAX)
    for _ in range(100):  # final level falls as the first beta grows
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if noise_levels(build(math.exp(mid)))[-1] > target else (lo, mid)
    return build(math.exp((lo + hi) / 2))


# A hand-set 6-step schedule: DiffWave's fast-sampling betas (Kong et al. 2021, sec. 4). WaveGrad's
# own grid-searched 6-step betas are not published in a form we could verify, so we ship this one
# and let `wg2 search` find better ones for each model.
MANUAL_6 = (1e-4, 1e-3, 1e-2, 5e-2, 2e-1, 5e-1)


def manual(betas: list[float] | tuple[float, ...]) -> np.ndarray:
    return check_betas(np.asarray(betas, dtype=np.float64), "manual schedule")


def check_betas(betas: np.ndarray, source: str) -> np.ndarray:
    """Betas must be a non-empty 1-D list of finite numbers in [BETA_MIN, BETA_MAX]."""
    betas = np.asarray(betas, dtype=np.float64)
    if betas.ndim != 1 or betas.size == 0:
        raise ValueError(f"{source}: expected a non-empty list of betas, got shape {betas.shape}")
    if betas.size > MAX_STEPS:
        raise ValueError(f"{source}: {betas.size} betas; at most {MAX_STEPS} steps are allowed")
    if not np.all(np.isfinite(betas)):
        raise ValueError(f"{source}: betas must be finite")
    bad = np.flatnonzero((betas < BETA_MIN) | (betas > BETA_MAX))
    if bad.size:
        raise ValueError(f"{source}: beta[{bad[0]}] = {betas[bad[0]]:g} lies outside [{BETA_MIN:g}, {BETA_MAX:g}]")
    return betas


def noise_levels(betas: np.ndarray) -> np.ndarray:
    """sqrt(alpha_bar) after each step: the continuous noise level the decoder is conditioned on."""
    return np.sqrt(np.cumprod(1.0 - np.asarray(betas, dtype=np.float64)))


# How far outside the training range an inference schedule may reach, at each end: its noisiest level down to
# TRAINED_RANGE_MARGIN x the training schedule's lowest level, and its cleanest level's noise (sqrt(1 - a^2)) down to
# TRAINED_RANGE_MARGIN x the training schedule's smallest noise. A level the decoder was never trained near gets an
# embedding it has never seen (WaveGrad's linear-1000 stops at level 0.081; cosine-50 starts at 0.0099; linear-50's
# cleanest noise is 0.0045 against cosine-1000's 0.0064).
TRAINED_RANGE_MARGIN = 0.5
# Sampling starts from N(0, I): the schedule's first (noisiest) level must leave the diffusion signal at least this
# far under the noise, or the start is not the distribution the sampler assumes (manual-6 ends at level 0.61, where a
# unit-variance signal is only 2.2 dB under the noise).
START_SNR_LIMIT_DB = -20.0


def start_snr_db(betas: np.ndarray, signal_std: float) -> float:
    """SNR of the first refinement step's input, a^2 x signal variance / (1 - a^2), in dB (a: the noisiest level)."""
    level = float(noise_levels(betas)[-1])
    return float(10 * np.log10(level**2 * signal_std**2 / (1 - level**2)))


def check_schedule(betas: np.ndarray, train_betas: np.ndarray, signal_std: float, source: str) -> None:
    """Refuse an inference schedule that starts too close to the signal (START_SNR_LIMIT_DB for a signal of
    `signal_std`) or whose levels leave the training schedule's range at either end (TRAINED_RANGE_MARGIN).
    Raises ValueError naming `source`, the figure and the limit."""
    snr = start_snr_db(betas, signal_std)
    if snr > START_SNR_LIMIT_DB:
        raise ValueError(f"{source}: starts sampling at SNR {snr:.1f} dB (signal std {signal_std:.3g}); the limit is "
                         f"{START_SNR_LIMIT_DB:.0f} dB (the signal at least {-START_SNR_LIMIT_DB:.0f} dB under the "
                         f"noise), since sampling starts from N(0, I); use a schedule that ends noisier (e.g. "
                         f"linear-50) or a smaller model.signal_std")
    levels, trained = noise_levels(betas), noise_levels(train_betas)
    lowest, floor = float(levels[-1]), float(trained[-1])
    if lowest < TRAINED_RANGE_MARGIN * floor:
        raise ValueError(f"{source}: starts sampling at noise level {lowest:.4g}, below the training schedule's "
                         f"range (lowest level {floor:.4g}); train with a schedule that reaches it "
                         f"(e.g. train.schedule = \"cosine-1000\") or pick a schedule ending at >= "
                         f"{TRAINED_RANGE_MARGIN * floor:.3g}")
    cleanest, trained_noise = (float(np.sqrt(1 - float(x[0]) ** 2)) for x in (levels, trained))
    if cleanest < TRAINED_RANGE_MARGIN * trained_noise:
        raise ValueError(f"{source}: its last step has noise {cleanest:.3g} (level {float(levels[0]):.7f}), below the "
                         f"training schedule's range (smallest noise {trained_noise:.3g}); pick a schedule whose first "
                         f"beta is >= {(TRAINED_RANGE_MARGIN * trained_noise) ** 2:.3g} or train with a schedule "
                         f"that starts cleaner")


def subsample(betas: np.ndarray, steps: int) -> np.ndarray:
    """A `steps`-step schedule reaching the same final noise level as `betas`, by matching
    alpha_bar at evenly spaced points of the original schedule (used to seed schedule searches)."""
    alpha_bar = np.cumprod(1.0 - np.asarray(betas, dtype=np.float64))
    idx = np.linspace(0, len(alpha_bar) - 1, steps).round().astype(int)
    picked = alpha_bar[idx]
    out = 1 - picked / np.concatenate([[1.0], picked[:-1]])
    return np.clip(out, BETA_MIN, BETA_MAX)


def linear_named(n: int) -> np.ndarray:
    """`linear-N`: the training ramp (1e-6 .. 0.01 over 1000 steps) spread over N steps with the same sum of betas,
    each beta capped at BETA_MAX. The same sum does not mean the same final level: larger betas lose more, so
    linear-50 ends at level 0.068 against linear-1000's 0.081, and linear-6 (its last betas capped at 0.9) at 0.0149."""
    scale = 1000 / n
    return np.minimum(linear(1e-6 * scale, 0.01 * scale, n), BETA_MAX)


class Schedule:
    """Interface of a schedule family `FAMILY-N`: built as `cls(config: cls.Config)`, `betas()` -> float64.
    A family with `fixed_steps` exists only at that step count (its name is e.g. `manual-6`)."""

    @dataclass(frozen=True)
    class Config:
        steps: int

    fixed_steps: int | None = None

    def __init__(self, config: Config):
        self.config = config

    def betas(self) -> np.ndarray:
        raise NotImplementedError


class LinearSchedule(Schedule):
    def betas(self) -> np.ndarray:
        return linear_named(self.config.steps)


class CosineSchedule(Schedule):
    def betas(self) -> np.ndarray:
        return cosine(self.config.steps)


class FibonacciSchedule(Schedule):
    def betas(self) -> np.ndarray:
        return fibonacci(self.config.steps)


class ManualSchedule(Schedule):
    fixed_steps = len(MANUAL_6)

    def betas(self) -> np.ndarray:
        return manual(MANUAL_6)


SCHEDULES: Registry[Schedule] = Registry("schedule", Schedule, {"linear": LinearSchedule, "cosine": CosineSchedule,
                                            "fibonacci": FibonacciSchedule, "manual": ManualSchedule})
_PATTERN = re.compile(r"^([a-z]+)-(\d+)$")


class UnknownScheduleError(ValueError):
    """A name that is no `FAMILY-N` of the registry (callers that accept files add them to the message)."""


def schedule_names() -> list[str]:
    """The allowed names, from the registry's keys: `linear-N`, ..., `manual-6`."""
    return [f"{name}-{SCHEDULES.get(name).fixed_steps or 'N'}" for name in SCHEDULES.names()]


def resolve_schedule_name(name: str) -> np.ndarray:
    """`FAMILY-N` -> float64 betas. Raises ValueError naming what is allowed."""
    match = _PATTERN.match(name)
    if match is None or match.group(1) not in SCHEDULES:
        raise UnknownScheduleError(f"unknown schedule {name!r}; allowed: {', '.join(schedule_names())}")
    cls, n = SCHEDULES.get(match.group(1)), int(match.group(2))
    if cls.fixed_steps is not None and n != cls.fixed_steps:
        raise UnknownScheduleError(f"unknown schedule {name!r}; allowed: {', '.join(schedule_names())}")
    if n < 1:
        raise ValueError(f"schedule {name!r}: need at least one step")
    if n > MAX_STEPS:
        raise ValueError(f"schedule {name!r}: {n} steps; at most {MAX_STEPS} are allowed")
    return check_betas(cls(cls.Config(steps=n)).betas(), f"schedule {name!r}")
