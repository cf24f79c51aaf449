"""The one lock between processes of this machine: an exclusive fcntl.flock on a lock file. It guards the first
opening (migration) of a new SQLite store, a run folder while a model trains there, and the queue of an Optuna
study. The OS drops the lock when its process dies, kill -9 included. Where fcntl does not exist (Windows) the
lock is a no-op: one command per store, run folder or study at a time there."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl

    HAVE_FCNTL = True
except ImportError:  # Windows
    HAVE_FCNTL = False


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created, with its folder, when missing) while the block runs; a second
    process asking for it waits."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not HAVE_FCNTL:
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
