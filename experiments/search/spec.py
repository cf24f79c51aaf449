"""The request of `wg2 search`: the command line checked and turned into a picklable SearchSpec, the model
resolved (a checkpoint file, or an MLflow run ID whose checkpoint is downloaded), the default study name and
the baselines a study starts with."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from sqlalchemy.engine import make_url

from evaluation.metrics import METRICS, metric_names
from evaluation.runs import sqlite_path, tracking_uri
from experiments.config.run import InputError
from experiments.search import space
from experiments.train.runtime import check_writable
from experiments.train.store_checkpoints import resolve_checkpoint

PARAMETRIZATION = "log-increment-v2"  # v2: the exponent p(N) (search/space.py)
MULTI_OBJECTIVES = ("pesq_wb", "stoi")
PRUNE_BATCH = 2  # utterances between two reports of the running mean
# the trials are scored on SELECTION_SPLIT; the schedule file's numbers on REPORT_SPLIT, or on a held-out half of
# SELECTION_SPLIT when REPORT_SPLIT is too small (evaluator.choose_sets; the package docstring says why)
SELECTION_SPLIT, REPORT_SPLIT = "val", "test"
MIN_REPORTED = 2  # utterances a report set needs at least (a paired interval needs two)


@dataclass(frozen=True)
class SearchSpec:
    """Everything a search (and each worker process) needs; picklable."""
    checkpoint: str  # local file (an MLflow RUN_ID is downloaded first)
    model_run_id: str | None
    steps: int
    trials: int
    objective: str
    multi: bool
    min_steps: int
    max_steps: int
    sampler: str  # "tpe" | "grid"
    storage: str  # SQLAlchemy URL
    study: str
    workers: int
    limit_utterances: int
    seed: int
    out_dir: str
    device: str
    tracking_uri: str
    prune_batch: int = PRUNE_BATCH
    progress: bool = True
    skip_unknown_phonemes: bool = False  # leave out utterances with phonemes the model never saw

    @property
    def objectives(self) -> tuple[str, ...]:
        """Objective names in Optuna's value order."""
        return (*MULTI_OBJECTIVES, "steps") if self.multi else (self.objective,)

    @property
    def directions(self) -> list[Literal["maximize", "minimize"]]:
        if self.multi:
            return ["maximize", "maximize", "minimize"]
        return ["maximize" if METRICS[self.objective].better == "higher" else "minimize"]

    def identity(self) -> dict[str, Any]:
        """What must not change when a study is resumed (trials would stop being comparable); the utterance sets
        themselves are added by queue.open_study."""
        steps = {"min_steps": self.min_steps, "max_steps": self.max_steps} if self.multi else {"steps": self.steps}
        return {"parametrization": PARAMETRIZATION, "multi": self.multi, "objectives": list(self.objectives),
                "sampler": self.sampler, "seed": self.seed, "limit_utterances": self.limit_utterances, **steps}


def objective_names() -> list[str]:
    """Metrics that can be searched: aligned-pass metrics with a direction, available here."""
    return [m for m in metric_names(aligned=True) if METRICS[m].better in ("higher", "lower")]


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "search"


def _absolute_storage(url: str) -> str:
    """SQLite URLs made absolute (spawned workers and later resumes find the same file)."""
    db = sqlite_path(url)
    if db is None:
        return url
    db.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{db.resolve()}"


def redact(url: str) -> str:
    """A storage URL without its password, for tags, files and messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not parseable: show nothing secret, only the scheme
        return url.split("://", 1)[0] + "://..."


def default_study_name(checkpoint: Path, run_id: str | None, steps: int, objective: str, multi: bool,
                       min_steps: int, max_steps: int, sampler: str) -> str:
    """E.g. `qs-6steps-pesq_wb` for runs/qs/checkpoint.pt (the folder names the model; every
    checkpoint file is called checkpoint.pt)."""
    label = run_id[:8] if run_id else (checkpoint.parent.name or checkpoint.stem)
    body = f"{min_steps}to{max_steps}steps-multi" if multi else f"{steps}steps-{objective}"
    return slug(f"{label}-{body}" + ("-grid" if sampler == "grid" else ""))


def spec_from_args(args) -> SearchSpec:
    """Validate the command line (InputError names the flag) and resolve the model."""
    def need(ok: bool, message: str) -> None:
        if not ok:
            raise InputError(message)

    need(args.steps >= 1, f"--steps {args.steps}: need at least 1")
    need(args.trials >= 0, f"--trials {args.trials}: need 0 or more")
    need(args.workers >= 1, f"--workers {args.workers}: need at least 1")
    need(args.limit_utterances >= 0, f"--limit-utterances {args.limit_utterances}: need 0 (all) or more")
    allowed = objective_names()
    need(args.objective in allowed, f"--objective {args.objective!r}: allowed: {', '.join(allowed)}")
    if args.multi:
        need(1 <= args.min_steps <= args.max_steps,
             f"--min-steps {args.min_steps} --max-steps {args.max_steps}: need 1 <= min <= max")
        need(args.objective == MULTI_OBJECTIVES[0],
             f"--objective {args.objective}: with --multi the objectives are fixed "
             "(PESQ-wb and STOI against steps)")
        need(args.sampler == "tpe", "--sampler grid is the single-objective baseline; use --sampler tpe with --multi")
    check_writable(Path(args.out), "--out folder")  # now, not after the whole search
    uri = tracking_uri()
    checkpoint, run_id = resolve_checkpoint(args.model, uri)
    study = args.study or default_study_name(checkpoint, run_id, args.steps, args.objective, args.multi,
                                             args.min_steps, args.max_steps, args.sampler)
    return SearchSpec(str(checkpoint), run_id, args.steps, args.trials, args.objective, args.multi, args.min_steps,
                      args.max_steps, args.sampler, _absolute_storage(args.storage or "sqlite:///optuna.db"), study,
                      args.workers, args.limit_utterances, args.seed, args.out, args.device, uri,
                      skip_unknown_phonemes=bool(getattr(args, "skip_unknown_phonemes", False)))


def baseline_list(spec: SearchSpec) -> list[space.Baseline]:
    return space.multi_baselines(spec.min_steps, spec.max_steps) if spec.multi else space.baselines(spec.steps)
