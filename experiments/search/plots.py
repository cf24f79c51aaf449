"""The search's pictures, drawn by Optuna's own matplotlib plots: the optimization history of each quality
objective and (--multi) the Pareto front against the step count. On top of Optuna's drawing we only mark
what it leaves out: the baselines' names, pruned trials at their last running mean, failed trials."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import optuna
from optuna.trial import FrozenTrial, TrialState
from optuna.visualization.matplotlib import plot_optimization_history, plot_pareto_front

from experiments.search import keys
from experiments.search.spec import MULTI_OBJECTIVES, SearchSpec


def _save_figure(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.png")
    try:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
    return path


def _optuna_plot(plot, study: optuna.Study, **kwargs):
    """An Optuna matplotlib plot (its Axes), off-screen. The ggplot style Optuna sets stays inside; its
    warnings (experimental API, an empty legend) and its "no complete trials" log line stay quiet."""
    matplotlib.use("Agg")
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        with warnings.catch_warnings(), matplotlib.rc_context():
            warnings.simplefilter("ignore")
            return plot(study, **kwargs)
    finally:
        optuna.logging.set_verbosity(level)


def _label_baselines(ax, trials: list[FrozenTrial], x, y) -> None:
    for t in trials:
        if t.state == TrialState.COMPLETE and keys.BASELINE in t.user_attrs:
            ax.scatter([x(t)], [y(t)], marker="*", s=220, facecolors="none", edgecolors="orange", linewidths=1.5,
                       zorder=4)  # hollow: the trial's own colour (front or not) shows through
            ax.annotate(t.user_attrs[keys.BASELINE], (x(t), y(t)), fontsize=7, xytext=(4, 4),
                        textcoords="offset points")


def plot_history(study: optuna.Study, spec: SearchSpec, stem: Path) -> list[Path]:
    """Optuna's optimization history of each objective but the step count (single objective: with the best
    value so far), plus pruned trials at their last running mean, failed ones as marks on the axis and the
    baselines labelled. Writes <stem>-history.png (the first objective) and, with --multi,
    <stem>-history-stoi.png."""
    trials = study.get_trials(deepcopy=False)
    paths = []
    for k, name in enumerate(n for n in spec.objectives if n != "steps"):
        target = (lambda t, k=k: t.values[k]) if spec.multi else None  # Optuna's own target when single
        ax = _optuna_plot(plot_optimization_history, study, target=target, target_name=name)
        pruned = [t for t in trials if t.state == TrialState.PRUNED and t.intermediate_values]
        if pruned:
            ax.scatter([t.number for t in pruned], [t.intermediate_values[t.last_step or 0]
                                                           for t in pruned], marker="x",
                       color="grey", label="pruned (running mean)", zorder=3)
        failed = [t.number for t in trials if t.state == TrialState.FAIL]
        if failed:
            ax.scatter(failed, [0.0] * len(failed), marker="v", color="red", transform=ax.get_xaxis_transform(),
                       clip_on=False, label="failed", zorder=3)
        _label_baselines(ax, trials, lambda t: t.number, lambda t, k=k: t.values[k])
        ax.set_title(f"{spec.study}: optimization history")
        if ax.has_data():
            ax.legend(fontsize=7)
        suffix = "" if k == 0 else f"-{name}"
        paths.append(_save_figure(ax.figure, stem.with_name(f"{stem.name}-history{suffix}.png")))
    return paths


def plot_front(study: optuna.Study, stem: Path) -> list[Path]:
    """Optuna's Pareto-front plot, one picture per quality objective against the step count: every complete
    trial, the front over all three objectives (PESQ-wb, STOI, steps) as Optuna's best trials, baselines
    labelled. Writes <stem>-pareto.png (PESQ-wb) and <stem>-pareto-stoi.png."""
    trials = study.get_trials(deepcopy=False)
    paths = []
    for k, name in enumerate(MULTI_OBJECTIVES):
        ax = _optuna_plot(plot_pareto_front, study, targets=lambda t, k=k: (t.values[2], t.values[k]),
                          target_names=["refinement steps", name])
        _label_baselines(ax, trials, lambda t: t.values[2], lambda t, k=k: t.values[k])
        ax.set_title(f"{study.study_name}: {name} against steps (Pareto front over PESQ-wb, STOI and steps)")
        suffix = "" if k == 0 else f"-{name}"
        paths.append(_save_figure(ax.figure, stem.with_name(f"{stem.name}-pareto{suffix}.png")))
    return paths
