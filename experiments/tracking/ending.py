"""How a run ends when its work stops early: an interrupt (Ctrl-C, or SIGTERM from `kill PID` or a batch
scheduler's time limit) ends the MLflow run KILLED with the signal as its reason, any other error FAILED with the
error, and the exception goes on. The one helper for `wg2 train`, `wg2 eval`, a grid's parent run and its cells."""
from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator

from experiments.tracking.store import end_run

log = logging.getLogger(__name__)


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill PID`, a batch scheduler's time limit), raised like Ctrl-C so that every `except
    KeyboardInterrupt` ends its MLflow runs and Optuna trials KILLED instead of leaving them RUNNING."""


def interrupt_reason(err: KeyboardInterrupt) -> str:
    """The wg2.end_reason / fail reason of an interrupt: which signal ended the work."""
    return "terminated (SIGTERM)" if isinstance(err, Terminated) else "interrupted (KeyboardInterrupt)"


def raise_on_sigterm() -> None:
    """From now on SIGTERM raises Terminated in this process's main thread. The handler ignores further
    SIGTERMs (`kill` of the whole process group reaches a worker twice), so the clean-up it starts is not
    itself interrupted."""

    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated("terminated (SIGTERM)")

    if threading.current_thread() is threading.main_thread():  # signal handlers belong to the main thread
        signal.signal(signal.SIGTERM, handler)


def end_reason(err: BaseException) -> tuple[str, str]:
    """(MLflow status, wg2.end_reason) of a run that `err` stopped: KILLED with the signal for an interrupt,
    FAILED with the error otherwise."""
    if isinstance(err, KeyboardInterrupt):
        return "KILLED", interrupt_reason(err)
    return "FAILED", f"{type(err).__name__}: {err}"


def end_stopped_run(mlf, run_id: str, err: BaseException) -> None:
    """End a run that `err` stopped (see end_reason); a store failing here is logged, not raised over the cause."""
    status, reason = end_reason(err)
    try:
        end_run(mlf, run_id, status, reason)
    except Exception as failure:  # noqa: BLE001 - the original error matters more
        log.warning("run %s not marked %s: %s: %s", run_id, status, type(failure).__name__, failure)


@contextlib.contextmanager
def ends_if_stopped(mlf, run_id: str) -> Iterator[None]:
    """Around a run's work: an exception ends the run (end_stopped_run) and is raised again."""
    try:
        yield
    except BaseException as err:
        end_stopped_run(mlf, run_id, err)
        raise
