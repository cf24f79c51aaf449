"""The one lock (experiments/config/disk.py file_lock) and the one way a run ends when its work stops
(experiments/tracking/ending.py), on a real MLflow SQLite store."""
from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

import pytest

from evaluation.runs import TAG_END_REASON
from experiments.config.disk import file_lock
from experiments.tracking import store
from experiments.tracking.ending import Terminated, end_stopped_run, ends_if_stopped


def _waited(lock, hold: float = 0.6) -> float:
    """Seconds this thread waits for `lock()` while another thread holds it for `hold` seconds."""
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with lock():
            held.set()
            release.wait(hold)

    thread = threading.Thread(target=holder)
    thread.start()
    held.wait(5)
    started = time.monotonic()
    with lock():
        waited = time.monotonic() - started
    release.set()
    thread.join()
    return waited


def test_the_file_lock_makes_a_second_holder_wait(tmp_path: Path):
    path = tmp_path / "new" / "folder" / ".lock"  # its folder is made
    assert _waited(lambda: file_lock(path)) >= 0.4
    assert path.is_file()
    # the check fails for a lock that does not exclude (what a no-op lock would do)
    assert _waited(contextlib.nullcontext) < 0.4


def test_a_stopped_run_ends_killed_or_failed_with_its_reason(tmp_path: Path, caplog):
    uri = store.ensure_store(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlf = store.client(uri)
    experiment = store.get_or_create_experiment("ending", uri=uri)
    killed, failed, plain = (mlf.create_run(experiment).info.run_id for _ in range(3))

    with pytest.raises(Terminated), ends_if_stopped(mlf, killed):
        raise Terminated("terminated (SIGTERM)")
    with pytest.raises(ValueError, match="boom"), ends_if_stopped(mlf, failed):
        raise ValueError("boom")
    ends = {r: mlf.get_run(r) for r in (killed, failed)}
    assert ends[killed].info.status == "KILLED"
    assert ends[killed].data.tags[TAG_END_REASON] == "terminated (SIGTERM)"
    assert ends[failed].info.status == "FAILED"
    assert ends[failed].data.tags[TAG_END_REASON] == "ValueError: boom"

    # a store failing while the run is ended is logged; the work's own error is what the caller sees
    with pytest.raises(KeyboardInterrupt), ends_if_stopped(mlf, "0" * 32):
        raise KeyboardInterrupt
    assert any("not marked KILLED" in r.getMessage() for r in caplog.records)

    # the check fails for an ending that records no reason (the status alone)
    store.end_run(mlf, plain, "KILLED")
    assert TAG_END_REASON not in mlf.get_run(plain).data.tags
    end_stopped_run(mlf, plain, KeyboardInterrupt())
    assert mlf.get_run(plain).data.tags[TAG_END_REASON] == "interrupted (KeyboardInterrupt)"
