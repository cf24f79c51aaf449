"""Where the work runs and how its files are written: device choice, peak memory, atomic writes.
Shared by training, the autoencoder stage, synthesis, evaluation and the benchmark."""
from __future__ import annotations

import errno
import logging
import os
import re
import resource
from pathlib import Path

import torch

from experiments.config.run import InputError


def resolve_device(device: str) -> torch.device:
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


def _temporary(path: Path) -> Path:
    return path.with_name(path.name + f".tmp{os.getpid()}")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write through a temporary name in the same folder, then rename: a reader never sees half a file."""
    tmp = _temporary(path)
    tmp.write_bytes(data)
    os.replace(tmp, path)


def atomic_save(obj: dict, path: Path) -> None:
    """torch.save, atomically (see atomic_write_bytes). On any failure the temporary is removed; a full disk
    is an InputError naming the path."""
    tmp = _temporary(path)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            raise InputError(f"no space left on device at {path}; free space and rerun (with --resume to "
                             "continue from the last checkpoint)") from err
        raise


# ----------------------------------------------------------------------------- reading checkpoints

_ADVICE = re.compile(r"weights_only|add_safe_globals|safe_globals|documentation of torch\.load|trust", re.I)


def error_text(err: BaseException) -> str:
    """An exception as one line for our messages: its first sentence, ANSI codes gone, and torch's advice to
    reload with weights_only=False (it runs arbitrary code from the file) or to allowlist globals dropped."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
    if "WeightsUnpickler error:" in text:  # the one part of torch's long message that says what is wrong
        detail = text.split("WeightsUnpickler error:", 1)[1].strip()
        text = f"it holds objects other than tensors and plain data: {detail}"
    parts = [p.strip() for line in text.splitlines() for p in re.split(r"(?<=\.)\s+", line)]
    kept = [p for p in parts if p and not _ADVICE.search(p)]
    line = " ".join(kept[:1]) or {"EOFError": "the file ends early (empty or truncated)"}.get(type(err).__name__, "")
    return f"{type(err).__name__}: {line}" if line else type(err).__name__


def read_checkpoint(path: Path, required: tuple[str, ...] = (), mmap: bool = False) -> dict:
    """torch.load(weights_only=True) of a file we wrote, or an InputError in one line naming the file and
    what is wrong (unreadable, truncated, foreign objects, not a dict, a required key missing). `mmap` maps
    the tensors instead of reading them (for a look at a few small entries of a large file)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # noqa: BLE001 - a truncated or foreign file, whatever torch raises for it
        raise InputError(f"{path}: not a readable checkpoint, truncated or not written by wg2 "
                         f"({error_text(err)})") from None
    if not isinstance(state, dict):
        raise InputError(f"{path}: not a wg2 checkpoint (holds a {type(state).__name__}, expected a dict)")
    require_keys(path, state, required)
    return state


def require_keys(path: Path, state: dict, keys: tuple[str, ...]) -> None:
    missing = [key for key in keys if state.get(key) is None]
    if missing:
        raise InputError(f"{path}: not a complete wg2 checkpoint: no {', '.join(missing)} in it")


def weights_error(path: Path, err: BaseException, what: str = "weights") -> InputError:
    """load_state_dict's complaint (size mismatches, missing or unexpected keys) as one line naming the file."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    problems = [p.strip() for line in lines[1:] for p in re.split(r"(?<=\.)\s+", line) if p.strip()] or lines
    shown = "; ".join(problems[:2]) + (f"; and {len(problems) - 2} more" if len(problems) > 2 else "")
    return InputError(f"{path}: its {what} do not match the model its config describes ({shown})")


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


_TEMPORARY = re.compile(r"^(?P<name>.+)\.tmp(?P<pid>\d+)$")


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


def remove_orphaned_temporaries(folder: Path) -> list[Path]:
    """Delete the temporaries of atomic writes (`NAME.tmp<pid>`) in `folder` whose writing process is dead;
    returns them. A live writer's temporary is left alone."""
    removed = []
    for path in sorted(Path(folder).glob("*.tmp*")):
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
