"""What `wg2 compare` reads a grid into: one record per MLflow run, the aggregated rows, effects and target, and
the small helpers on keys and values they share (metric names, directions, labels). Nothing here reads MLflow."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from components.spaces import SPACES
from evaluation.metrics import Missing, figure_info
from evaluation.runs import TAG_END_REASON, TAG_ERROR
from evaluation.stats import WELCH

UNIT_SEED, UNIT_UTTERANCE = "seed", "utterance"  # Effect.unit
CLEAR, NO_CLEAR, TOO_FEW_SEEDS = "clear", "no clear difference", "too few seeds"  # Effect.verdict
MIN_SEEDS = 3  # a training axis's effect needs this many seeds for an interval and a test
NOT_SCHEDULES = {"train", "recon", "system"}  # metric-key prefixes that are not inference schedules
DERIVED = ("_ci_low", "_ci_high", "_n_missing")  # per-run companions of a metric, not metrics of their own


# Metric names before the rename to say what is measured (a log-mel DCT distance, not SPTK-mcep MCD): runs logged
# under them are read under the current names, companions (_ci_low, _n_missing, ...) included.
RENAMED_METRICS = {"mcd": "mel_cd", "mcd_dtw": "mel_cd_dtw"}
_RENAMED = re.compile(r"(?<![^/])(" + "|".join(sorted(map(re.escape, RENAMED_METRICS), key=len, reverse=True))
                      + r")(?=$|_ci_low$|_ci_high$|_n_missing$)")


def current_metric_name(key: str) -> str:
    """A metric key (`schedule/metric`, `recon/metric`, a bare metric, or one of their companions) under the current
    metric names: `manual-6/mcd_dtw_n_missing` -> `manual-6/mel_cd_dtw_n_missing`; other keys unchanged."""
    return _RENAMED.sub(lambda m: RENAMED_METRICS[m.group(1)], key)


def current_names(metrics: dict[str, float]) -> dict[str, float]:
    """Old keys renamed; where a run has both (logged under both names), the current name wins."""
    out = {current_metric_name(k): v for k, v in metrics.items() if current_metric_name(k) != k}
    out.update({k: v for k, v in metrics.items() if current_metric_name(k) == k})
    return out


class CompareError(ValueError):
    """The experiment, store or metric asked for does not exist; the message says what does."""


# ----------------------------------------------------------------------------- data

@dataclass
class RunRecord:
    """One MLflow run, with the wg2 tags decoded."""
    run_id: str
    name: str
    status: str  # FINISHED, FAILED, RUNNING, KILLED, SCHEDULED
    group: str
    seed: int | None
    cell_hash: str
    assignment: dict[str, Any]
    params: dict[str, str]
    tags: dict[str, str]
    metrics: dict[str, float]
    start_time: int


@dataclass
class Stat:
    """A metric of one cell: mean over its seeds with a 95% interval, and how that interval was made."""
    mean: float | None
    ci_low: float | None = None
    ci_high: float | None = None
    n: int = 0  # runs (seeds) with a value
    interval: str = ""  # "seeds", "utterances" (one seed: across its utterances) or "" (none)
    n_missing: int = 0  # utterances without a value, summed over seeds

    def ci(self) -> tuple[float, float] | None:
        return None if self.ci_low is None or self.ci_high is None else (self.ci_low, self.ci_high)


@dataclass
class CellRow:
    """One cell of the grid with its seeds pooled (the FINISHED runs sharing tag wg2.group)."""
    group: str
    label: str
    assignment: dict[str, Any]
    seeds: list[int]
    run_ids: list[str]
    params: dict[str, str]
    stats: dict[str, Stat]
    ceiling: dict[str, float] = field(default_factory=dict)  # latent cells: the autoencoder's recon/* metrics
    ceiling_label: str = ""
    # each run's own conditioning gain over its held-out utterances, in seed order: {"mean", "ci_low"} (None: a
    # run from before the gain was measured). Whether each seed's model reads its text is judged on these.
    run_gains: list[dict[str, float | None]] = field(default_factory=list)

    def mean(self, key: str) -> float | None:
        s = self.stats.get(key)
        return None if s is None else s.mean


@dataclass
class Effect:
    """Marginal effect of one axis: mean(metric | axis=a) - mean(metric | axis=b) over the other cells."""
    axis: str
    a: str
    b: str
    schedule: str
    diff: float
    ci_low: float | None
    ci_high: float | None
    n_a: int  # runs on each side
    n_b: int
    settings: int  # settings of the other axes where both values finished
    test: str = WELCH  # PAIRED: on per-utterance differences (same utterances, same noise seeds); else WELCH
    p_value: float | None = None  # Wilcoxon signed-rank, paired only
    n_pairs: int = 0  # utterance x seed pairs behind a paired difference
    note: str = ""  # why a difference is not paired
    metric: str = ""
    # The unit of replication the interval and test run across: "seed" for an axis that changes training (each
    # seed's effect is its paired mean over utterances, the interval a t-interval across seeds), "utterance" for an
    # eval-only axis (paired over utterances within each model). n counts those units.
    unit: str = UNIT_SEED
    n: int = 0
    verdict: str = ""  # VERDICTS
    per_seed: dict[str, float] = field(default_factory=dict)  # seed -> that seed's effect (unit "seed")

    def as_json(self) -> dict[str, Any]:
        """The effect as `wg2 compare --json` gives it."""
        return {"axis": self.axis, "values": [self.a, self.b], "schedule": self.schedule, "metric": self.metric,
                "unit": self.unit, "n": self.n, "difference": self.diff, "ci_low": self.ci_low,
                "ci_high": self.ci_high, "p": self.p_value, "verdict": self.verdict, "test": self.test,
                "per_seed": self.per_seed, "settings": self.settings, "note": self.note}


@dataclass
class Target:
    """Whether latent R=16 reached the target against waveform space (None: the runs cannot decide it)."""
    reached: bool | None
    statement: str
    comparisons: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Grid:
    """One grid as MLflow holds it, read back and aggregated (the whole input of the report)."""
    name: str
    experiment_id: str
    parent: Any  # the grid's parent mlflow Run, or None
    question: str
    metric: str  # the headline metric
    axes: list[str]
    orders: dict[str, list[str]]  # each axis's canonical values in the grid's order
    schedules: list[str]
    runs: list[RunRecord]  # one per cell (a retried cell counts once), any state
    expected_source: str  # where the list of expected cells came from
    status: dict[str, list]  # expected, missing, finished, failed, running
    rows: list[CellRow]
    effects: list[Effect]
    ceilings: list[tuple[str, dict]]  # the autoencoders found: (label, recon metrics)
    target: Target | None  # None: not a latent grid
    per_utterance: dict[str, dict[str, dict[str, float | Missing]]] = field(default_factory=dict)
    # run ID -> metric key ("manual-6/pesq_wb") -> utterance ID -> value, from each finished run's per_utterance.csv


# ----------------------------------------------------------------------------- small helpers

def end_reason(tags: dict, status: str) -> str:
    """Why a run ended FAILED or KILLED, in one line: its wg2.end_reason tag (set by the grid), else its
    wg2.error tag, else that nothing was recorded."""
    text = (tags.get(TAG_END_REASON) or tags.get(TAG_ERROR) or "").strip()
    return text.splitlines()[0][:200] if text else f"{status}, no reason recorded"


def has_ceiling(row_params: dict[str, str]) -> bool:
    """Whether a run's signal space is backed by a stage-one autoencoder, whose reconstruction is the ceiling of what
    the run can reach: asked of the space registry (components/spaces.py), so a new such space gets one too."""
    name = row_params.get("model.space", SPACES.names()[0])
    return name in SPACES and SPACES.get(name).uses_autoencoder


def direction(key: str) -> int:
    """+1 higher is better, -1 lower is better, 0 neither (e.g. length_ratio) or unknown: from evaluation.metrics'
    METRICS and RUN_FIGURES tables."""
    info = figure_info(key)
    return 0 if info is None else info.direction


def metric_key(metric: str, schedule: str) -> str:
    """'pesq_wb' at 'manual-6' -> 'manual-6/pesq_wb'; a full key ('train/loss') is schedule-free."""
    return metric if "/" in metric else f"{schedule}/{metric}"


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def show_value(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v)


def label_of(assignment: dict[str, Any], seed: int | None = None) -> str:
    text = " ".join(f"{k}={show_value(v)}" for k, v in assignment.items())
    if seed is not None:
        text = f"{text} seed={seed}".strip()
    return text or "(single cell)"


def sort_key(v: Any) -> tuple:
    if isinstance(v, bool):
        return (2, str(v))
    if isinstance(v, (int, float)):
        return (0, float(v), "")
    if isinstance(v, str):
        return (1, 0.0, v)
    return (2, 0.0, canonical(v))


def json_tag(text: str | None, default: Any) -> Any:
    if not text:
        return default
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return default
