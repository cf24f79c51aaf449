"""The search space of `wg2 search`: an N-step noise schedule as N numbers u_k in [0, 1].

Parametrization (log-space increments towards the ceiling):

    f_k = u_k ** p(N),   p(N) = max(1, (N - 4) / 2)                     (p = 1 up to 6 steps)
    log b_1 = log BETA_MIN + f_1 * (log BETA_MAX - log BETA_MIN)
    log b_k = log b_{k-1}  + f_k * (log BETA_MAX - log b_{k-1})          k = 2..N

Each step climbs the fraction f_k of the log distance still left between the previous beta and the
ceiling BETA_MAX = 0.9. Why this one:
- Every point of [0, 1]^N is a valid schedule: non-decreasing, inside [BETA_MIN, BETA_MAX] = [1e-7, 0.9].
  No trial is spent on (or rejected for) an invalid schedule, and the sampler's model is not distorted by
  penalty values at an invisible constraint boundary.
- Log scale: useful betas span six decades (WaveGrad's 6-step schedules start near 1e-6 and end near 0.5),
  so equal effort per decade is the natural prior; a uniform beta in [0, 0.9] would almost never sample
  the small first betas that decide the final noise level.
- Monotone by construction: the noise a refinement step removes grows towards the noisy end in every
  published schedule, and ordering removes the N! permutations that would otherwise look alike.
- Invertible for any non-decreasing schedule (`to_params`), so known schedules (linear-50, manual-6,
  Fibonacci, subsampled to N steps) are enqueued as exact trials and the grid baseline lives in the same
  parameters. f_k = 0 repeats the previous beta (Fibonacci starts with two equal betas); once a beta
  reaches the ceiling the rest stay there (their u is then irrelevant; the inverse returns 0).
- The exponent p(N) keeps random schedules of any length near the noise levels the model was trained on.
  With p = 1 a random schedule's final noise level sqrt(alpha_bar_N) falls fast with N (median 0.09 at 6
  steps, 3e-3 at 9, 1e-4 at 12, against 0.08 at the end of the training schedule linear-1000), because
  most of its late betas sit near 0.9; the model has never seen such levels and its samples blow up
  (a 16-trial --multi 3..12 run on the quickstart model: 5 of its 8 sampled trials failed with non-finite
  samples, all at 9..12 steps). p(N) = (N - 4) / 2 fits the exponent that brings the median back to
  ~0.09 (fitted by Monte Carlo: 2.2 at 9 steps, 3.5 at 12, 10 at 25, 25 at 50). TPE learns nothing
  from failed trials, so the prior is what keeps it out of that region early on.
The price: u_k acts relative to b_{k-1}, so the parameters interact; the TPE sampler is multivariate for
that reason.

Baselines (the first trials of a new study): linear-50, manual-6 and fibonacci-25, each subsampled to N
steps by `schedules.subsample` (same final noise level). A baseline with fewer than N steps is skipped:
subsampling to more steps than it has would invent betas. `subsample` rounds its indices, which can make
a subsampled schedule dip (linear-50 to 12 steps does); such a schedule is raised to its running maximum
to enter the monotone space, and the trial records `wg2.baseline_adjusted`.

Grid baseline (`--sampler grid`): WaveGrad's authors grid-searched a few values per beta on a log scale.
Here each u_k takes GRID_VALUES (3 values; at 6 steps each beta climbs 20/40/60 % of the remaining log
distance to 0.9 above the previous one), so every grid point is monotone by construction; 3^N points, or
2 values per step (GRID_VALUES_LARGE) above 10 steps to keep the grid enumerable.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from components.schedules import BETA_MAX, BETA_MIN, MANUAL_6, fibonacci, linear_named, manual, subsample

LOG_LO, LOG_HI = math.log(BETA_MIN), math.log(BETA_MAX)
GRID_VALUES = (0.2, 0.4, 0.6)
GRID_VALUES_LARGE = (0.25, 0.55)
GRID_MAX_POINTS = 60_000
STEPS_PARAM = "steps"


def param_name(k: int) -> str:
    return f"u{k}"


def exponent(steps: int) -> float:
    """p(N): the share of the remaining log distance a step climbs is u ** p(N) (module docstring)."""
    return max(1.0, (steps - 4) / 2)


def betas_from_u(u: np.ndarray | list[float]) -> np.ndarray:
    """(N,) u in [0, 1] -> (N,) float64 non-decreasing betas in [BETA_MIN, BETA_MAX]."""
    u = np.asarray(u, dtype=np.float64)
    if u.ndim != 1 or u.size == 0:
        raise ValueError(f"expected a non-empty 1-D list of u values, got shape {u.shape}")
    if np.any(~np.isfinite(u)) or np.any(u < 0) or np.any(u > 1):
        raise ValueError(f"u values must lie in [0, 1], got {u.tolist()}")
    fractions = u ** exponent(len(u))
    logs = np.empty_like(u)
    previous = LOG_LO
    for k, fk in enumerate(fractions):
        previous = previous + fk * (LOG_HI - previous)
        logs[k] = previous
    return np.clip(np.exp(logs), BETA_MIN, BETA_MAX)  # clip only absorbs exp/log rounding at the ends


def u_from_betas(betas: np.ndarray | list[float], tolerance: float = 1e-9) -> np.ndarray:
    """The inverse of `betas_from_u` for a non-decreasing schedule in [BETA_MIN, BETA_MAX].
    Raises ValueError naming the first offending beta otherwise (relative `tolerance` allowed)."""
    b = np.asarray(betas, dtype=np.float64)
    if b.ndim != 1 or b.size == 0:
        raise ValueError(f"expected a non-empty 1-D list of betas, got shape {b.shape}")
    low, high = BETA_MIN * (1 - tolerance), BETA_MAX * (1 + tolerance)
    bad = np.flatnonzero(~np.isfinite(b) | (b < low) | (b > high))
    if bad.size:
        raise ValueError(f"beta[{bad[0]}] = {b[bad[0]]:g} lies outside [{BETA_MIN:g}, {BETA_MAX:g}]")
    drops = np.flatnonzero(b[1:] < b[:-1] * (1 - tolerance))
    if drops.size:
        k = drops[0] + 1
        raise ValueError(f"schedule decreases at beta[{k}] = {b[k]:g} < beta[{k - 1}] = {b[k - 1]:g}; "
                         "the search space holds non-decreasing schedules only")
    logs = np.log(np.clip(b, BETA_MIN, BETA_MAX))
    f = np.empty_like(logs)
    f[0] = (logs[0] - LOG_LO) / (LOG_HI - LOG_LO)
    for k in range(1, len(logs)):
        room = LOG_HI - logs[k - 1]
        f[k] = (logs[k] - logs[k - 1]) / room if room > 1e-12 else 0.0
    return np.clip(f, 0.0, 1.0) ** (1.0 / exponent(len(f)))


def to_params(betas: np.ndarray | list[float], with_steps: bool = False) -> dict[str, float | int]:
    """Optuna params of a schedule (for study.enqueue_trial); `with_steps` adds the step count (--multi)."""
    u = u_from_betas(betas)
    params: dict[str, float | int] = {STEPS_PARAM: len(u)} if with_steps else {}
    params.update({param_name(k): float(v) for k, v in enumerate(u)})
    return params


def suggest_betas(trial, steps: int) -> np.ndarray:
    """Ask an Optuna trial for an N-step schedule (params u0..u{N-1})."""
    return betas_from_u([trial.suggest_float(param_name(k), 0.0, 1.0) for k in range(steps)])


def betas_of_params(params: dict) -> np.ndarray:
    """Rebuild the schedule from a finished trial's params."""
    steps = int(params[STEPS_PARAM]) if STEPS_PARAM in params else sum(1 for k in params if k.startswith("u"))
    return betas_from_u([params[param_name(k)] for k in range(steps)])


def grid_values(steps: int) -> tuple[float, ...]:
    return GRID_VALUES if len(GRID_VALUES) ** steps <= GRID_MAX_POINTS else GRID_VALUES_LARGE


def grid_search_space(steps: int) -> dict[str, list[float]]:
    """The search space for optuna.samplers.GridSampler: the same u params, a few values each."""
    values = list(grid_values(steps))
    return {param_name(k): values for k in range(steps)}


@dataclass(frozen=True)
class Baseline:
    name: str  # "linear-50@6": the source schedule and the step count it was subsampled to
    source: str  # "linear-50", "manual-6", "fibonacci-25"
    betas: np.ndarray  # (N,) the schedule the trial evaluates (monotone)
    adjusted: bool  # raised to its running maximum to be monotone


def _sources() -> list[tuple[str, np.ndarray]]:
    return [("linear-50", linear_named(50)), ("manual-6", manual(MANUAL_6)), ("fibonacci-25", fibonacci(25))]


def baseline(source: str, betas: np.ndarray, steps: int) -> Baseline | None:
    """`betas` subsampled to `steps` (None when it has fewer steps than that), made monotone."""
    if steps > len(betas):
        return None
    picked = betas if steps == len(betas) else subsample(betas, steps)
    monotone = np.maximum.accumulate(picked)
    name = source if steps == len(betas) else f"{source}@{steps}"
    return Baseline(name, source, monotone, bool(np.any(monotone != picked)))


def baselines(steps: int) -> list[Baseline]:
    """The known schedules at `steps` steps, in enqueue order: linear-50, manual-6, fibonacci-25."""
    return [b for source, betas in _sources() if (b := baseline(source, betas, steps)) is not None]


def multi_baselines(min_steps: int, max_steps: int) -> list[Baseline]:
    """Baselines for a multi-objective search over step counts: every source at 6 steps (when 6 is in
    range), then at the smallest and the largest step count. Most informative first, since a small
    trial budget keeps only the first ones."""
    counts = [6] if min_steps <= 6 <= max_steps else []
    counts += [s for s in (min_steps, max_steps) if s not in counts]
    out: list[Baseline] = []
    for steps in counts:
        out += [b for b in baselines(steps) if b.name not in {o.name for o in out}]
    return out
