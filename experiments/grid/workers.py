"""What grid and search worker processes share: dying with their parent, passing SIGTERM on (it ends their work
the way Ctrl-C does, experiments/tracking/ending.py), and spreading over GPUs."""
from __future__ import annotations

import multiprocessing
import os
import threading
import time

from experiments.tracking.ending import Terminated


def stop_workers(procs: list, err: KeyboardInterrupt, timeout: float = 15.0) -> None:
    """After an interrupt of the parent: pass a SIGTERM on to the workers (Ctrl-C reached them already
    through the terminal's process group; `kill PID` did not), then let them mark their work KILLED."""
    if isinstance(err, Terminated):
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
    for proc in procs:
        proc.join(timeout=timeout)


def watch_parent() -> None:
    """End this worker (exit code 3) when the command that spawned it dies, kill -9 included. Its unit of
    work stays claimed by a dead owner and is picked up again by the next run of the command."""
    parent = multiprocessing.parent_process()

    def loop() -> None:
        while parent is not None and parent.is_alive():
            time.sleep(1.0)
        os._exit(3)

    threading.Thread(target=loop, name="wg2-parent-watch", daemon=True).start()


def visible_gpus(device: str) -> list[str]:
    """GPU ids to spread workers over (one worker per GPU, round robin): the ids listed in
    CUDA_VISIBLE_DEVICES, else every visible CUDA device; [] (leave the environment alone) on CPU or with
    fewer than two GPUs."""
    if device == "cpu":
        return []
    listed = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    if listed:
        return listed if len(listed) > 1 else []
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [str(i) for i in range(count)] if count > 1 else []


def start_workers(context, target, args_of, workers: int, device: str, name: str) -> list:
    """Start `workers` processes running target(*args_of(i)) from a multiprocessing `context`. Each starts with
    OMP_NUM_THREADS = cores // workers unless the user set it (more torch threads than cores spin: a convolution
    measured 8x slower here) and, with several GPUs, its own CUDA_VISIBLE_DEVICES, set before it imports torch.
    The parent's environment is restored afterwards."""
    saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES")}
    gpus, procs = visible_gpus(device), []
    try:
        if saved["OMP_NUM_THREADS"] is None:
            os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))
        for i in range(workers):
            if gpus:
                os.environ["CUDA_VISIBLE_DEVICES"] = gpus[i % len(gpus)]
            proc = context.Process(target=target, args=args_of(i), name=f"{name}-{i}")
            proc.start()
            procs.append(proc)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return procs
