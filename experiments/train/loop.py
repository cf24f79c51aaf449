"""Training one WaveGrad 2 model (`wg2 train`: experiments/train/command.py runs it as an MLflow run): the
data, the model, resuming, logging and checkpoints around the step of experiments/train/step.py (the loss and
the update). The range predictor learns only through the noise loss (see components/durations.py).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from components.model import WaveGrad2
from components.spaces import SPACES
from evaluation.conditioning import ConditioningItem, Diagnostic, conditioning_gain
from evaluation.progress import LogLines, progress_enabled
from experiments.config.identity import train_hash
from experiments.config.run import ConfigError, InputError, RunConfig, config_from_dict
from experiments.train.autoencoder import ensure_autoencoder
from experiments.train.batches import TrainingItem, batch_indices, make_batch
from experiments.train.checkpoint import CHECKPOINT, read_for_resume, weights_error, write_checkpoint
from experiments.train.mel_targets import normalized_targets
from experiments.train.precision import compile_decoder, eager, precision_name, resolve_precision
from experiments.train.runtime import peak_memory_mb, preflight_run_folder, resolve_device
from experiments.train.step import EMA, TrainingStep

log = logging.getLogger(__name__)
# Without a progress bar (stderr not a terminal), a status line at a log step once this many seconds have
# passed since the last one, or every HEARTBEAT_LOGS log steps, whichever comes first (and at the last step).
HEARTBEAT_SECONDS = 30.0
HEARTBEAT_LOGS = 10


@dataclass
class TrainResult:
    checkpoint: Path
    steps: int
    history: list[dict] = field(default_factory=list)
    throughput: dict[str, float] = field(default_factory=dict)
    wall_seconds: float = 0.0
    autoencoder_run: dict | None = None


def training_items(utterances, vocab, signals: list[np.ndarray]) -> list[TrainingItem]:
    return [TrainingItem(vocab.encode(u.phonemes), u.durations.astype(np.int64), s)
            for u, s in zip(utterances, signals)]


def signal_scale(config: RunConfig, train_audio: list[np.ndarray], latents: list[np.ndarray] | None) -> dict:
    """The diffusion signal's gain (see ModelConfig.signal_std) and the range it is clipped to when sampling.
    Waveform: gain = signal_std / corpus std (1 when signal_std = 0); clip = gain (audio lies in [-1, 1]).
    Latent (unit variance after calibration): gain = signal_std, or the corpus waveform std when 0; clip =
    gain x the largest latent magnitude seen in training."""
    corpus_std = float(np.sqrt(np.mean([np.mean(a.astype(np.float64) ** 2) for a in train_audio])))
    target = config.model.signal_std
    if latents is None:
        gain = target / corpus_std if target > 0 else 1.0
        clip = gain
    else:
        gain = target if target > 0 else corpus_std
        clip = gain * max(float(np.abs(z).max()) for z in latents)
    return {"gain": gain, "clip": clip, "corpus_std": corpus_std,
            "std": gain * (corpus_std if latents is None else 1.0)}


def _trained_hash(existing: dict, path: Path) -> str:
    """The train hash of the config a checkpoint was trained with (from its stored config, so checkpoints written
    before the train hash was stored, and ones whose eval settings differ, are recognised)."""
    if "config" not in existing:
        return existing["config_hash"]
    try:
        return train_hash(config_from_dict(existing["config"], f"{path}: stored config"))
    except ConfigError:  # a config from an incompatible version: it cannot be this run's
        return existing["config_hash"]


def existing_checkpoint(config: RunConfig, ckpt_path: Path, resume: bool) -> dict | None:
    """The run folder's checkpoint, read (an unreadable one is an InputError naming it), or None. Refused: a
    checkpoint of another training config (eval settings aside), and an unfinished one without `resume`."""
    existing = read_for_resume(ckpt_path) if ckpt_path.exists() else None
    if existing is not None and _trained_hash(existing, ckpt_path) != train_hash(config):
        raise InputError(f"{ckpt_path}: holds a run with another training config (train hash "
                         f"{_trained_hash(existing, ckpt_path)}, this config {train_hash(config)}); use another --out")
    if existing is not None and existing["step"] < config.train.steps and not resume:
        raise InputError(f"{ckpt_path}: a checkpoint exists at step {existing['step']}; pass --resume or another --out")
    return existing


def train(config: RunConfig, out_dir: Path, device: str | torch.device = "auto", resume: bool = False,
          progress: bool = True,
          on_log: Callable[[int, dict[str, float]], None] | None = None, dataset=None,
          record_autoencoder: bool = True,
          on_checkpoint: Callable[[Path, int], None] | None = None) -> TrainResult:
    """Train one model (see the module docstring). A latent-space model's stage-one autoencoder is recorded as
    an MLflow run in experiment 'wg2 autoencoders' unless `record_autoencoder` is false (`--no-track`).
    `on_checkpoint(path, step)` is called after each checkpoint is saved (tracked runs upload it)."""
    from experiments.corpus.dataset import load_dataset

    out_dir = Path(out_dir)
    device = resolve_device(device)
    ckpt_path = out_dir / CHECKPOINT
    preflight_run_folder(out_dir)  # writable, and dead processes' temporaries gone, before any data is read
    existing = existing_checkpoint(config, ckpt_path, resume)
    if existing is not None and existing["step"] >= config.train.steps:
        return TrainResult(ckpt_path, existing["step"], existing["history"], existing.get("throughput", {}))

    dataset = dataset or load_dataset(config.data, progress=progress)
    longest = max(int(u.durations.sum()) for u in dataset.train)
    if config.train.window_frames > longest:
        raise InputError(f"train.window_frames = {config.train.window_frames} is longer than the longest training "
                         f"utterance ({longest} frames)")
    t, hop = config.train, dataset.hop_length
    autoencoder, ae_info = None, None
    probe = dataset.val[:t.gain_utterances]  # held out: the conditioning gain is measured on these
    space = SPACES.build(config.model.space, config.autoencoder)
    if space.uses_autoencoder:
        autoencoder, ae_info = ensure_autoencoder(config, dataset, device, progress=progress,
                                                  record=record_autoencoder)
    signals = space.encode_each([u.audio for u in dataset.train], autoencoder)
    probe_signals = space.encode_each([u.audio for u in probe], autoencoder)
    hop_signal = hop // space.hop_divisor
    scale = signal_scale(config, [u.audio for u in dataset.train], signals if space.uses_autoencoder else None)
    signals = [(s * scale["gain"]).astype(np.float32) for s in signals]
    items = training_items(dataset.train, dataset.vocab, signals)
    if t.mel_loss_weight > 0:
        for item, mel in zip(items, normalized_targets(dataset.train, dataset.sample_rate, hop)):
            item.mel = mel
    probe_scaled = [(s * scale["gain"]).astype(np.float32) for s in probe_signals]
    probe_items = [ConditioningItem(it.phoneme_ids, it.durations, it.signal)
                   for it in training_items(probe, dataset.vocab, probe_scaled)]

    torch.manual_seed(t.seed)
    model = WaveGrad2(config.model, len(dataset.vocab.symbols), config.autoencoder).to(device)
    if t.compile:  # in place: state_dict keys, checkpoints and the EMA are unchanged
        compile_decoder(model, device, None, "train.compile")
    if model.hop != hop_signal:
        raise InputError(f"hop mismatch: the decoder produces {model.hop} signal steps per frame, the data needs "
                         f"{hop_signal}")
    dtype = resolve_precision(t.precision, device)  # None: fp32; torch.bfloat16: the network under autocast
    training_step = TrainingStep(model, t, device, dtype)  # the mel head, optimizer and EMA; see step.py
    mel_head, optimizer, ema = training_step.mel_head, training_step.optimizer, training_step.ema
    step, history = 0, []
    if existing is not None:
        try:
            if ema is not None:  # the EMA copy must fit the model too (EMA.load_state_dict checks nothing)
                model.load_state_dict(existing["ema"])
            model.load_state_dict(existing["model"])
            if mel_head is not None:
                mel_head.load_state_dict(existing["mel_head"])
            optimizer.load_state_dict(existing["optimizer"])
            if ema is not None:
                ema.load_state_dict(existing["ema"])
        except (RuntimeError, ValueError, TypeError, AttributeError, KeyError) as err:
            raise weights_error(ckpt_path, err, "saved weights or optimizer state") from None
        step, history = existing["step"], existing["history"]
    audio_per_step = min(t.batch_size, len(items)) * t.window_frames * hop / dataset.sample_rate

    def checkpoint(at_step: int, throughput: dict) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_checkpoint(ckpt_path, config=config, step=at_step, model=model, optimizer=optimizer,
                         ema=ema.state_dict() if ema is not None else None, mel_head=mel_head, signal=scale,
                         vocab=dataset.vocab.to_list(), sample_rate=dataset.sample_rate, hop_length=hop,
                         history=history, throughput=throughput, precision=precision_name(dtype),
                         autoencoder=autoencoder, autoencoder_info=ae_info)

    model.train()
    bar = tqdm(total=t.steps, initial=step, desc="train", unit="step", disable=not progress_enabled(progress),
               dynamic_ncols=True)
    started, steps_done, throughput = time.perf_counter(), 0, {}
    lines = LogLines(progress, HEARTBEAT_SECONDS, HEARTBEAT_LOGS)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    while step < t.steps:
        batch = make_batch([items[i] for i in batch_indices(len(items), t.batch_size, t.seed, step)],
                           t.window_frames, hop_signal, t.seed, step).to(device)
        losses = training_step(batch, step)
        loss, noise_loss, duration_loss = losses.loss, losses.noise_loss, losses.duration_loss
        mel_loss = losses.mel_loss
        step, steps_done = step + 1, steps_done + 1
        bar.update(1)
        is_log = step % t.log_every == 0 or step == t.steps
        is_checkpoint = step % t.checkpoint_every == 0 or step == t.steps
        gain_metrics: dict[str, float] = {}
        if is_checkpoint and probe_items:  # does the model read its text? (the weights eval and synth use)
            with eager(model.decoder):  # a compiled decoder would recompile for every probe length
                gain = measure_gain(model, ema, probe_items, dataset.vocab.speech_ids(), t.noise_loss)
            gain_metrics = gain.metrics()
            log.info("step %d: envelope gain %.3f, phoneme gain %.3f on %d val utterances", step,
                     gain.envelope.mean, gain.phoneme.mean, len(probe_items))
        if device.type == "cuda" and (is_log or is_checkpoint):
            torch.cuda.synchronize(device)
        if is_log:
            rate = steps_done / (time.perf_counter() - started)
            entry = {"step": step, "loss": loss.item(), "noise_loss": noise_loss.item(),
                     "duration_loss": duration_loss.item(), "mel_loss": mel_loss.item(),
                     "learning_rate": optimizer.param_groups[0]["lr"], "steps_per_sec": rate,
                     "bf16": float(dtype is not None), **gain_metrics}  # bf16: the resolved precision
            history.append(entry)
            bar.set_postfix(loss=f"{entry['loss']:.4f}", steps_per_s=f"{rate:.2f}")
            if lines.due(last=step == t.steps):
                log.info("step %d/%d: loss %.4f, %.2f steps/s", step, t.steps, entry["loss"], rate)
            if on_log:
                on_log(step, {k: v for k, v in entry.items() if k != "step"})
        elif gain_metrics and on_log:
            on_log(step, gain_metrics)
        if is_checkpoint:
            rate = steps_done / (time.perf_counter() - started)
            throughput = {"steps_per_sec": rate, "audio_seconds_per_sec": rate * audio_per_step,
                          "peak_memory_mb": peak_memory_mb(device)}
            checkpoint(step, throughput)
            if on_checkpoint is not None:
                on_checkpoint(ckpt_path, step)
    bar.close()
    return TrainResult(ckpt_path, step, history, throughput, time.perf_counter() - started, ae_info)


def measure_gain(model: WaveGrad2, ema: EMA | None, items: list[ConditioningItem], speech_ids: list[int],
                 loss_kind: str) -> Diagnostic:
    """Envelope and phoneme gains of the weights that eval and synth use by default (the EMA when there is one)."""
    if ema is None:
        return conditioning_gain(model, items, speech_ids, loss_kind)
    raw = {k: v.detach().clone() for k, v in model.state_dict().items()}
    ema.copy_to(model)
    try:
        return conditioning_gain(model, items, speech_ids, loss_kind)
    finally:
        model.load_state_dict(raw)
