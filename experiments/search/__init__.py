"""`wg2 search CKPT|RUN_ID --steps 6 [--trials 100] [--objective pesq_wb] [--multi] [--sampler tpe|grid]
[--storage URL] [--study NAME] [--workers N] [--limit-utterances N] [--seed S] [--out DIR]`:
an Optuna search of an inference noise schedule for one trained model, every trial tracked in MLflow.

Search space: experiments/search/space.py (N numbers u_k in [0, 1], log-space increments towards 0.9;
every sample is a valid monotone schedule and known schedules map back to exact parameters).

Objective: the chosen metric (default pesq_wb; any aligned metric with a direction in
evaluation.metrics.METRICS) averaged over a fixed subset of validation utterances: `--limit-utterances`
picked by `--seed` with the same function as `wg2 eval` (experiments.evaluate.pick_utterances), synthesized
with ground-truth durations so output and reference line up. Utterance i is synthesized with noise seed
seed * 1000003 + i: every trial meets the same noise (common random numbers), so differences between trials
are the schedules' and a schedule evaluated twice scores the same (this is how the baselines are checked).
Missing metric values (silent, NaN or too short audio, a PESQ error) are left out of the mean and counted
(user attrs `wg2.n_missing`, `wg2.missing_reasons`); a trial whose objective is missing for every
utterance, or whose synthesis raises (non-finite samples), fails with that reason and the study goes on.
`--multi`: three objectives, PESQ-wb and STOI (maximized) against the step count (minimized), the step
count a parameter in [--min-steps, --max-steps]; `--objective` must then stay pesq_wb. The Pareto front
is study.best_trials.

Sampler and pruning: TPE (multivariate, because u_k acts relative to the beta before it; constant liar, so
parallel workers do not propose the same point; the first TPE_STARTUP trials, baselines included, are the
startup set), seeded with --seed (worker k uses seed + k, worker 0 = the single-worker seed, so a
one-worker study is reproducible). Single-objective trials report their running mean after each batch of
PRUNE_BATCH utterances; a MedianPruner (3 startup trials) stops a trial whose running mean is worse than
the median of earlier trials at that point (state PRUNED, its last running mean kept). `--sampler grid`:
optuna's GridSampler over space.grid_search_space (WaveGrad's authors' baseline), same study format;
the budget counts the enqueued baselines and is capped at baselines + grid points (the whole 3^6 grid of
a 6-step search: --trials 732).

Trial budget: `--trials N` is the study's total. A new study gets the baselines enqueued first (linear-50,
manual-6, fibonacci-25 subsampled to N steps; for --multi at 6, min and max steps), then the parent tops
the study up with plain waiting trials until it holds N. Workers only ever take a waiting trial (under a
file lock, so two local workers never take the same one, which SQLite alone does not prevent), never
create one: together they run exactly N - (trials already there), with distinct numbers. We do not use
MaxTrialsCallback: it counts trials after they end, so each of several workers may start one more trial
before it sees the limit. Rerunning with the same study resumes: finished trials stay, numbering goes
on, baselines are not enqueued again, and a trial left RUNNING by a dead worker on this machine is marked
failed ("interrupted"). A larger --trials extends the study. Workers on other machines join by running
the same command with the same --storage and --study: they take waiting trials of the same queue (start
the first command before the others, since it creates the study; two machines taking the last waiting
trial at the same instant can make one extra trial).

Storage: an SQLite file (default sqlite:///optuna.db in the working directory; created once by the parent
before workers start), or any SQLAlchemy URL, e.g. postgresql://user:pass@host/db for several machines.
`--workers N` starts N spawned processes (torch threads = cores // N each).

MLflow (experiment "wg2 schedule search"): a parent run per study (tags wg2.kind=search, wg2.study,
wg2.study_key = hash of storage and study name, found again on resume), and one child run per trial, logged
by the worker that ran it when the trial ends (params: betas, u's, steps; metrics: every metric's mean,
missing counts, the objective values, the running mean curve, seconds; tags wg2.state COMPLETE / PRUNED /
FAIL and wg2.error with the reason; MLflow status FINISHED / KILLED / FAILED; artifact schedule.json).
The parent logs any finished trial without a run at the end, then the exported schedule files, the
optimization history picture and (--multi) the Pareto-front picture.

Output (`--out`, default results/schedules/): `<study>.json` with the best schedule (betas, steps, metric
values), the baselines' values on the same utterances (taken from their enqueued trials; a baseline that
is not a trial of the study, when the budget is smaller than the baseline list, is evaluated separately
with the same protocol), the model (checkpoint, sha256, config hash, MLflow run), the utterances and the
study. `--multi` writes `<study>-<k>steps.json` for each step count on the Pareto front (its best PESQ-wb
trial) and `<study>-front.json` listing the front. Every schedule file loads in `wg2 synth --schedule
FILE` and `wg2 eval --schedules FILE` (they read the key `betas`).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import re
import socket
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from evaluation.metrics import METRICS, Missing, describe_error, metric_names
from evaluation.pool import ScoreJob, score_many
from evaluation.runs import (KIND_SEARCH, KIND_TRIAL, TAG_BASELINE, TAG_ERROR, TAG_GIT_COMMIT, TAG_KIND, TAG_MACHINE,
                             TAG_MODEL, TAG_MODEL_CONFIG_HASH, TAG_MODEL_RUN_ID, TAG_MODEL_SHA256, TAG_OBJECTIVES,
                             TAG_OWNER, TAG_PRUNE_REASON, TAG_SAMPLER, TAG_STATE, TAG_STORAGE, TAG_STUDY,
                             TAG_STUDY_KEY, TAG_TRIAL_NUMBER, TAG_TRIALS_REQUESTED, search_all_runs, sqlite_path,
                             tag_is, tracking_uri)
from experiments.search import space
from experiments import synth, tracking
from experiments.workers import start_workers, watch_parent
from experiments.config import InputError
from experiments.runtime import atomic_write_bytes

EXPERIMENT = "wg2 schedule search"
PARAMETRIZATION = "log-increment-v2"  # v2: the exponent p(N) (search/space.py)
MULTI_OBJECTIVES = ("pesq_wb", "stoi")
PRUNE_BATCH = 2  # utterances between two reports of the running mean
PRUNER_STARTUP = 3
TPE_STARTUP = 5
SPLIT = "val"
TICKET, BASELINE, OWNER = "wg2.ticket", "wg2.baseline", "wg2.owner"
INTERRUPTED = "interrupted: the worker running this trial died; marked failed when the study was resumed"


# ----------------------------------------------------------------------------- the request

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

    @property
    def objectives(self) -> tuple[str, ...]:
        """Objective names in Optuna's value order."""
        return (*MULTI_OBJECTIVES, "steps") if self.multi else (self.objective,)

    @property
    def directions(self) -> list[str]:
        if self.multi:
            return ["maximize", "maximize", "minimize"]
        return ["maximize" if METRICS[self.objective].better == "higher" else "minimize"]

    def identity(self) -> dict[str, Any]:
        """What must not change when a study is resumed (trials would stop being comparable)."""
        steps = {"min_steps": self.min_steps, "max_steps": self.max_steps} if self.multi else {"steps": self.steps}
        return {"parametrization": PARAMETRIZATION, "multi": self.multi, "objectives": list(self.objectives),
                "sampler": self.sampler, "seed": self.seed, "limit_utterances": self.limit_utterances,
                "split": SPLIT, **steps}


def objective_names() -> list[str]:
    """Metrics that can be searched: aligned-pass metrics with a direction, available here."""
    return [m for m in metric_names(aligned=True) if METRICS[m].better in ("higher", "lower")]


def _slug(text: str) -> str:
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
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not parseable: show nothing secret, only the scheme
        return url.split("://", 1)[0] + "://..."


def resolve_model(model: str, uri: str) -> tuple[Path, str | None]:
    """A checkpoint file, or an MLflow run ID whose `checkpoint.pt` artifact is downloaded (once) to
    .cache/wg2/checkpoints/<run id>/. Returns (path, run id or None)."""
    path = Path(model)
    if path.is_file():
        return path.resolve(), None
    if not re.fullmatch(r"[0-9a-f]{32}", model):
        raise InputError(f"model {model!r}: no such checkpoint file, and not an MLflow run ID (32 hex characters)")
    dest = Path(".cache/wg2/checkpoints") / model
    local = dest / "checkpoint.pt"
    if not local.is_file():
        import mlflow.artifacts

        dest.mkdir(parents=True, exist_ok=True)
        try:
            local = Path(mlflow.artifacts.download_artifacts(run_id=model, artifact_path="checkpoint.pt",
                                                             dst_path=str(dest), tracking_uri=uri))
        except Exception as err:  # unknown run, no such artifact, unreachable store
            raise InputError(f"model {model!r}: could not download the run's checkpoint.pt artifact from MLflow "
                             f"{uri}: {type(err).__name__}: {err}") from err
    return local.resolve(), model


def default_study_name(checkpoint: Path, run_id: str | None, steps: int, objective: str, multi: bool,
                       min_steps: int, max_steps: int, sampler: str) -> str:
    """E.g. `qs-6steps-pesq_wb` for runs/qs/checkpoint.pt (the folder names the model; every
    checkpoint file is called checkpoint.pt)."""
    label = run_id[:8] if run_id else (checkpoint.parent.name or checkpoint.stem)
    body = f"{min_steps}to{max_steps}steps-multi" if multi else f"{steps}steps-{objective}"
    return _slug(f"{label}-{body}" + ("-grid" if sampler == "grid" else ""))


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
        need(args.objective == "pesq_wb", f"--objective {args.objective}: with --multi the objectives are fixed "
             "(PESQ-wb and STOI against steps)")
        need(args.sampler == "tpe", "--sampler grid is the single-objective baseline; use --sampler tpe with --multi")
    uri = tracking_uri()
    checkpoint, run_id = resolve_model(args.model, uri)
    study = args.study or default_study_name(checkpoint, run_id, args.steps, args.objective, args.multi,
                                             args.min_steps, args.max_steps, args.sampler)
    return SearchSpec(str(checkpoint), run_id, args.steps, args.trials, args.objective, args.multi, args.min_steps,
                      args.max_steps, args.sampler, _absolute_storage(args.storage or "sqlite:///optuna.db"), study,
                      args.workers, args.limit_utterances, args.seed, args.out, args.device, uri)


# ----------------------------------------------------------------------------- scoring one schedule

@dataclass
class MetricSummary:
    mean: float | None  # over the utterances where the metric exists
    n: int
    n_missing: int
    reason: str | None  # the first missing value's reason


def summarize_scores(scores: list[dict]) -> dict[str, MetricSummary]:
    out = {}
    for name in dict.fromkeys(k for s in scores for k in s):
        values = [s[name] for s in scores if name in s]
        present = [float(v) for v in values if not isinstance(v, Missing)]
        reasons = [v.reason for v in values if isinstance(v, Missing)]
        out[name] = MetricSummary(float(np.mean(present)) if present else None, len(present), len(reasons),
                                  reasons[0] if reasons else None)
    return out


class Evaluator:
    """Synthesizes the fixed utterance subset with a schedule (ground-truth durations, fixed noise per
    utterance) and scores it with every aligned metric."""

    def __init__(self, loaded, utterances: list, seed: int):
        self.loaded, self.utterances, self.seed = loaded, utterances, seed
        self.ids = [loaded.vocab.encode(u.phonemes) for u in utterances]

    def noise_seed(self, index: int) -> int:
        return self.seed * 1_000_003 + index

    def batches(self, betas: np.ndarray, size: int) -> Iterator[tuple[int, list[dict]]]:
        """(utterances done, their scores) after each batch of `size` utterances."""
        n = len(self.utterances)
        for start in range(0, n, max(1, size)):
            jobs = []
            for i in range(start, min(n, start + size)):
                u = self.utterances[i]
                out = synth.synthesize(self.loaded, [self.ids[i]], betas, [u.durations], seed=self.noise_seed(i))[0]
                jobs.append(ScoreJob(u.id, u.audio, out.audio, self.loaded.sample_rate, aligned=True))
            yield min(n, start + size), score_many(jobs, 1, progress=False)

    def evaluate(self, betas: np.ndarray) -> dict[str, MetricSummary]:
        return summarize_scores([s for _, batch in self.batches(betas, len(self.utterances)) for s in batch])


def load_evaluator(spec: SearchSpec, progress: bool = False) -> Evaluator:
    from experiments.corpus import load_dataset
    from experiments.evaluate import pick_utterances

    loaded = synth.load_checkpoint(spec.checkpoint, spec.device)
    dataset = load_dataset(loaded.config.data, progress=progress)
    utterances = pick_utterances(dataset.split(SPLIT), spec.limit_utterances, spec.seed)
    if not utterances:
        raise InputError(f"{spec.checkpoint}: the model's corpus {loaded.config.data.root} has no {SPLIT} utterances")
    return Evaluator(loaded, utterances, spec.seed)


# ----------------------------------------------------------------------------- one trial

class TrialFailed(Exception):
    """The trial produced no usable objective value (the message says why)."""


def _record(trial, summary: dict[str, MetricSummary], done: int) -> None:
    trial.set_user_attr("wg2.metrics", {k: s.mean for k, s in summary.items()})
    trial.set_user_attr("wg2.n_missing", {k: s.n_missing for k, s in summary.items() if s.n_missing})
    trial.set_user_attr("wg2.missing_reasons", {k: s.reason for k, s in summary.items() if s.reason})
    trial.set_user_attr("wg2.utterances_scored", done)


def objective(trial, spec: SearchSpec, ev: Evaluator) -> float | tuple[float, ...]:
    steps = trial.suggest_int(space.STEPS_PARAM, spec.min_steps, spec.max_steps) if spec.multi else spec.steps
    betas = space.suggest_betas(trial, steps)  # (steps,) non-decreasing
    trial.set_user_attr("wg2.betas", betas.tolist())
    trial.set_user_attr("wg2.steps", steps)
    total, scores, summary = len(ev.utterances), [], {}
    for done, batch in ev.batches(betas, spec.prune_batch):
        scores += batch
        summary = summarize_scores(scores)
        _record(trial, summary, done)
        running = summary[spec.objective].mean
        if spec.multi or running is None:
            continue  # Optuna prunes single-objective studies only
        trial.report(running, done)
        if done < total and trial.should_prune():
            raise optuna.TrialPruned(f"running mean {spec.objective} = {running:.4f} after {done}/{total} utterances "
                                     "is worse than the median of earlier trials there")
    values = []
    for name in spec.objectives:
        if name == "steps":
            values.append(float(steps))
            continue
        s = summary[name]
        if s.mean is None:
            raise TrialFailed(f"{name} is missing for all {total} utterances: {s.reason}")
        values.append(s.mean)
    return values[0] if len(values) == 1 else tuple(values)


def run_trial(study, trial, spec: SearchSpec, ev: Evaluator):
    """Run one claimed trial and tell the study how it ended; returns the FrozenTrial."""
    started = time.perf_counter()
    trial.set_user_attr(OWNER, tracking.owner_id())
    try:
        values = objective(trial, spec, ev)
    except optuna.TrialPruned as err:
        trial.set_user_attr("wg2.prune_reason", str(err))
        trial.set_user_attr("wg2.seconds", time.perf_counter() - started)
        return study.tell(trial, state=TrialState.PRUNED)
    except (Exception, KeyboardInterrupt) as err:
        reason = str(err) if isinstance(err, TrialFailed) else describe_error(err)
        trial.set_user_attr("wg2.fail_reason", "interrupted (KeyboardInterrupt)" if isinstance(err, KeyboardInterrupt)
                            else reason)
        trial.set_user_attr("wg2.seconds", time.perf_counter() - started)
        frozen = study.tell(trial, state=TrialState.FAIL)
        if isinstance(err, KeyboardInterrupt):
            raise
        return frozen
    trial.set_user_attr("wg2.seconds", time.perf_counter() - started)
    return study.tell(trial, values)


@contextlib.contextmanager
def _file_lock(path: Path):
    """An exclusive lock between processes of this machine (no-op where fcntl does not exist)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def lock_path(spec: SearchSpec) -> Path:
    db = sqlite_path(spec.storage)
    if db is not None:
        return db.with_name(db.name + ".wg2-lock")
    key = hashlib.sha256(f"{spec.storage}\n{spec.study}".encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"wg2-search-{key}.lock"


def claim(study, lock: Path):
    """The next waiting trial of the study as a running Trial, or None when none waits. Never creates one."""
    with _file_lock(lock):
        if not study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            return None
        trial = study.ask()  # pops a waiting trial: the lock makes check-and-pop atomic for this machine
    if TICKET not in trial.user_attrs:  # a worker elsewhere took the last one in between: run it anyway
        trial.set_user_attr("wg2.over_budget", True)
    return trial


# ----------------------------------------------------------------------------- the study

class BudgetGridSampler(optuna.samplers.GridSampler):
    """GridSampler for ask/tell with a fixed budget: its after_trial calls study.stop() when the grid runs
    out, which only works inside study.optimize (raises otherwise); our budget already stops the workers
    and is capped at the grid size."""

    def after_trial(self, study, trial, state, values) -> None:
        return None


def make_sampler(spec: SearchSpec, worker_index: int = 0) -> optuna.samplers.BaseSampler:
    if spec.sampler == "grid":  # same seed in every worker: grid points are assigned by trial number
        return BudgetGridSampler(space.grid_search_space(spec.steps), seed=spec.seed)
    with warnings.catch_warnings():  # multivariate / group / constant_liar are marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=spec.seed + worker_index, n_startup_trials=TPE_STARTUP,
                                          multivariate=True, group=spec.multi, constant_liar=True)


def make_pruner(spec: SearchSpec) -> optuna.pruners.BasePruner:
    if spec.multi:
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=PRUNER_STARTUP, n_warmup_steps=0, interval_steps=1)


def make_storage(url: str) -> optuna.storages.RDBStorage:
    """An RDB storage; SQLite waits up to a minute for a lock instead of failing under parallel workers."""
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
    except Exception as err:  # bad URL, missing driver, unreachable server
        raise InputError(f"--storage {redact(url)}: cannot open: {type(err).__name__}: {err}") from err


def load_study(spec: SearchSpec, worker_index: int = 0) -> optuna.Study:
    return optuna.load_study(study_name=spec.study, storage=make_storage(spec.storage),
                             sampler=make_sampler(spec, worker_index), pruner=make_pruner(spec))


@dataclass(frozen=True)
class ModelInfo:
    checkpoint: str
    sha256: str
    config_hash: str
    step: int
    mlflow_run_id: str | None


def model_info(spec: SearchSpec, loaded) -> ModelInfo:
    from experiments.config import config_hash

    digest = hashlib.sha256()
    with open(spec.checkpoint, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return ModelInfo(spec.checkpoint, digest.hexdigest(), config_hash(loaded.config), loaded.step, spec.model_run_id)


def baseline_list(spec: SearchSpec) -> list[space.Baseline]:
    return space.multi_baselines(spec.min_steps, spec.max_steps) if spec.multi else space.baselines(spec.steps)


def open_study(spec: SearchSpec, model: ModelInfo, utterance_ids: list[str],
               device_type: str = "cpu") -> tuple[optuna.Study, bool]:
    """Create the study (once, here in the parent) or load it and check it was made for the same model and
    settings. The device type is part of it: CPU and CUDA generators draw different noise from one seed,
    so trials from both would not share their noise. Returns (study, created now)."""
    storage = make_storage(spec.storage)
    identity = {**spec.identity(), "model_sha256": model.sha256, "utterances": utterance_ids,
                "noise_device": device_type}
    if spec.study in optuna.study.get_all_study_names(storage):
        study = optuna.load_study(study_name=spec.study, storage=storage, sampler=make_sampler(spec),
                                  pruner=make_pruner(spec))
        stored = study.user_attrs.get("wg2.identity")
        if stored is not None:
            for key, value in identity.items():
                if stored.get(key) != value:
                    raise InputError(f"study {spec.study!r} in {redact(spec.storage)} was made with {key} = "
                                     f"{stored.get(key)!r}, this command has {value!r}: its trials would not be "
                                     "comparable; use another --study or the same settings")
            return study, False
    else:
        study = optuna.create_study(study_name=spec.study, storage=storage, directions=spec.directions,
                                    sampler=make_sampler(spec), pruner=make_pruner(spec), load_if_exists=True)
    if [d.name.lower() for d in study.directions] != spec.directions:
        raise InputError(f"study {spec.study!r} in {redact(spec.storage)} has directions "
                         f"{[d.name.lower() for d in study.directions]}, not {spec.directions}; use another --study")
    new = "wg2.identity" not in study.user_attrs
    if new:
        study.set_user_attr("wg2.identity", identity)
        study.set_user_attr("wg2.model", asdict(model))
        study.set_user_attr("wg2.created", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    return study, new


def fail_orphans(study: optuna.Study) -> int:
    """Trials left RUNNING by a dead worker of this machine are marked failed (their reason: INTERRUPTED).
    Trials owned by other machines are left alone: they may well be running."""
    host, n = socket.gethostname(), 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = t.user_attrs.get(OWNER, "")
        if owner.split(":")[0] == host and not tracking.owner_alive({TAG_OWNER: owner}):
            study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
            n += 1
    return n


def top_up(study: optuna.Study, spec: SearchSpec, new: bool) -> int:
    """Add waiting trials until the study holds spec.trials: the baselines first on a new study, then
    plain ones for the sampler. Returns how many were added."""
    have = len(study.get_trials(deepcopy=False))
    added = 0
    if new:
        for b in baseline_list(spec)[:max(0, spec.trials - have)]:
            study.enqueue_trial(space.to_params(b.betas, with_steps=spec.multi),
                                user_attrs={TICKET: "baseline", BASELINE: b.name, "wg2.baseline_adjusted": b.adjusted})
            added += 1
    free = spec.trials - have - added
    if spec.sampler == "grid":  # more trials than grid points would only repeat points
        on_grid = sum(1 for t in study.get_trials(deepcopy=False) if BASELINE not in t.user_attrs)
        free = min(free, len(space.grid_values(spec.steps)) ** spec.steps - on_grid)
    for _ in range(max(0, free)):
        study.add_trial(optuna.trial.create_trial(state=TrialState.WAITING, user_attrs={TICKET: "sampler"}))
        added += 1
    return added


# ----------------------------------------------------------------------------- MLflow

@dataclass(frozen=True)
class TrackingContext:
    uri: str
    experiment_id: str
    parent_run_id: str
    study_key: str


def study_key(spec: SearchSpec) -> str:
    return hashlib.sha256(f"{redact(spec.storage)}\n{spec.study}".encode()).hexdigest()[:16]


def open_parent_run(spec: SearchSpec, model: ModelInfo, utterance_ids: list[str]) -> TrackingContext:
    """The study's parent run: found by tag wg2.study_key (reused on resume) or created once."""
    uri = tracking.ensure_store(spec.tracking_uri)
    experiment_id = tracking.get_or_create_experiment(EXPERIMENT, uri=uri)
    mlf = tracking.client(uri)
    key = study_key(spec)
    tags = {TAG_KIND: KIND_SEARCH, TAG_STUDY: spec.study, TAG_STUDY_KEY: key, TAG_STORAGE: redact(spec.storage),
            TAG_MODEL: model.checkpoint, TAG_MODEL_SHA256: model.sha256, TAG_MODEL_CONFIG_HASH: model.config_hash,
            TAG_MODEL_RUN_ID: model.mlflow_run_id or "", TAG_OBJECTIVES: json.dumps(list(spec.objectives)),
            TAG_SAMPLER: spec.sampler, TAG_TRIALS_REQUESTED: str(spec.trials),
            TAG_GIT_COMMIT: tracking.git_commit(), TAG_MACHINE: tracking.machine(spec.device)}
    query = f"{tag_is(TAG_STUDY_KEY, key)} and {tag_is(TAG_KIND, KIND_SEARCH)}"
    runs = tracking.retry(lambda: search_all_runs(mlf, [experiment_id], query))
    if not runs:
        mine = tracking.retry(lambda: mlf.create_run(experiment_id, run_name=f"search: {spec.study}", tags=tags))
        runs = tracking.retry(lambda: search_all_runs(mlf, [experiment_id], query))
        if tracking.earliest(runs).info.run_id != mine.info.run_id:  # another command created it meanwhile
            tracking.retry(lambda: mlf.delete_run(mine.info.run_id))
    run_id = tracking.earliest(runs).info.run_id
    tracking.retry(lambda: tracking.log_tags(mlf, run_id, tags))
    params = {k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in spec.identity().items()}
    params.update({"model_sha256": model.sha256, "utterances": json.dumps(utterance_ids)})
    tracking.retry(lambda: tracking.log_params(mlf, run_id, params))  # identical on resume (checked)
    tracking.retry(lambda: mlf.update_run(run_id, status="RUNNING"))
    return TrackingContext(uri, experiment_id, run_id, key)


def _ms(moment: datetime | None) -> int | None:
    return int(moment.timestamp() * 1000) if moment is not None else None


def fail_reason(t: FrozenTrial) -> str | None:
    if t.state != TrialState.FAIL:
        return None
    return t.user_attrs.get("wg2.fail_reason") or INTERRUPTED


class TrialLogger:
    """One MLflow child run per finished trial (our own small callback; optuna-integration's MLflowCallback
    is deprecated in Optuna 5). A logging failure is reported, never fails the trial: the parent logs
    trials without a run at the end."""

    STATUS = {TrialState.COMPLETE: "FINISHED", TrialState.PRUNED: "KILLED"}

    def __init__(self, ctx: TrackingContext, spec: SearchSpec):
        self.ctx, self.spec, self.mlf = ctx, spec, tracking.client(ctx.uri)

    def __call__(self, t: FrozenTrial) -> str | None:
        try:
            return self.log(t)
        except Exception as err:  # noqa: BLE001 - the trial is already stored in the study
            print(f"warning: trial {t.number} not logged to MLflow yet ({type(err).__name__}: {err}); "
                  "the parent logs it at the end")
            return None

    def log(self, t: FrozenTrial) -> str:
        from mlflow.entities import Metric

        mlf, attrs, retry = self.mlf, t.user_attrs, tracking.retry
        tags = {"mlflow.parentRunId": self.ctx.parent_run_id, TAG_KIND: KIND_TRIAL, TAG_STUDY: self.spec.study,
                TAG_STUDY_KEY: self.ctx.study_key, TAG_TRIAL_NUMBER: str(t.number), TAG_STATE: t.state.name}
        for tag, value in ((TAG_ERROR, fail_reason(t)), (TAG_PRUNE_REASON, attrs.get("wg2.prune_reason")),
                           (TAG_BASELINE, attrs.get(BASELINE)), (TAG_OWNER, attrs.get(OWNER))):
            if value:
                tags[tag] = str(value)[:5000]
        name = f"trial {t.number}" + (f" ({attrs[BASELINE]})" if BASELINE in attrs else "")
        run = retry(lambda: mlf.create_run(self.ctx.experiment_id, start_time=_ms(t.datetime_start), tags=tags,
                                           run_name=name))
        run_id = run.info.run_id
        params: dict[str, Any] = dict(t.params)
        if "wg2.betas" in attrs:
            params.update({"steps": attrs["wg2.steps"], "betas": json.dumps(attrs["wg2.betas"])})
        retry(lambda: tracking.log_params(mlf, run_id, params))
        metrics = {k: v for k, v in attrs.get("wg2.metrics", {}).items() if v is not None}
        metrics.update({f"n_missing/{k}": v for k, v in attrs.get("wg2.n_missing", {}).items()})
        metrics.update({f"objective/{k}": v for k, v in zip(self.spec.objectives, t.values or [])})
        for key in ("seconds", "utterances_scored"):
            if f"wg2.{key}" in attrs:
                metrics[key] = attrs[f"wg2.{key}"]
        retry(lambda: tracking.log_metrics(mlf, run_id, metrics))
        now = int(time.time() * 1000)
        curve = [Metric(f"running/{self.spec.objective}", v, now, int(step))
                 for step, v in t.intermediate_values.items()]
        if curve:
            retry(lambda: mlf.log_batch(run_id, metrics=curve))
        if "wg2.betas" in attrs:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "schedule.json"
                path.write_text(json.dumps({"betas": attrs["wg2.betas"], "steps": attrs["wg2.steps"],
                                            "trial": t.number, "study": self.spec.study, "state": t.state.name}))
                retry(lambda: mlf.log_artifact(run_id, str(path)))
        retry(lambda: mlf.set_terminated(run_id, self.STATUS.get(t.state, "FAILED"), end_time=_ms(t.datetime_complete)))
        return run_id


def log_missing_trials(study: optuna.Study, ctx: TrackingContext, spec: SearchSpec) -> int:
    """Log every finished trial that has no child run yet (a worker died, or its logging failed)."""
    mlf = tracking.client(ctx.uri)
    query = f"{tag_is(TAG_STUDY_KEY, ctx.study_key)} and {tag_is(TAG_KIND, KIND_TRIAL)}"
    logged = {r.data.tags.get(TAG_TRIAL_NUMBER) for r in tracking.retry(
        lambda: search_all_runs(mlf, [ctx.experiment_id], query))}
    logger, n = TrialLogger(ctx, spec), 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)):
        if str(t.number) not in logged:
            logger.log(t)
            n += 1
    return n


# ----------------------------------------------------------------------------- workers

def describe_trial(t: FrozenTrial, spec: SearchSpec) -> str:
    attrs = t.user_attrs
    label = f"trial {t.number}" + (f" ({attrs[BASELINE]})" if BASELINE in attrs else "")
    steps = f"{attrs['wg2.steps']} steps" if "wg2.steps" in attrs else ""
    seconds = f"{attrs.get('wg2.seconds', 0.0):.1f} s"
    if t.state == TrialState.COMPLETE:
        values = ", ".join(f"{k} {v:.4f}" for k, v in zip(spec.objectives, t.values) if k != "steps")
        return f"{label}: {values} ({steps}, {seconds})"
    if t.state == TrialState.PRUNED:
        return f"{label}: pruned ({steps}, {seconds}): {attrs.get('wg2.prune_reason', '')}"
    return f"{label}: {t.state.name.lower()} ({seconds}): {fail_reason(t)}"


def work(study: optuna.Study, spec: SearchSpec, ev: Evaluator, logger: TrialLogger, on_trial=None) -> int:
    """Take waiting trials until none is left; returns how many this process ran."""
    lock, ran = lock_path(spec), 0
    while (trial := claim(study, lock)) is not None:
        frozen = run_trial(study, trial, spec, ev)
        logger(frozen)
        ran += 1
        if on_trial:
            on_trial(frozen)
    return ran




def _worker_main(spec: SearchSpec, ctx: TrackingContext, index: int) -> None:
    import torch

    watch_parent()
    # more torch threads than cores makes the convolutions spin (measured 8x slower on 2 cores)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // spec.workers))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tracking.quiet_mlflow_logs()
    work(load_study(spec, index), spec, load_evaluator(spec), TrialLogger(ctx, spec))




def run_workers(spec: SearchSpec, ctx: TrackingContext, study: optuna.Study, workers: int, report) -> list[str]:
    """Start `workers` spawned processes on the study; `report(frozen)` for each trial they finish.
    Returns error lines for workers that exited abnormally."""
    mp = multiprocessing.get_context("spawn")  # not fork: this process holds torch threads (and maybe CUDA)
    procs = start_workers(mp, _worker_main, lambda i: (spec, ctx, i), workers, spec.device, "wg2-search-worker")
    seen = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}

    def poll() -> None:
        for t in study.get_trials(deepcopy=False):
            if t.state.is_finished() and t.number not in seen:
                seen.add(t.number)
                report(t)

    try:
        while any(p.is_alive() for p in procs):
            time.sleep(1.0)
            poll()
    except KeyboardInterrupt:
        for proc in procs:  # they got the interrupt too: let them mark their trials failed
            proc.join(timeout=15)
        raise
    for proc in procs:
        proc.join()
    poll()
    return [f"{p.name} exited with code {p.exitcode}" for p in procs if p.exitcode]


# ----------------------------------------------------------------------------- results

def _write_json(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(data, indent=2, default=str) + "\n").encode())
    return path


def _trial_summary(t: FrozenTrial) -> dict[str, Any]:
    attrs = t.user_attrs
    out = {"trial": t.number, "state": t.state.name, "steps": attrs.get("wg2.steps"), "betas": attrs.get("wg2.betas"),
           "metrics": attrs.get("wg2.metrics", {}), "n_missing": attrs.get("wg2.n_missing", {}),
           "utterances_scored": attrs.get("wg2.utterances_scored")}
    if attrs.get("wg2.missing_reasons"):
        out["missing_reasons"] = attrs["wg2.missing_reasons"]
    if t.state == TrialState.FAIL:
        out["reason"] = fail_reason(t)
    if t.state == TrialState.PRUNED:
        out["reason"] = attrs.get("wg2.prune_reason")
    return out


def baseline_values(trials: list[FrozenTrial], spec: SearchSpec, ev: Evaluator | None) -> dict[str, dict]:
    """The baselines' metric values on the search's utterances: from their enqueued trials, or (a baseline
    that is not a trial of this study) from a separate evaluation with the same protocol."""
    out = {}
    for b in baseline_list(spec):
        t = next((t for t in trials if t.user_attrs.get(BASELINE) == b.name), None)
        if t is not None:
            out[b.name] = {**_trial_summary(t), "source": f"trial {t.number} of the study",
                           "adjusted_to_monotone": t.user_attrs.get("wg2.baseline_adjusted", False)}
        elif ev is not None:
            summary = ev.evaluate(b.betas)
            out[b.name] = {"state": "COMPLETE", "steps": len(b.betas), "betas": b.betas.tolist(),
                           "metrics": {k: s.mean for k, s in summary.items()},
                           "n_missing": {k: s.n_missing for k, s in summary.items() if s.n_missing},
                           "source": "separate evaluation (not a trial of the study)",
                           "adjusted_to_monotone": b.adjusted}
    return out


def export(study: optuna.Study, spec: SearchSpec, ev: Evaluator | None, model: ModelInfo,
           ctx: TrackingContext | None) -> list[Path]:
    """Write the schedule file(s); [] when no trial completed."""
    trials = study.get_trials(deepcopy=False)
    if not any(t.state == TrialState.COMPLETE for t in trials):
        return []
    counts = {s.name: sum(1 for t in trials if t.state == s) for s in TrialState}
    common = {
        "model": asdict(model),
        "evaluation": {"split": SPLIT, "utterances": [u.id for u in ev.utterances] if ev else None,
                       "limit_utterances": spec.limit_utterances, "seed": spec.seed, "durations": "ground truth",
                       "noise": "utterance i uses seed * 1000003 + i"},
        "study": {"name": spec.study, "storage": redact(spec.storage), "sampler": spec.sampler,
                  "trials": {k: v for k, v in counts.items() if v}, "parametrization": PARAMETRIZATION,
                  "mlflow": {"tracking_uri": redact(ctx.uri), "experiment_id": ctx.experiment_id,
                             "parent_run_id": ctx.parent_run_id} if ctx else None},
        "baselines": baseline_values(trials, spec, ev),
        "baseline_source": "the baselines' enqueued trials (same utterances, same noise seeds); a baseline "
                           "outside the trial budget is evaluated separately with the same protocol",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    out = Path(spec.out_dir)
    name = _slug(spec.study)
    if not spec.multi:
        best = study.best_trial
        better = max if spec.directions[0] == "maximize" else min
        reference = [b["metrics"].get(spec.objective) for b in common["baselines"].values()]
        reference = [v for v in reference if v is not None]
        doc = {"betas": best.user_attrs["wg2.betas"], "steps": best.user_attrs["wg2.steps"], "name": spec.study,
               "objective": spec.objective, "direction": spec.directions[0], "value": best.value,
               "best_baseline_value": better(reference) if reference else None,
               "best": _trial_summary(best), **common}
        return [_write_json(out / f"{name}.json", doc)]
    front = sorted(study.best_trials, key=lambda t: (t.values[2], -t.values[0], -t.values[1]))
    files, entries = [], []
    for steps in sorted({int(t.values[2]) for t in front}):
        best = next(t for t in front if int(t.values[2]) == steps)  # its best PESQ-wb (ties: STOI)
        doc = {"betas": best.user_attrs["wg2.betas"], "steps": steps, "name": f"{spec.study}-{steps}steps",
               "objectives": list(spec.objectives), "values": list(best.values), "best": _trial_summary(best),
               **common}
        files.append(_write_json(out / f"{name}-{steps}steps.json", doc))
        entries.append({"file": files[-1].name, "steps": steps, "pesq_wb": best.values[0], "stoi": best.values[1],
                        "trial": best.number})
    front_doc = {"name": spec.study, "objectives": list(spec.objectives), "schedules": entries,
                 "front": [_trial_summary(t) for t in front], **common}
    files.append(_write_json(out / f"{name}-front.json", front_doc))
    return files


def _save_figure(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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


# ----------------------------------------------------------------------------- the command

@dataclass
class SearchOutcome:
    study: str
    storage: str
    counts: dict[str, int]
    ran: int  # trials run by this command
    files: list[Path] = field(default_factory=list)
    experiment_id: str = ""
    parent_run_id: str = ""
    worker_errors: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 1 if self.worker_errors or not self.counts.get("COMPLETE") else 0


def run_search(spec: SearchSpec) -> SearchOutcome:
    """Run (or resume) a search; see the module docstring."""
    from tqdm import tqdm

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ev = load_evaluator(spec, progress=spec.progress)
    model = model_info(spec, ev.loaded)
    ids = [u.id for u in ev.utterances]
    study, new = open_study(spec, model, ids, ev.loaded.device.type)
    interrupted = fail_orphans(study)
    added = top_up(study, spec, new)
    ctx = open_parent_run(spec, model, ids)
    waiting = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    workers = max(1, min(spec.workers, waiting))
    print(f"study {spec.study!r} in {redact(spec.storage)} ({'new' if new else 'resumed'}): "
          f"{len(study.get_trials(deepcopy=False))} trials of --trials {spec.trials}, {waiting} to run on {workers} "
          f"worker(s) ({added} added, {interrupted} interrupted marked failed); {len(ids)} {SPLIT} utterances; "
          f"MLflow {redact(ctx.uri)}, experiment {EXPERIMENT!r}, parent run {ctx.parent_run_id}")
    bar = tqdm(total=waiting, desc=f"search {spec.study}", unit="trial", disable=not spec.progress or not waiting,
               dynamic_ncols=True)

    def report(t: FrozenTrial) -> None:
        bar.update(1)
        bar.write(describe_trial(t, spec))

    errors: list[str] = []
    try:
        if waiting and workers == 1:
            work(study, spec, ev, TrialLogger(ctx, spec), report)
        elif waiting:
            errors = run_workers(spec, ctx, study, workers, report)
    except KeyboardInterrupt:  # the running trials were marked failed; a rerun resumes the rest
        tracking.retry(lambda: tracking.client(ctx.uri).set_terminated(ctx.parent_run_id, "KILLED"))
        raise
    finally:
        bar.close()
    trials = study.get_trials(deepcopy=False)
    backfilled = log_missing_trials(study, ctx, spec)
    files = export(study, spec, ev, model, ctx)
    name, out = _slug(spec.study), Path(spec.out_dir)
    pictures = [plot_history(trials, spec, out / f"{name}-history.png")]
    if spec.multi and any(t.state == TrialState.COMPLETE for t in trials):
        pictures.append(plot_front(trials, study.best_trials, out / f"{name}-pareto.png"))
    mlf = tracking.client(ctx.uri)
    for path in [*files, *pictures]:
        tracking.retry(lambda: mlf.log_artifact(ctx.parent_run_id, str(path)))
    counts = {s.name: n for s in TrialState if (n := sum(1 for t in trials if t.state == s))}
    if errors:
        tracking.retry(lambda: mlf.set_tag(ctx.parent_run_id, TAG_ERROR, "; ".join(errors)[:5000]))
    tracking.retry(lambda: mlf.set_terminated(ctx.parent_run_id, "FAILED" if errors else "FINISHED"))
    if backfilled:
        print(f"logged {backfilled} trial(s) to MLflow that had no run yet")
    return SearchOutcome(spec.study, redact(spec.storage), counts, waiting - counts.get("WAITING", 0),
                         [*files, *pictures], ctx.experiment_id, ctx.parent_run_id, errors)


def cmd_search(args) -> int:
    spec = spec_from_args(args)
    outcome = run_search(spec)
    print(f"study {outcome.study!r}: {outcome.ran} trial(s) run now; states {outcome.counts}; "
          f"MLflow parent run {outcome.parent_run_id}")
    for path in outcome.files:
        print(f"wrote {path}")
    if not outcome.counts.get("COMPLETE"):
        print("no trial completed: no schedule file written (see the failure reasons above and in MLflow)")
    for line in outcome.worker_errors:
        print(f"error: {line}")
    return outcome.exit_code
