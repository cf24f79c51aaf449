"""`wg2 bench`: training and inference speed and memory per decoder preset, on the current device.

Method: synthetic inputs of realistic shape (random phonemes with 8-frame durations, random audio, random mel
targets), so no corpus is needed and every preset sees identical work. Each measurement warms up first (2 training
steps; 1 synthesis per preset and precision), synchronizes the device before reading the clock, and
repeats (5 times on CUDA; on CPU 3 times for tiny and once for the larger presets, whose 50-step
synthesis takes minutes). Every row is measured in eager fp32 and, in the same run, in the precision
chosen with --precision (default auto: bf16 autocast where the device computes bf16 natively, see
experiments/train/precision.py; `precision` names what it resolved to, and the bf16 columns appear only when
that is bf16). Training: steps/s and audio seconds per second, with the bf16/fp32 speedup, of the step `wg2 train`
runs (experiments/train/step.py) with the [train] section of --config (default: the defaults, WaveGrad 2's
losses plus the suite's auxiliary mel loss, weight averaging and gradient clipping), at --batch-size x
--window-frames. Inference:
real-time factor (synthesis seconds / audio seconds) for manual-6 and linear-50 at batch 1, only the
network under autocast as in `wg2 synth`. FLOPs: torch.utils.flop_counter.FlopCounterMode over one
decoder forward on the utterance, times the schedule's steps, per audio second (GFLOP per audio
second; encoder and upsampler, run once per utterance, are left out). Peak memory: CUDA allocator peak,
or the process's peak RSS on CPU (a high-water mark over the whole bench, so read it as an upper bound
on CPU).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from components.configs import ModelConfig
from components.diffusion import Diffusion
from components.model import WaveGrad2, count_parameters
from experiments.config.run import InputError, TrainConfig, load_config
from experiments.config.schedules import resolve_schedule
from experiments.infer.evaluate import machine_name
from experiments.train.batches import TrainingItem, make_batch
from experiments.train.mel_targets import N_MELS
from experiments.train.precision import autocast, precision_name, resolve_precision, set_threads
from experiments.train.runtime import check_writable, peak_memory_mb, resolve_device
from experiments.train.step import TrainingStep

SAMPLE_RATE, VOCAB = 22050, 64
# encoder sizes that go with each decoder preset (tiny = the quickstart model)
PRESET_MODELS: dict[str, dict[str, Any]] = {
    "tiny": dict(encoder_channels=32, duration_channels=16),
    "mini": dict(encoder_channels=64, duration_channels=32),  # the CPU recipe's model (experiments/configs/cpu.toml)
    "small": dict(encoder_channels=256, duration_channels=128),
    "base": dict(),
    "large": dict(),
}


def preset_model(preset: str) -> ModelConfig:
    """The model `wg2 bench` measures for a decoder preset (its encoder sizes from PRESET_MODELS)."""
    return dataclasses.replace(ModelConfig(decoder_preset=preset), **PRESET_MODELS.get(preset, {}))


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _clock(fn, device, repeats: int) -> float:
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / repeats


def bench_training(model, train: TrainConfig, device, dtype: torch.dtype | None, repeats: int):
    """Steps per second and audio seconds per second of the training step (experiments/train/step.py) with
    `train`'s losses, averaging and clipping, on train.batch_size synthetic utterances cut to train.window_frames."""
    hop = model.hop
    rng = np.random.default_rng(0)
    items = [TrainingItem(rng.integers(1, VOCAB, 40), np.full(40, 8),
                          rng.uniform(-0.5, 0.5, (model.signal_channels, 320 * hop)).astype(np.float32),
                          rng.standard_normal((320, N_MELS)).astype(np.float32) if train.mel_loss_weight > 0 else None)
             for _ in range(train.batch_size)]
    batch = make_batch(items, train.window_frames, hop, 0, 0).to(device)
    training_step = TrainingStep(model, train, device, dtype)
    model.train()
    count = iter(range(10**9))

    def step():
        training_step(batch, next(count))

    _clock(step, device, 2)
    seconds = _clock(step, device, repeats)
    return 1 / seconds, train.batch_size * train.window_frames * hop / SAMPLE_RATE / seconds


def _utterance(model, device, seconds_audio: float):
    frames = int(seconds_audio * SAMPLE_RATE / model.hop)
    n_tokens = max(1, frames // 8)
    ids = torch.randint(1, VOCAB, (1, n_tokens), device=device)
    mask = torch.ones(1, n_tokens, device=device)
    dur = torch.full((1, n_tokens), frames / n_tokens, device=device)
    return frames, ids, mask, dur


@torch.inference_mode()
def bench_inference(model, device, seconds_audio: float, schedule: str, dtype: torch.dtype | None, warm_up: bool,
                    repeats: int) -> float:
    betas = resolve_schedule(schedule)
    frames, ids, mask, dur = _utterance(model, device, seconds_audio)
    model.eval()

    def synth():  # as experiments.infer.synth.synthesize: only the network under autocast
        with autocast(device, dtype):
            enc, _ = model.encode(ids, mask)
            cond = model.condition(enc, dur, mask, torch.arange(frames, device=device)[None])

        def predict(x, lvl):
            with autocast(device, dtype):
                return model.denoise(x, cond.states, lvl)

        Diffusion.sample(predict, (1, 1, frames * model.hop), betas, device)

    if warm_up:
        _clock(synth, device, 1)
    return _clock(synth, device, repeats) / (frames * model.hop / SAMPLE_RATE)


@torch.inference_mode()
def decoder_flops(model, device, seconds_audio: float) -> tuple[int, float]:
    """FLOPs of one fp32 decoder forward on an utterance of seconds_audio, and that utterance's audio seconds."""
    from torch.utils.flop_counter import FlopCounterMode

    frames, ids, mask, dur = _utterance(model, device, seconds_audio)
    model.eval()
    enc, _ = model.encode(ids, mask)
    cond = model.condition(enc, dur, mask, torch.arange(frames, device=device)[None])
    x = torch.randn(1, model.signal_channels, frames * model.hop, device=device)
    level = torch.full((1,), 0.5, device=device)
    with FlopCounterMode(display=False) as counter:
        model.denoise(x, cond.states, level)
    return counter.get_total_flops(), frames * model.hop / SAMPLE_RATE


def run_bench(presets: list[str], device: str, seconds_audio: float | None, batch_size: int, window: int,
              precision: str = "auto", train: TrainConfig | None = None):
    """Rows of figures per preset. `train`: the training step's settings (default TrainConfig()); its batch size
    and window are replaced by `batch_size` and `window`."""
    train = dataclasses.replace(train or TrainConfig(), batch_size=batch_size, window_frames=window)
    dev = resolve_device(device)
    dtype = resolve_precision(precision, dev)
    name = precision_name(dtype)
    rows = []
    for preset in presets:
        config = preset_model(preset)
        torch.manual_seed(0)
        model = WaveGrad2(config, VOCAB).to(dev)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        repeats = 5 if dev.type == "cuda" else 3 if preset == "tiny" else 1
        row: dict[str, Any] = {"preset": preset, "params_M": count_parameters(model) / 1e6,
               "decoder_params_M": count_parameters(model.decoder) / 1e6, "device": dev.type, "precision": name,
               "batch_size": batch_size, "window_frames": window}  # what the training rates were measured at
        row["train_steps_per_s"], row["train_audio_s_per_s"] = bench_training(model, train, dev, None, repeats)
        if dtype is not None:
            row[f"{name}_steps_per_s"], _ = bench_training(model, train, dev, dtype, repeats)
            row[f"{name}_speedup"] = row[f"{name}_steps_per_s"] / row["train_steps_per_s"]
        seconds = seconds_audio or (10.0 if dev.type == "cuda" else 2.0)
        row["utterance_s"] = seconds
        row["timed_repeats"] = repeats
        schedules = ("manual-6", "linear-50")
        for i, schedule in enumerate(schedules):  # one warm-up per preset and precision (same shapes)
            row[f"rtf_{schedule}"] = bench_inference(model, dev, seconds, schedule, None, warm_up=i == 0,
                                                     repeats=repeats)
        if dtype is not None:
            for i, schedule in enumerate(schedules):
                row[f"{name}_rtf_{schedule}"] = bench_inference(model, dev, seconds, schedule, dtype, warm_up=i == 0,
                                                                repeats=repeats)
                row[f"{name}_rtf_speedup_{schedule}"] = row[f"rtf_{schedule}"] / row[f"{name}_rtf_{schedule}"]
        flops, audio_s = decoder_flops(model, dev, seconds)
        for schedule in schedules:
            row[f"gflop_per_audio_s_{schedule}"] = flops * len(resolve_schedule(schedule)) / audio_s / 1e9
        row["peak_memory_mb"] = peak_memory_mb(dev)
        rows.append(row)
        logging.getLogger(__name__).info("%s", json.dumps(row))
    return dev, rows


def format_table(machine: str, rows: list[dict], batch_size: int, window: int) -> str:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    lines = [f"wg2 bench on {machine}; training batch {batch_size} x {window} frames; inference batch 1", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = (f"{r[c]:.4g}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in cols)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


MAX_SECONDS = 60.0  # the longest utterance timed


def check_bench_args(args) -> list[str]:
    """The command line's numbers, presets and --out folder, refused before anything is timed; returns the presets."""
    import math

    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    unknown = [p for p in presets if p not in PRESET_MODELS]
    if unknown or not presets:
        raise InputError(f"--presets {args.presets!r}: {f'unknown {unknown}' if unknown else 'no preset named'}; "
                         f"allowed: {', '.join(PRESET_MODELS)}")
    if args.seconds is not None and not (math.isfinite(args.seconds) and 0 < args.seconds <= MAX_SECONDS):
        raise InputError(f"--seconds {args.seconds}: expected a number > 0 and <= {MAX_SECONDS:g} (utterance length "
                         "in seconds; leave it out for the default)")
    for name, value in (("--batch-size", args.batch_size), ("--window-frames", args.window_frames)):
        if value < 1:
            raise InputError(f"{name} {value}: expected an integer >= 1")
    if args.out:
        if Path(args.out).exists() and not Path(args.out).is_dir():
            raise InputError(f"--out {args.out}: a file; expected a folder for the table and JSON")
        check_writable(Path(args.out), "--out folder")
    return presets


def cmd_bench(args) -> int:
    presets = check_bench_args(args)
    train = load_config(getattr(args, "config", None), getattr(args, "overrides", [])).train
    set_threads()
    dev, rows = run_bench(presets, args.device, args.seconds, args.batch_size, args.window_frames, args.precision,
                          train)
    table = format_table(machine_name(dev), rows, args.batch_size, args.window_frames)
    if getattr(args, "json", False):
        print(json.dumps({"machine": machine_name(dev), "rows": rows}, indent=1))
    else:
        print("\n" + table)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"bench_{dev.type}.md").write_text(table + "\n\n" + __doc__.split("\n\n", 1)[1])
        (out / f"bench_{dev.type}.json").write_text(json.dumps({"machine": machine_name(dev), "rows": rows}, indent=2))
    return 0
