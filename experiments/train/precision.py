"""How the network computes: the numeric precision (`train.precision`, `eval.precision`) and CPU threads.

A precision setting is "fp32", "bf16" or "auto". "auto" means bf16 where the device computes it natively:
CUDA when torch.cuda.is_bf16_supported(), a CPU whose /proc/cpuinfo flags include `avx512_bf16` or
`amx_bf16` (AVX512-BF16 or AMX); fp32 otherwise. "bf16" is honoured on any device (CPU autocast works
everywhere, only slower without those instructions). Only the network runs in bf16, under
torch.autocast; the diffusion arithmetic (noise levels, the sampler update, the added noise) stays fp32.

Compiled kernels (`train.compile`, `eval.compile`): torch.compile (inductor) of the decoder only, the
network that runs once per training step and once per refinement step; encoder and upsampler stay eager.
The decoder is compiled in place (nn.Module.compile), so its state_dict keys, checkpoints and the EMA copy
are unchanged. Before compiling, a one-line kernel is compiled and run on the device, so a missing
toolchain (no C compiler on CPU, no Triton on CUDA) fails at once with the reason instead of inside the
first training step.
"""
from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path

import torch

from experiments.config.run import PRECISIONS, InputError

CPU_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU feature flags listed in /proc/cpuinfo (empty where the file is missing, e.g. macOS)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return frozenset()
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86, ARM
            flags.update(value.split())
    return frozenset(flags)


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX)."""
    return bool(cpu_flags() & CPU_BF16_FLAGS)


def device_has_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_has_bf16()
    return False


def resolve_precision(setting: str, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype for a precision setting on a device: torch.bfloat16, or None for plain fp32."""
    device = torch.device(device)
    if setting == "fp32":
        return None
    if setting == "bf16":
        return torch.bfloat16
    if setting == "auto":
        return torch.bfloat16 if device_has_bf16(device) else None
    raise ValueError(f"precision {setting!r}; allowed: {', '.join(PRECISIONS)}")


def precision_name(dtype: torch.dtype | None) -> str:
    """"bf16" or "fp32": what resolve_precision chose, for histories, summaries and tables."""
    return "bf16" if dtype == torch.bfloat16 else "fp32"


def autocast(device: torch.device, dtype: torch.dtype | None):
    """The context the network runs in: bf16 autocast, or nothing for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


@functools.cache
def compile_unavailable(device_type: str) -> str | None:
    """None when torch.compile builds and runs a kernel on this device type; otherwise why not (one line)."""
    if not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile"
    try:
        probe = torch.compile(lambda x: torch.nn.functional.leaky_relu(x * 2.0 + 1.0, 0.2), dynamic=False)
        probe(torch.ones(8, device=device_type))
    except Exception as err:  # noqa: BLE001 - any failure means: not here
        text = str(err).strip()
        return f"{type(err).__name__}: {text.splitlines()[0] if text else 'no message'}"
    return None


def compile_decoder(model: torch.nn.Module, device: torch.device | str, dynamic: bool | None, key: str) -> bool:
    """torch.compile model.decoder in place (idempotent). dynamic=True for synthesis, where every utterance
    has its own length; None (torch's default: dynamic after the first new shape) for training's fixed
    windows. Raises InputError naming `key` where compiling does not work on this machine. Returns whether
    it compiled now (False: it already was)."""
    decoder = model.decoder
    if not isinstance(decoder, torch.nn.Module):
        raise TypeError(f"model.decoder is a {type(decoder).__name__}, not a module")
    if getattr(decoder, "_compiled_call_impl", None) is not None:
        return False
    why = compile_unavailable(torch.device(device).type)
    if why is not None:
        raise InputError(f"{key} = true, but torch.compile does not work on this machine ({why}); "
                         f"set {key}=false to run eager")
    decoder.compile(dynamic=dynamic)
    return True


@contextlib.contextmanager
def eager(module: torch.nn.Module):
    """Run a module compiled in place (nn.Module.compile) eagerly for a while: for occasional calls of other
    shapes and grad modes (training's conditioning-gain probe), which would otherwise each recompile."""
    saved = getattr(module, "_compiled_call_impl", None)
    module._compiled_call_impl = None
    try:
        yield module
    finally:
        module._compiled_call_impl = saved


def set_threads() -> int:
    """Torch threads = the cores this process may use, unless OMP_NUM_THREADS says otherwise (then that).
    For the one-process commands (synth, eval, bench); returns the number set."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        n = int(env)
    else:
        n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(n)
    return n
