"""The study as a queue of trials: created once with its baselines and topped up with waiting trials to the
budget; workers claim waiting trials under a file lock and never create one; trials orphaned by a dead
worker of this machine are marked failed on resume. Sampler, pruner and storage are set up here."""
from __future__ import annotations

import hashlib
import socket
import tempfile
import warnings
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import optuna
from optuna.trial import TrialState

from evaluation.runs import TAG_OWNER, sqlite_path
from experiments.config.disk import file_lock
from experiments.config.run import InputError
from experiments.search import keys, space
from experiments.search.evaluator import ModelInfo
from experiments.search.spec import SearchSpec, redact
from experiments.tracking import claims

PRUNER_STARTUP = 3
TPE_STARTUP = 5


def lock_path(spec: SearchSpec) -> Path:
    db = sqlite_path(spec.storage)
    if db is not None:
        return db.with_name(db.name + ".wg2-lock")
    key = hashlib.sha256(f"{spec.storage}\n{spec.study}".encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"wg2-search-{key}.lock"


def claim(study, lock: Path):
    """The next waiting trial of the study as a running Trial, or None when none waits. Never creates one."""
    with file_lock(lock):
        if not study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            return None
        trial = study.ask()  # pops a waiting trial: the lock makes check-and-pop atomic for this machine
    if keys.TICKET not in trial.user_attrs:  # a worker elsewhere took the last one in between: run it anyway
        trial.set_user_attr(keys.OVER_BUDGET, True)
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


def open_study(spec: SearchSpec, model: ModelInfo, sets: dict,
               device_type: str = "cpu") -> tuple[optuna.Study, bool]:
    """Create the study (once, here in the parent) or load it and check it was made for the same model,
    settings and utterance sets (`sets`: evaluator.sets_identity, the ids selected and reported on, so a resumed
    study keeps both and never reports on an utterance it selected on). The device type is part of it: CPU and
    CUDA generators draw different noise from one seed, so trials from both would not share their noise.
    Returns (study, created now)."""
    storage = make_storage(spec.storage)
    identity = {**spec.identity(), "model_sha256": model.sha256, **sets, "noise_device": device_type}
    if spec.study in optuna.study.get_all_study_names(storage):
        study = optuna.load_study(study_name=spec.study, storage=storage, sampler=make_sampler(spec),
                                  pruner=make_pruner(spec))
        stored = study.user_attrs.get(keys.IDENTITY)
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
    new = keys.IDENTITY not in study.user_attrs
    if new:
        study.set_user_attr(keys.IDENTITY, identity)
        study.set_user_attr(keys.MODEL, asdict(model))
        study.set_user_attr(keys.CREATED, datetime.now(UTC).isoformat(timespec="seconds"))
    return study, new


def fail_orphans(study: optuna.Study) -> int:
    """Trials left RUNNING by a dead worker of this machine are marked failed (their reason: INTERRUPTED).
    Trials owned by other machines are left alone: they may well be running."""
    host, n = socket.gethostname(), 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = t.user_attrs.get(keys.OWNER, "")
        if owner.split(":")[0] == host and not claims.owner_alive({TAG_OWNER: owner}):
            study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
            n += 1
    return n


def top_up(study: optuna.Study, spec: SearchSpec, new: bool, baselines: list[space.Baseline]) -> int:
    """Add waiting trials until the study holds spec.trials: the baselines first on a new study (those that pass
    the model's schedule check: evaluator.checked_baselines), then plain ones for the sampler. Returns how many
    were added."""
    have = len(study.get_trials(deepcopy=False))
    added = 0
    if new:
        for b in baselines[:max(0, spec.trials - have)]:
            study.enqueue_trial(space.to_params(b.betas, with_steps=spec.multi),
                                user_attrs={keys.TICKET: "baseline", keys.BASELINE: b.name,
                                            keys.BASELINE_ADJUSTED: b.adjusted})
            added += 1
    free = spec.trials - have - added
    if spec.sampler == "grid":  # more trials than grid points would only repeat points
        on_grid = sum(1 for t in study.get_trials(deepcopy=False) if keys.BASELINE not in t.user_attrs)
        free = min(free, len(space.grid_values(spec.steps)) ** spec.steps - on_grid)
    for _ in range(max(0, free)):
        study.add_trial(optuna.trial.create_trial(state=TrialState.WAITING, user_attrs={keys.TICKET: "sampler"}))
        added += 1
    return added
