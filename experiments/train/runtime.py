"""Where the work runs and how its files are written: device choice, peak memory, atomic writes.
Shared by training, the autoencoder stage, synthesis, evaluation and the benchmark."""
from __future__ import annotations

import logging
import os
import re
import resource
from pathlib import Path

import torch

from evaluation.progress import progress_enabled  # noqa: F401 - re-exported: the one progress-bar rule
from experiments.config.disk import no_space_error, pid_alive
from experiments.config.run import InputError


def resolve_device(device: str | torch.device) -> torch.device:
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is visible")
    return torch.device(device)


def peak_memory_mb(device: torch.device) -> float:
    """CUDA allocator peak on GPU; the process's peak resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


TEMPORARY_MARK = ".wg2-tmp"  # NAME.wg2-tmp<pid>: a temporary wg2 made itself (other *.tmp<digits> files are not)


def _temporary(path: Path) -> Path:
    return path.with_name(path.name + f"{TEMPORARY_MARK}{os.getpid()}")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write through a temporary name in the same folder, then rename: a reader never sees half a file.
    On any failure the temporary is removed; a full disk is an InputError naming the device and the path."""
    tmp = _temporary(path)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException as err:
        full = no_space_error(err, path)
        tmp.unlink(missing_ok=True)
        if full is not None:
            raise full from err
        raise


def atomic_save(obj: dict, path: Path) -> None:
    """torch.save, atomically (see atomic_write_bytes). On any failure the temporary is removed; a full disk
    is an InputError naming the path."""
    tmp = _temporary(path)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException as err:
        full = no_space_error(err, path, "free space and rerun (with --resume to continue from the last checkpoint)")
        tmp.unlink(missing_ok=True)  # after the look at the device: it is full until this goes
        if full is not None:
            raise full from err
        raise


# ----------------------------------------------------------------------------- preflight

def check_writable(folder: Path, what: str = "output folder") -> None:
    """Create (if need be) `folder`, write and remove a probe file in it, and remove again the folders this
    made: an InputError naming the folder now, not after the expensive work that would write there."""
    folder = Path(folder)
    made, probe = [], folder / f".wg2-write-probe{os.getpid()}"
    try:
        for parent in reversed([folder, *folder.parents]):
            if not parent.exists():
                parent.mkdir()
                made.append(parent)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise InputError(f"{folder}: {what} is not writable ({err.strerror or err}); choose another or fix its "
                         "permissions") from None
    finally:
        for parent in reversed(made):
            try:
                parent.rmdir()
            except OSError:
                break


_TEMPORARY = re.compile(rf"^(?P<name>.+){re.escape(TEMPORARY_MARK)}(?P<pid>\d+)$")


def remove_orphaned_temporaries(folder: Path) -> list[Path]:
    """Delete the temporaries of wg2's atomic writes (`NAME.wg2-tmp<pid>`) in `folder` whose writing process is
    dead; returns them. A live writer's temporary is left alone, and so is every file wg2 did not name (a
    user's `notes.tmp999`)."""
    removed = []
    for path in sorted(Path(folder).glob(f"*{TEMPORARY_MARK}*")):
        match = _TEMPORARY.match(path.name)
        if match and path.is_file() and not pid_alive(int(match["pid"])):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def preflight_run_folder(folder: Path) -> None:
    """Before training: the run folder can be written, and dead processes' checkpoint temporaries are gone."""
    check_writable(folder, "run folder")
    if Path(folder).is_dir():
        for path in remove_orphaned_temporaries(folder):
            logging.getLogger(__name__).info("removed %s: the temporary of an interrupted checkpoint save (its "
                                             "process is gone)", path)
