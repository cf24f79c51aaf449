"""The search's pictures: the optimization history and (--multi) quality against steps with the front."""
from __future__ import annotations

import os
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from optuna.trial import FrozenTrial, TrialState

from experiments.search.spec import MULTI_OBJECTIVES, SearchSpec
from experiments.search.trial import BASELINE


def _save_figure(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.png")
    try:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
    return path


def plot_history(trials: list[FrozenTrial], spec: SearchSpec, path: Path) -> Path:
    """Objective value per trial (pruned trials at their last running mean, failed ones as marks on the
    axis), baselines labelled, and the best so far (single objective)."""
    matplotlib.use("Agg")
    names = [n for n in spec.objectives if n != "steps"]
    fig, axes = plt.subplots(len(names), 1, figsize=(8, 3.2 * len(names)), squeeze=False)
    for k, (name, ax) in enumerate(zip(names, axes[:, 0])):
        done = [t for t in trials if t.state == TrialState.COMPLETE]
        ax.scatter([t.number for t in done], [t.values[k] for t in done], s=18, label="complete", zorder=3)
        pruned = [t for t in trials if t.state == TrialState.PRUNED and t.intermediate_values]
        if pruned:
            ax.scatter([t.number for t in pruned], [t.intermediate_values[t.last_step] for t in pruned], marker="x",
                       color="grey", label="pruned (running mean)", zorder=3)
        failed = [t.number for t in trials if t.state == TrialState.FAIL]
        if failed:
            ax.scatter(failed, [0.0] * len(failed), marker="v", color="red", transform=ax.get_xaxis_transform(),
                       clip_on=False, label="failed", zorder=3)
        for t in done:
            if BASELINE in t.user_attrs:
                ax.scatter([t.number], [t.values[k]], marker="*", s=140, color="orange", zorder=4)
                ax.annotate(t.user_attrs[BASELINE], (t.number, t.values[k]), fontsize=7, xytext=(4, 4),
                            textcoords="offset points")
        if not spec.multi and done:
            pick = np.maximum.accumulate if spec.directions[0] == "maximize" else np.minimum.accumulate
            xs = [t.number for t in done]
            ax.step(xs, pick([t.values[0] for t in done]), where="post", color="green", label="best so far")
        ax.set_xlabel("trial")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0, 0].set_title(f"{spec.study}: optimization history")
    return _save_figure(fig, path)


def plot_front(trials: list[FrozenTrial], front: list[FrozenTrial], path: Path) -> Path:
    """Quality against steps: every complete trial, the Pareto front highlighted, baselines labelled."""
    matplotlib.use("Agg")
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    on_front = {t.number for t in front}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for k, (name, ax) in enumerate(zip(MULTI_OBJECTIVES, axes)):
        ax.scatter([t.values[2] for t in done], [t.values[k] for t in done], s=14, color="lightgrey", label="trials")
        pts = sorted((t.values[2], t.values[k]) for t in done if t.number in on_front)
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=26, color="tab:blue", label="Pareto front", zorder=3)
        for t in done:
            if BASELINE in t.user_attrs:
                ax.scatter([t.values[2]], [t.values[k]], marker="*", s=120, color="orange", zorder=4)
                ax.annotate(t.user_attrs[BASELINE], (t.values[2], t.values[k]), fontsize=7, xytext=(4, 4),
                            textcoords="offset points")
        ax.set_xlabel("refinement steps")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("quality against steps (Pareto front over PESQ-wb, STOI and steps)")
    return _save_figure(fig, path)
