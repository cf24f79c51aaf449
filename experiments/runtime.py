"""Where the work runs and how its files are written: device choice, peak memory, atomic writes.
Shared by training, the autoencoder stage, synthesis, evaluation and the benchmark."""
from __future__ import annotations

import os
import resource
from pathlib import Path

import torch

from experiments.config import InputError


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
    """torch.save, atomically (see atomic_write_bytes)."""
    tmp = _temporary(path)
    torch.save(obj, tmp)
    os.replace(tmp, path)
