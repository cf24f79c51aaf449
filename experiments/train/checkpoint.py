"""A trained model's checkpoint (`checkpoint.pt` in its run folder): the one module that writes it and reads it
back, for training's --resume, synthesis (experiments/infer/synth.py), the store's copy of it
(experiments/train/store_checkpoints.py) and a grid cell's record of its autoencoder run.

Format 2 (a dict, read with torch.load(weights_only=True)): "format", "model" (raw weights), "ema" (the moving
average, or None), "optimizer", "mel_head" (the auxiliary head, or None), "signal" (the diffusion signal's gain
and clip, see loop.signal_scale), "step", "config" (the run config as a dict), "config_hash", "train_hash",
"vocab" (phoneme symbols), "sample_rate", "hop_length", "history" (the training log), "throughput", "precision",
"autoencoder" (a latent model's stage-one weights, or None) and "autoencoder_info". Format 1 lacks "ema" and
"signal"; synthesis still reads it.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from experiments.config.identity import config_hash, train_hash
from experiments.config.run import InputError, RunConfig, to_dict
from experiments.train.runtime import atomic_save

CHECKPOINT = "checkpoint.pt"  # its name in a run folder
CHECKPOINT_FORMAT = 2  # 2: adds "ema" weights and "signal" (gain, clip) beside the raw weights
READABLE_FORMATS = (1, CHECKPOINT_FORMAT)
RESUME_KEYS = ("config_hash", "step", "history", "model", "optimizer")  # what `train --resume` reads
MODEL_KEYS = ("config", "vocab", "model", "step", "sample_rate", "hop_length")  # what synthesis reads


def write_checkpoint(path: Path, *, config: RunConfig, step: int, model: torch.nn.Module,
                     optimizer: torch.optim.Optimizer, ema: dict | None, mel_head: torch.nn.Module | None,
                     signal: dict, vocab: list[str], sample_rate: int, hop_length: int, history: list[dict],
                     throughput: dict, precision: str, autoencoder: torch.nn.Module | None,
                     autoencoder_info: dict | None) -> None:
    """Save a training's state atomically (see runtime.atomic_save); `ema` is the moving average's state dict."""
    atomic_save({
        "format": CHECKPOINT_FORMAT, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "ema": ema, "signal": signal, "mel_head": mel_head.state_dict() if mel_head is not None else None,
        "step": step, "config": to_dict(config), "config_hash": config_hash(config), "train_hash": train_hash(config),
        "vocab": vocab, "sample_rate": sample_rate, "hop_length": hop_length,
        "history": history, "throughput": throughput, "precision": precision,
        "autoencoder": autoencoder.state_dict() if autoencoder is not None else None,
        "autoencoder_info": autoencoder_info,
    }, path)


def read_for_resume(path: Path) -> dict:
    """A run folder's checkpoint for `train --resume` (RESUME_KEYS present), or an InputError naming the file."""
    return read_checkpoint(path, RESUME_KEYS)


def read_model(path: Path) -> dict:
    """A checkpoint for synthesis: a readable format with the MODEL_KEYS, or an InputError naming the file."""
    state = read_checkpoint(path)  # a truncated or foreign file: one line naming it
    if state.get("format") not in READABLE_FORMATS:
        raise InputError(f"{path}: not a wg2 checkpoint (format {' or '.join(map(str, READABLE_FORMATS))} expected)")
    require_keys(path, state, MODEL_KEYS)
    return state


def checkpoint_step(path: Path) -> int:
    """The step of a checkpoint file, 0 when there is none or it cannot be read (a truncated file counts as none).
    Maps the file instead of reading its tensors."""
    if not Path(path).is_file():
        return 0
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("step") or 0)
    except Exception:  # noqa: BLE001 - a truncated file counts as no checkpoint
        return 0


def autoencoder_info(path: Path) -> dict | None:
    """What a latent model's checkpoint records of its stage-one autoencoder (its MLflow run among it), or None."""
    return read_checkpoint(path, mmap=True).get("autoencoder_info")


# ----------------------------------------------------------------------------- reading our torch files

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
