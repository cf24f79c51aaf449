"""Claiming runs. A unit of work (a grid cell) is one MLflow run found by a key tag. A worker claims it by creating
the run, or by taking over one that nobody is working on: not RUNNING (FAILED, KILLED), or RUNNING with a dead
owner. The owner tag says host:pid:process-start; on the same host a dead owner is seen at once (the pid is gone or
belongs to another process), on another host by a heartbeat tag older than `stale_seconds` (a live owner refreshes
it every HEARTBEAT_SECONDS). Two workers racing to create the same run both create one, then both list the runs:
the earliest (start time, run id) wins and the other deletes its own. This needs nothing but tags, so any tracking
store works."""
from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable

from evaluation.runs import TAG_HEARTBEAT, TAG_OWNER, search_all_runs, tag_is
from experiments.tracking.store import client, retry

HEARTBEAT_SECONDS = 30.0
STALE_SECONDS = 600.0  # default of $WG2_STALE_SECONDS
SETTLE_SECONDS = 0.5  # after a takeover, wait this long and re-read the owner: the last writer wins


def stale_seconds() -> float:
    """$WG2_STALE_SECONDS (default STALE_SECONDS), or an InputError naming it when it is not a number > 0."""
    import math

    from experiments.config.run import InputError

    text = os.environ.get("WG2_STALE_SECONDS", "").strip()
    if not text:
        return STALE_SECONDS
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise InputError(f"WG2_STALE_SECONDS={text!r}: expected a number of seconds > 0 (default {STALE_SECONDS:g})")
    return value


def owner_id() -> str:
    import psutil

    return f"{socket.gethostname()}:{os.getpid()}:{int(psutil.Process().create_time())}"


def owner_alive(tags: dict[str, str], stale: float | None = None, now: float | None = None) -> bool:
    """Is the process named by a run's owner tag still working on it? (`stale`: default $WG2_STALE_SECONDS)"""
    import psutil

    owner = tags.get(TAG_OWNER, "")
    host, _, rest = owner.partition(":")
    pid_text, _, started_text = rest.partition(":")
    if host == socket.gethostname() and pid_text.isdigit():
        pid = int(pid_text)
        if pid == os.getpid():
            return False  # this very process: whatever it was doing with the run, it is not doing it now
        try:
            return abs(psutil.Process(pid).create_time() - float(started_text or 0)) < 2.0
        except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
            return False
    try:
        beat = float(tags.get(TAG_HEARTBEAT, "0"))
    except ValueError:
        return False
    return (now or time.time()) - beat < (stale if stale is not None else stale_seconds())


class Heartbeat:
    """Refreshes a run's heartbeat tag from a background thread while work on it goes on."""

    def __init__(self, uri: str, run_id: str, every: float = HEARTBEAT_SECONDS):
        import threading

        self.uri, self.run_id, self.every = uri, run_id, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="wg2-heartbeat", daemon=True)

    def _loop(self) -> None:
        mlf = client(self.uri)
        while not self._stop.wait(self.every):
            try:
                mlf.set_tag(self.run_id, TAG_HEARTBEAT, f"{time.time():.0f}")
            except Exception:  # noqa: BLE001, S110 - a missed beat only makes the run look stale sooner
                pass

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def earliest(runs: list):
    return min(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id))


def claim_run(mlf, experiment_id: str, key_tag: str, key_value: str, create: Callable[[dict[str, str]], str],
              stale: float | None = None) -> tuple[str | None, str]:
    """Find or create the one run for `key_value` and claim it for this process.

    Returns (run_id, state): "finished" (a FINISHED run exists; do nothing), "busy" (a live owner is
    working on it), "resumed" (an interrupted or failed run taken over) or "new" (created here by
    `create(tags)`, which must create the run with the given tags and return its id)."""
    me = owner_id()
    query = tag_is(key_tag, key_value)
    for _ in range(3):
        runs = retry(lambda: search_all_runs(mlf, [experiment_id], query))
        finished = [r for r in runs if r.info.status == "FINISHED"]
        if finished:
            return earliest(finished).info.run_id, "finished"
        if runs:
            run = earliest(runs)
            if run.info.status == "RUNNING" and owner_alive(run.data.tags, stale):
                return run.info.run_id, "busy"
            run_id = run.info.run_id
            retry(lambda: mlf.set_tag(run_id, TAG_OWNER, me))
            retry(lambda: mlf.set_tag(run_id, TAG_HEARTBEAT, f"{time.time():.0f}"))
            retry(lambda: mlf.update_run(run_id, status="RUNNING"))
            time.sleep(SETTLE_SECONDS)
            if mlf.get_run(run_id).data.tags.get(TAG_OWNER) != me:
                return run_id, "busy"
            return run_id, "resumed"
        run_id = create({TAG_OWNER: me, TAG_HEARTBEAT: f"{time.time():.0f}", key_tag: key_value})
        runs = retry(lambda: search_all_runs(mlf, [experiment_id], query))
        winner = earliest(runs) if runs else None
        if winner is None or winner.info.run_id == run_id:
            return run_id, "new"
        retry(lambda: mlf.delete_run(run_id))  # lost the race: the earlier run is the cell's run
    raise RuntimeError(f"could not claim a run for {key_tag} = {key_value}")
