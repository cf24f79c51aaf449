"""MLflow store access shared by the grid runner, `wg2 train`/`wg2 eval`, the schedule search and the autoencoder
stage: opening and creating the store, experiments, ending runs, batched logging, retries. What each run records
(provenance tags, config, corpus input, system metrics): experiments/tracking/records.py.

Layout (evaluation/runs.py, shared with the readers): tracking URI from MLFLOW_TRACKING_URI, else a SQLite
store `mlflow.db` in the working directory. For a local SQLite store, new experiments keep their artifacts in
`mlartifacts/` beside the database file (so the default store puts them in `<cwd>/mlartifacts`). A remote
tracking server decides its own artifact location.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from evaluation.runs import TAG_END_REASON, sqlite_path, store_problem, tracking_uri
from experiments.config.disk import file_lock

T = TypeVar("T")

MAX_METRICS_PER_BATCH = 1000  # MLflow's limit for one log_batch call
MAX_PARAMS_PER_BATCH = 100
MIGRATE_LOCK_SUFFIX = ".wg2-migrate-lock"  # beside a SQLite store: the lock file of its first opening


def quiet_mlflow_logs() -> None:
    """The SQLite store runs its schema migrations through alembic, which logs every step at INFO. And
    MLflow writes "View run ... at: URL" to stdout when a run on a tracking server ends: stdout holds only
    a command's results (--json), so that is off unless MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT says otherwise."""
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    for name in ("alembic", "alembic.runtime.migration", "mlflow.store.db.utils"):
        logging.getLogger(name).setLevel(logging.WARNING)


def default_artifact_root(uri: str) -> Path | None:
    """`mlartifacts/` beside a local SQLite file; None (the server's choice) for other stores."""
    db = sqlite_path(uri)
    return db.parent / "mlartifacts" if db is not None else None


def client(uri: str | None = None):
    from mlflow.tracking import MlflowClient

    quiet_mlflow_logs()
    return MlflowClient(tracking_uri=uri or tracking_uri())


def _unwritable(path: Path | str) -> Exception:
    from experiments.config.run import InputError

    return InputError(f"cannot write the MLflow store at {path} (set MLFLOW_TRACKING_URI or fix permissions)")


def check_store_writable(uri: str | None = None) -> None:
    """Preflight for the store, creating nothing: InputError naming the URI when its scheme is unknown, its
    server accepts no connection within seconds, or its SQLite file is corrupt, truncated or another
    application's database (evaluation.runs.store_problem); for a local SQLite store, naming the path when the
    database file, or the folder it would be created in, cannot be written (a path component that is a file
    counts). Other stores are checked further when opened (ensure_store)."""
    from experiments.config.run import InputError

    uri = uri or tracking_uri()
    problem = store_problem(uri)
    if problem:
        raise InputError(problem)
    db = sqlite_path(uri)
    if db is None:
        return
    db = db.absolute()
    if db.exists():
        if not db.is_file() or not os.access(db, os.W_OK):
            raise _unwritable(db)
        return
    folder = db.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise _unwritable(db)


def ensure_store(uri: str | None = None) -> str:
    """Create (and migrate) the store once, in this process, before any worker touches it: several
    processes creating one SQLite schema at the same time race and fail (separate commands are serialised
    by a lock file beside the database). Returns the URI.

    A local SQLite store that cannot be written (its folder cannot be made, or sqlite says "unable to open
    database file" / "readonly database") is an InputError naming the path, before any work is done."""
    uri = uri or tracking_uri()
    db = sqlite_path(uri)
    check_store_writable(uri)
    if db is not None:
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise _unwritable(db) from err
    try:
        with _migration_lock(db):  # other commands may be opening the same new store right now
            client(uri).search_experiments(max_results=1)  # opening the store runs the migrations
    except Exception as err:
        text = str(err).lower()
        if "unable to open database file" in text or "readonly database" in text or isinstance(err, PermissionError):
            raise _unwritable(db if db is not None else uri) from err
        raise
    return uri


def _migration_lock(db: Path | None):
    """An exclusive lock (beside a local SQLite store) around its creation and migration: commands started
    together on one new store would otherwise run the migrations at once and fail (alembic 'expected to
    match one row', 'table experiments already exists'). No-op for server stores."""
    return file_lock(db.with_name(db.name + MIGRATE_LOCK_SUFFIX)) if db is not None else contextlib.nullcontext()


def end_run(mlf, run_id: str, status: str, reason: str | None = None) -> None:
    """End a run FINISHED, FAILED or KILLED; FAILED and KILLED carry `reason` as tag wg2.end_reason (a
    FINISHED run loses a stale one). Each step is tried on its own, so a failing tag write never leaves the
    run RUNNING; the status change is retried on a locked store and its error re-raised."""
    try:
        if reason is not None and status != "FINISHED":
            retry(lambda: mlf.set_tag(run_id, TAG_END_REASON, reason[:5000]))
        elif status == "FINISHED" and TAG_END_REASON in mlf.get_run(run_id).data.tags:
            retry(lambda: mlf.delete_tag(run_id, TAG_END_REASON))
    except Exception as err:  # noqa: BLE001 - the status matters more than the tag
        logging.getLogger(__name__).warning("run %s: end reason not recorded: %s", run_id, err)
    retry(lambda: mlf.set_terminated(run_id, status))


def _slug(name: str) -> str:
    """A folder name for an experiment: readable, and unique per name thanks to a short hash."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-")[:60] or "experiment"
    return f"{readable}-{hashlib.sha256(name.encode()).hexdigest()[:6]}"


def get_or_create_experiment(name: str, artifact_location: str | None = None, uri: str | None = None,
                             tags: dict[str, str] | None = None) -> str:
    """The id of experiment `name`, created if missing. Race-safe: when another process creates it
    between our lookup and our create, the already-exists error is caught and the name re-read."""
    from mlflow.exceptions import MlflowException

    uri = uri or tracking_uri()
    mlf = client(uri)
    found = mlf.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            mlf.restore_experiment(found.experiment_id)
        return found.experiment_id
    if artifact_location is None:
        root = default_artifact_root(uri)
        artifact_location = (root / _slug(name)).as_uri() if root is not None else None
    try:
        return mlf.create_experiment(name, artifact_location=artifact_location, tags=tags)
    except MlflowException as err:
        if "RESOURCE_ALREADY_EXISTS" not in str(err.error_code) and "already exists" not in str(err):
            raise
        found = mlf.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


# ----------------------------------------------------------------------------- batched logging

def _chunks(items: list[T], size: int) -> Iterable[list[T]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def log_metrics(mlf, run_id: str, values: dict[str, float], step: int = 0) -> None:
    """Log a flat dict of metrics in as few calls as MLflow allows."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(key, float(value), now, step) for key, value in values.items() if value is not None]
    for chunk in _chunks(metrics, MAX_METRICS_PER_BATCH):
        mlf.log_batch(run_id, metrics=chunk)


def log_params(mlf, run_id: str, params: dict[str, Any]) -> None:
    from mlflow.entities import Param

    items = [Param(key, str(value)) for key, value in params.items()]
    for chunk in _chunks(items, MAX_PARAMS_PER_BATCH):
        mlf.log_batch(run_id, params=chunk)


def log_tags(mlf, run_id: str, tags: dict[str, str]) -> None:
    from mlflow.entities import RunTag

    items = [RunTag(key, str(value)) for key, value in tags.items()]
    for chunk in _chunks(items, MAX_PARAMS_PER_BATCH):
        mlf.log_batch(run_id, tags=chunk)


def log_history(mlf, run_id: str, history: list[dict[str, float]], prefix: str = "train/",
                skip_steps: set[int] | frozenset[int] = frozenset()) -> int:
    """Log a training history ([{"step": s, "loss": ..., ...}, ...]) as metric curves, batched
    (at most 1000 values per call). Entries whose step is in `skip_steps` (already logged) are left
    out. Returns the number of values logged."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = []
    for entry in history:
        step = int(entry["step"])
        if step in skip_steps:
            continue
        for key, value in entry.items():
            if key != "step" and value is not None:
                metrics.append(Metric(f"{prefix}{key}", float(value), now, step))
    for chunk in _chunks(metrics, MAX_METRICS_PER_BATCH):
        mlf.log_batch(run_id, metrics=chunk)
    return len(metrics)


class CurveLogger:
    """Training curves to MLflow while training runs: buffered, flushed in batches, never a step twice."""

    def __init__(self, mlf, run_id: str, skip_steps: set[int], flush_every: int = 200, flush_seconds: float = 20.0):
        self.mlf, self.run_id, self.logged = mlf, run_id, set(skip_steps)
        self.buffer: list[dict] = []
        self.flush_every, self.flush_seconds, self._last = flush_every, flush_seconds, time.monotonic()

    def on_log(self, step: int, values: dict[str, float]) -> None:
        if step in self.logged:
            return
        self.buffer.append({"step": step, **values})
        if len(self.buffer) >= self.flush_every or time.monotonic() - self._last > self.flush_seconds:
            try:
                self.flush()
            except Exception as err:  # noqa: BLE001 - a store hiccup must not stop training; kept for later
                self._last = time.monotonic()
                logging.getLogger(__name__).warning("training curve not logged yet (will retry): %s", err)

    def flush(self, history: Sequence[dict] = ()) -> None:
        entries = self.buffer + [h for h in history if h["step"] not in self.logged]
        entries = list({int(e["step"]): e for e in entries}.values())  # one entry per step
        if entries:
            retry(lambda: log_history(self.mlf, self.run_id, entries, skip_steps=self.logged))
            self.logged.update(int(e["step"]) for e in entries)
        self.buffer, self._last = [], time.monotonic()


def logged_steps(mlf, run_id: str, key: str = "train/loss") -> set[int]:
    """Steps already present in a run's metric history (to avoid logging a curve twice on resume)."""
    return {m.step for m in mlf.get_metric_history(run_id, key)}


def retry(call: Callable[[], T], attempts: int = 5, delay: float = 0.5) -> T:
    """Retry a store call that failed because a SQLite database was briefly locked by another process."""
    for attempt in range(attempts):
        try:
            return call()
        except Exception as err:  # only lock errors are retried, the rest re-raised
            if "locked" not in str(err).lower() or attempt == attempts - 1:
                raise
            time.sleep(delay * (attempt + 1))
    raise AssertionError("unreachable")
