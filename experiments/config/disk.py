"""Output on disk: a full disk said plainly ("no space left on DEVICE writing PATH", an InputError, exit 2) for
every writer (checkpoints, wavs, corpus files, dataset caches, plots), and the lock that keeps two commands from
writing one output folder at once. Torch-free, so corpus-build workers can use it."""
from __future__ import annotations

import contextlib
import errno
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from experiments.config.run import InputError


def no_space_error(err: BaseException, path: Path | str, advice: str = "free space and rerun") -> InputError | None:
    """ENOSPC (or EDQUOT) as an InputError: "no space left on DEVICE writing PATH"; None for other errors. A
    library error without an errno (libsndfile's, numpy's short write) counts when the device is full now."""
    if isinstance(err, OSError) and err.errno is not None:
        full = err.errno in (errno.ENOSPC, errno.EDQUOT)
    else:  # (numpy's short write is an OSError without one)
        full = isinstance(err, Exception) and device_full(path)
    return InputError(f"no space left on {device_of(path)} writing {path}; {advice}") if full else None


def device_full(path: Path | str, margin: int = 64 * 1024) -> bool:
    """Less than `margin` bytes free on the device holding `path` (its nearest existing folder)."""
    here = Path(os.path.abspath(path))
    while not here.exists() and here != here.parent:
        here = here.parent
    try:
        stats = os.statvfs(here)
    except OSError:
        return False
    return stats.f_bavail * stats.f_frsize < margin


def device_of(path: Path | str) -> str:
    """The mount point holding `path` (its nearest existing folder), as users know the device."""
    here = Path(os.path.abspath(path))
    while not here.exists() and here != here.parent:
        here = here.parent
    while not os.path.ismount(here) and here != here.parent:
        here = here.parent
    return str(here)


@contextlib.contextmanager
def file_lock(path: Path | str, busy: str | None = None, wait: bool = True) -> Iterator[None]:
    """The one lock between processes of this machine: an exclusive fcntl.flock on `path` (created, with its
    folder, when missing) while the block runs. It guards the first opening (migration) of a new SQLite store, a
    run folder while a model trains there, a corpus build's output and the queue of an Optuna study. A second
    process asking for it waits (`wait`, logging `busy` when given) or stops with InputError(`busy`). The OS drops
    the lock when its process dies, kill -9 included. Where fcntl does not exist (Windows) it is a no-op: one
    command per store, run folder or study at a time there."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise InputError(busy or f"{path}: held by another process") from None
            if busy:
                logging.getLogger(__name__).info("%s; waiting for it", busy)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    except OSError:
        return False
    return True
