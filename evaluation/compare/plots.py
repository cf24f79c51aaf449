"""The pictures of a `wg2 compare` report: quality against real-time factor, per-axis bars, training loss curves.

Plain data in, one PNG out. Figures are drawn on matplotlib's Agg canvas directly (no pyplot), so nothing here
touches global backend state, and every file is written to a temporary name first and then renamed into place.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from evaluation.metrics import value_range


@dataclass
class Point:
    """One cell at one inference schedule: x = real-time factor, y = quality, each with its 95% interval."""
    label: str
    schedule: str
    x: float
    y: float
    x_ci: tuple[float, float] | None = None
    y_ci: tuple[float, float] | None = None


@dataclass
class Bar:
    """One axis value at one schedule: the headline metric pooled over every other cell, with its interval."""
    value: str
    schedule: str
    mean: float
    ci: tuple[float, float] | None = None


@dataclass
class Curve:
    """The training loss of one run."""
    label: str
    steps: list[int]
    values: list[float]
    finished: bool = True


@dataclass
class Ceiling:
    """A horizontal reference line: the autoencoder's reconstruction quality (latent grids)."""
    label: str
    value: float


@dataclass
class AxisBars:
    axis: str
    bars: list[Bar] = field(default_factory=list)


def _save(fig: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    FigureCanvasAgg(fig)
    fig.savefig(tmp, format="png", dpi=100)  # no tight bbox: it draws the figure twice
    os.replace(tmp, path)
    return path


def _spans_decades(values: list[float]) -> bool:
    """Log scale only pays when the values are positive and cover more than a factor of ten."""
    return bool(values) and min(values) > 0 and max(values) / min(values) > 10


def _errors(value: float, ci: tuple[float, float] | None) -> list[list[float]] | None:
    """matplotlib's asymmetric error bars [[below], [above]] from an interval (None where there is none)."""
    if ci is None:
        return None
    return [[max(value - ci[0], 0.0)], [max(ci[1] - value, 0.0)]]


def plot_quality_vs_rtf(points: list[Point], metric: str, path: Path,
                        ceilings: Sequence[Ceiling] = ()) -> Path:
    """Scatter of quality (y) against real-time factor (x, log scale when it spans a decade), one point per cell and
    schedule: colour = cell, marker = schedule; error bars are the 95% intervals of the table."""
    fig = Figure(figsize=(10.0, 5.5))
    fig.subplots_adjust(left=0.08, right=0.66, bottom=0.1, top=0.93)  # the right third holds the legends
    ax = fig.add_subplot()
    cells = list(dict.fromkeys(p.label for p in points))
    schedules = list(dict.fromkeys(p.schedule for p in points))
    markers = "osD^vP*Xh<>"
    colours = {c: f"C{i % 10}" for i, c in enumerate(cells)}
    for p in points:
        ax.errorbar([p.x], [p.y], xerr=_errors(p.x, p.x_ci), yerr=_errors(p.y, p.y_ci),
                    fmt=markers[schedules.index(p.schedule) % len(markers)], color=colours[p.label],
                    capsize=3, markersize=7, alpha=0.9)
    for i, c in enumerate(ceilings):
        ax.axhline(c.value, color="k", linestyle=("--", ":", "-.")[i % 3], linewidth=1.2)
        ax.annotate(c.label, xy=(0.01, c.value), xycoords=("axes fraction", "data"),
                    va="bottom", fontsize=8)
    if _spans_decades([p.x for p in points]):
        ax.set_xscale("log")
    ax.set_xlabel("real-time factor (seconds of compute per second of audio; lower is faster)")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} against real-time factor (95% intervals)")
    ax.grid(True, which="both", alpha=0.3)
    # two small legends: colours name the cells, markers name the schedules
    handles = [ax.plot([], [], "o", color=colours[c])[0] for c in cells]
    first = ax.legend(handles, cells, title="cell", fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.add_artist(first)
    handles = [ax.plot([], [], markers[i % len(markers)], color="grey")[0] for i in range(len(schedules))]
    ax.legend(handles, schedules, title="schedule", fontsize=7, loc="lower left", bbox_to_anchor=(1.01, 0.0))
    return _save(fig, path)


def _fitted_floor(bars: list[Bar], metric: str) -> float:
    """Where the bars start: just under the lowest interval end, never below the metric's own floor (PESQ-wb 1.0),
    so differences of a few hundredths are visible; 0 when the data reach down to it."""
    ends = [b.ci[0] if b.ci else b.mean for b in bars] + [b.ci[1] if b.ci else b.mean for b in bars]
    lo, hi = min(ends), max(ends)
    pad = 0.15 * (hi - lo) or 0.05 * max(abs(hi), 1e-9)
    bounds = value_range(metric)
    floor = lo - pad if bounds is None else max(bounds[0], lo - pad)
    return 0.0 if lo >= 0 and floor < 0.25 * hi else floor


def plot_axis_bars(axes: list[AxisBars], metric: str, path: Path) -> Path:
    """One panel per axis: the headline metric for each of its values (averaged over the other axes'
    settings), one bar per schedule, with 95% intervals; the value axis fitted to the data."""
    n = max(len(axes), 1)
    fig = Figure(figsize=(max(4.5 * n, 7.0), 4.6))
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.14, top=0.82, wspace=0.3)
    for k, axis in enumerate(axes):
        ax = fig.add_subplot(1, n, k + 1)
        values = list(dict.fromkeys(b.value for b in axis.bars))
        schedules = list(dict.fromkeys(b.schedule for b in axis.bars))
        width = 0.8 / max(len(schedules), 1)
        floor = _fitted_floor(axis.bars, metric) if axis.bars else 0.0
        top = floor
        for j, schedule in enumerate(schedules):
            bars = [b for b in axis.bars if b.schedule == schedule]
            xs = [values.index(b.value) + (j - (len(schedules) - 1) / 2) * width for b in bars]
            means = [b.mean for b in bars]
            below = [max(b.mean - b.ci[0], 0.0) if b.ci else 0.0 for b in bars]
            above = [max(b.ci[1] - b.mean, 0.0) if b.ci else 0.0 for b in bars]
            top = max([top] + [m + a for m, a in zip(means, above)])
            ax.bar(xs, [m - floor for m in means], bottom=floor, width=width, yerr=[below, above], capsize=3,
                   label=schedule, color=f"C{j % 10}")
        ax.set_ylim(floor, top + 0.1 * (top - floor or 1.0))
        ax.set_xticks(range(len(values)))
        ax.set_xticklabels(values, fontsize=8, rotation=15 if max(map(len, values), default=0) > 10 else 0)
        ax.set_title(axis.axis, fontsize=9)
        ax.set_ylabel(metric + (f" (axis from {floor:.3g})" if floor else ""))
        ax.grid(True, axis="y", alpha=0.3)
        if len(schedules) > 1 or (schedules and schedules[0]):
            ax.legend(fontsize=7)
    fig.suptitle(f"{metric} by axis value\n(mean over the other axes' settings; 95% intervals)", fontsize=10)
    return _save(fig, path)


def plot_loss_curves(curves: list[Curve], path: Path) -> Path:
    """Training loss against step for every run; runs that did not finish are dashed."""
    fig = Figure(figsize=(11.0, 4.8))
    fig.subplots_adjust(left=0.1, right=0.6, bottom=0.11, top=0.92)  # the right part holds the legend
    ax = fig.add_subplot()
    for i, c in enumerate(curves):
        ax.plot(c.steps, c.values, color=f"C{i % 10}", linestyle="-" if c.finished else "--",
                linewidth=1.2, label=c.label + ("" if c.finished else " (not finished)"))
    if _spans_decades([v for c in curves for v in c.values]):
        ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("train/loss")
    ax.set_title("training loss")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, path)
