"""`wg2 eval CKPT [--schedules ...] [--split val] [--limit N] [--out DIR]`: quality and speed per schedule.

Protocol (README, "Evaluation protocol"): the split's utterances (a subset fixed by eval.seed) are
synthesized twice per schedule: with ground-truth durations, so output and reference line up sample
for sample (aligned metrics), and with predicted durations (free-running metrics: MCD with DTW,
duration error, length ratio). Real-time factor = synthesis seconds / audio seconds of the ground-truth
pass, after one warm-up synthesis, with the device synchronized; peak memory is the CUDA allocator
peak on GPU and the process's peak resident set size on CPU.

Batches: the scored outputs and the headline RTF (`rtf`, metric <schedule>/rtf) come from batch-1
synthesis. With eval.batch_size > 1 the ground-truth pass is synthesized (and timed) once more at that batch
size, reported as rtf_by_batch and the metric <schedule>/rtf_batch<N>; those outputs are not scored,
because batched synthesis is not the same computation: (1) the sampler draws its noise for the whole
padded batch at once, so each utterance gets other noise than at batch 1 (another sample of the same
distribution), and (2) the decoder has no length mask, so a shorter utterance's last ~2 frames (the
decoder's receptive field into the padding) differ from its batch-1 output even with identical noise;
the longest utterance of a batch, and everything before those edge frames, match to float precision
(tests/test_batched_eval.py).
"""
from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from components.schedules import start_snr_db
from evaluation.metrics import GAIN_KEY, METRICS, ON_FREE_RUNNING, PHONEME_GAIN_KEY, Missing, value_range
from evaluation.pool import ScoreJob, score_many
from evaluation.stats import summarize
from experiments.config.disk import no_space_error
from experiments.config.run import EvalConfig, InputError
from experiments.config.schedules import resolve_schedule, schedule_label
from experiments.infer.synth import LoadedModel, check_loaded_schedule, diagnose, synthesize, write_wav
from experiments.train.precision import precision_name, resolve_precision
from experiments.train.runtime import peak_memory_mb

log = logging.getLogger(__name__)


# Metrics of the free-running pass (predicted durations): output and reference lengths differ.
FREE_RUNNING = frozenset(name for name, info in METRICS.items() if info.eval_pass == ON_FREE_RUNNING)
# Kept audio (eval.audio_artifacts utterances): audio/<schedule>/<id>.wav (ground-truth durations),
# audio/<schedule>/free/<id>.wav (predicted durations) and audio/reference/<id>.wav (what both were scored against).
AUDIO_FREE, AUDIO_REFERENCE = "free", "reference"


@dataclass
class EvalResult:
    metrics: dict[str, float]
    summary: dict
    files: list[Path] = field(default_factory=list)


def pick_utterances(utterances: list, limit: int, seed: int) -> list:
    """A subset fixed by seed (stable across runs and models), in ID order."""
    ordered = sorted(utterances, key=lambda u: u.id)
    if limit and limit < len(ordered):
        keep = np.random.default_rng(seed).permutation(len(ordered))[:limit]
        ordered = [ordered[i] for i in sorted(keep)]
    return ordered


SKIP_UNKNOWN = "--skip-unknown-phonemes"


def known_utterances(loaded: LoadedModel, utterances: list, skip: bool = False) -> list:
    """The utterances whose phonemes the model knows. A corpus changed after training may hold others: an
    InputError names them (the corpus differs from the model's), or with `skip` they are left out, with a warning."""
    unknown = {u.id: sorted({p for p in u.phonemes if p not in loaded.vocab}) for u in utterances}
    unknown = {uid: found for uid, found in unknown.items() if found}
    if not unknown:
        return utterances
    shown = "; ".join(f"{uid} ({' '.join(found)})" for uid, found in list(unknown.items())[:5])
    more = f"; and {len(unknown) - 5} more" if len(unknown) > 5 else ""
    what = (f"the corpus at {loaded.config.data.root} differs from the one {loaded.path} was trained on: "
            f"{len(unknown)} of {len(utterances)} utterance(s) carry phonemes the model never saw: {shown}{more}")
    if not skip:
        raise InputError(f"{what}; rerun with {SKIP_UNKNOWN} to leave them out")
    log.warning("%s; left out (%s)", what, SKIP_UNKNOWN)
    return [u for u in utterances if u.id not in unknown]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_synthesis(loaded: LoadedModel, ids: list[np.ndarray], betas: np.ndarray, durations, seed: int,
                    batch_size: int, precision: str | None = None, compile: bool | None = None):
    """Synthesize after one warm-up call; returns outputs, seconds, peak memory in MiB."""
    warm = ids[:batch_size]  # a full batch: a compiled decoder sees the batch shape before the clock starts
    synthesize(loaded, warm, betas, None if durations is None else durations[:len(warm)], seed=seed,
               batch_size=batch_size, precision=precision, compile=compile)
    if loaded.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(loaded.device)
    _sync(loaded.device)
    start = time.perf_counter()
    out = synthesize(loaded, ids, betas, durations, seed=seed, batch_size=batch_size, precision=precision,
                     compile=compile)
    _sync(loaded.device)
    return out, time.perf_counter() - start, peak_memory_mb(loaded.device)


def evaluate(loaded: LoadedModel, config: EvalConfig, out_dir: Path | None, dataset=None,
             progress: bool = True, skip_unknown: bool = False) -> EvalResult:
    from experiments.corpus.dataset import load_dataset

    dataset = dataset or load_dataset(loaded.config.data, progress=progress)
    split = known_utterances(loaded, dataset.split(config.split), skip_unknown)
    utterances = pick_utterances(split, config.limit, config.seed)
    if not utterances:
        raise InputError(f"eval.split = {config.split!r} has no utterances in {loaded.config.data.root}")
    ids = [loaded.vocab.encode(u.phonemes) for u in utterances]
    true_durations = [u.durations for u in utterances]
    sr = loaded.sample_rate
    # Does the model read its text? Reported beside (and above) every quality number.
    gain = diagnose(loaded, utterances)
    jobs, speed, outputs = [], {}, {}
    for name in config.schedules:
        betas, label = resolve_schedule(name), schedule_label(name)
        started = time.perf_counter()
        log.info("eval %s: synthesizing %d utterance(s), ground-truth durations then free-running", label, len(ids))
        # scored and headline-timed at batch 1; eval.batch_size > 1 is timed beside it (see the module docstring)
        aligned, seconds, memory = timed_synthesis(loaded, ids, betas, true_durations, config.seed, 1,
                                                   config.precision, config.compile)
        audio_seconds = sum(len(s.audio) for s in aligned) / sr
        rtf_by_batch, memory_by_batch = {"1": seconds / audio_seconds}, {"1": memory}
        if config.batch_size > 1:
            _, batched_seconds, batched_memory = timed_synthesis(loaded, ids, betas, true_durations, config.seed,
                                                                 config.batch_size, config.precision, config.compile)
            rtf_by_batch[str(config.batch_size)] = batched_seconds / audio_seconds
            memory_by_batch[str(config.batch_size)] = batched_memory
        free = synthesize(loaded, ids, betas, None, pace=config.pace, seed=config.seed, precision=config.precision,
                          compile=config.compile)
        speed[label] = {"rtf": seconds / audio_seconds, "synthesis_seconds": seconds, "audio_seconds": audio_seconds,
                        "peak_memory_mb": memory, "batch_size": config.batch_size, "rtf_by_batch": rtf_by_batch,
                        "peak_memory_mb_by_batch": memory_by_batch, "compiled": config.compile, "steps": len(betas),
                        "start_snr_db": start_snr_db(betas, loaded.signal["std"]) if loaded.signal.get("std") else None}
        outputs[label] = (aligned, free)
        log.info("eval %s: synthesized in %.0f s (RTF %.2f at batch 1)", label, time.perf_counter() - started,
                 seconds / audio_seconds)
        for u, a, f in zip(utterances, aligned, free):
            jobs.append(ScoreJob(u.id, u.audio, a.audio, sr, aligned=True, tag=label))
            jobs.append(ScoreJob(u.id, u.audio, f.audio, sr, aligned=False, tag=label))
    scores = score_many(jobs, config.metric_workers, progress=progress)

    rows: list[dict[str, Any]] = []
    per_metric: dict[tuple[str, str], list] = {}
    for job, score in zip(jobs, scores):
        row: dict[str, Any] = {"utterance": job.id, "schedule": job.tag,
                               "durations": "true" if job.aligned else "predicted"}
        for metric, value in score.items():
            if job.aligned == (metric in FREE_RUNNING):
                continue  # each metric belongs to one pass: aligned (true durations) or free-running
            row[metric] = value.reason if isinstance(value, Missing) else value
            per_metric.setdefault((job.tag or "", metric), []).append(value)  # every job here has its tag
        rows.append(row)
    for label, (_, free) in outputs.items():
        errors = [float(np.abs(f.durations.astype(float) - d).mean()) for f, d in zip(free, true_durations)]
        per_metric[(label, "duration_error_frames")] = errors

    summary: dict[str, Any] = {"checkpoint": str(loaded.path), "step": loaded.step, "split": config.split,
               "utterances": [u.id for u in utterances], "device": str(loaded.device),
               "machine": machine_name(loaded.device), "speed": speed, "weights": loaded.weights,
               "signal": loaded.signal,
               **gain.summaries(), "reads_text": gain.reads_text,
               "metrics": {},
               "precision": precision_name(resolve_precision(config.precision, loaded.device))}
    metrics: dict[str, float] = gain.metrics()
    for (label, metric), values in sorted(per_metric.items()):
        s = summarize(values, bounds=value_range(metric))
        summary["metrics"].setdefault(label, {})[metric] = s
        for key, value in (("", s["mean"]), ("_ci_low", s["ci_low"]), ("_ci_high", s["ci_high"])):
            if value is not None:
                metrics[f"{label}/{metric}{key}"] = value
        metrics[f"{label}/{metric}_n_missing"] = s["n_missing"]
    for label, sp in speed.items():
        metrics[f"{label}/rtf"] = sp["rtf"]  # batch 1
        for batch, rtf in sp["rtf_by_batch"].items():
            if batch != "1":
                metrics[f"{label}/rtf_batch{batch}"] = rtf
        metrics[f"{label}/peak_memory_mb"] = sp["peak_memory_mb"]

    try:
        files = write_outputs(Path(out_dir), rows, summary, utterances, outputs, config, sr, loaded) if out_dir else []
    except Exception as err:
        if out_dir is None:  # nothing is written without it
            raise
        full = no_space_error(err, getattr(err, "filename", None) or out_dir, "free space or choose another --out, "
                              "and rerun")
        for name in ("per_utterance.tmp", "summary.tmp"):  # the temporaries of the two tables
            (Path(out_dir) / name).unlink(missing_ok=True)
        if full is not None:
            raise full from None
        raise
    return EvalResult(metrics, summary, files)


def machine_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__}"


def write_outputs(out_dir: Path, rows, summary, utterances, outputs, config: EvalConfig, sr: int,
                  loaded: LoadedModel) -> list[Path]:
    from evaluation.plots import alignment_plot, spectrogram_comparison, training_curves

    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    columns = list(dict.fromkeys(k for row in rows for k in row))
    path = out_dir / "per_utterance.csv"
    with open(path.with_suffix(".tmp"), "w", newline="") as fh:
        writer = csv.DictWriter(fh, columns)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(path.with_suffix(".tmp"), path)
    files.append(path)
    path = out_dir / "summary.json"
    path.with_suffix(".tmp").write_text(json.dumps(summary, indent=2, default=str))
    os.replace(path.with_suffix(".tmp"), path)
    files.append(path)
    shown = utterances[:min(3, len(utterances))]
    kept = utterances[:config.audio_artifacts]
    for u in kept:  # what the outputs were scored against, for listening beside them (wg2 compare's listen.html)
        wav = out_dir / "audio" / AUDIO_REFERENCE / f"{u.id}.wav"
        write_wav(wav, u.audio, sr)
        files.append(wav)
    for label, (aligned, free) in outputs.items():
        for u, a, f in zip(kept, aligned, free):
            for wav, audio in ((out_dir / "audio" / label / f"{u.id}.wav", a.audio),  # ground-truth durations
                               (out_dir / "audio" / label / AUDIO_FREE / f"{u.id}.wav", f.audio)):  # predicted
                write_wav(wav, audio, sr)
                files.append(wav)
        png = out_dir / f"spectrograms_{label}.png"
        spectrogram_comparison(png, [(f"{u.id} ({label})", u.audio, a.audio) for u, a in zip(shown, aligned)], sr)
        files.append(png)
        png = out_dir / f"alignment_{label}.png"
        alignment_plot(png, utterances[0].durations, free[0].durations, utterances[0].phonemes)
        files.append(png)
    curves = training_curves(out_dir / "training_curves.png", loaded.history, f"{loaded.path} (step {loaded.step})")
    return files + ([curves] if curves else [])


def eval_config(loaded: LoadedModel, args) -> EvalConfig:
    """The checkpoint's eval settings with the command line's changes (schedules checked against training)."""
    changes: dict[str, Any] = {}
    if args.schedules:
        changes["schedules"] = [s.strip() for s in args.schedules.split(",") if s.strip()]
        if not changes["schedules"]:
            raise InputError(f"--schedules {args.schedules!r}: expected at least one schedule name")
        for name in changes["schedules"]:
            try:
                betas = resolve_schedule(name)
            except ValueError as err:
                raise InputError(f"--schedules: {err}") from err
            check_loaded_schedule(loaded, betas, f"--schedules: schedule {name!r}")
    for key in ("split", "limit"):
        if getattr(args, key) is not None:
            changes[key] = getattr(args, key)
    if args.workers is not None:
        changes["metric_workers"] = args.workers
    if getattr(args, "precision", None) is not None:
        changes["precision"] = args.precision
    return dataclasses.replace(loaded.config.eval, **changes)


def check_eval_numbers(args) -> None:
    """The command line's numbers, refused before the checkpoint is read (as config keys are at load)."""
    if args.limit is not None and args.limit < 0:
        raise InputError(f"--limit {args.limit}: expected 0 (the whole split) or a positive number of utterances")
    if args.workers is not None and args.workers < 1:
        raise InputError(f"--workers {args.workers}: expected at least 1 metric worker process")


def check_eval_out(out: Path) -> None:
    from experiments.train.runtime import check_writable

    check_writable(out, "--out folder")


def gain_lines(summary: dict) -> list[str]:
    """The envelope and phoneme gains with the verdict (an eval summary, or a search export, holds both)."""
    lines = []
    for key, name in ((GAIN_KEY, "envelope gain (speech frames)"), (PHONEME_GAIN_KEY, "phoneme gain")):
        g = summary.get(key)
        if g and g.get("mean") is not None:
            ci = f"[{g['ci_low']:.3f}, {g['ci_high']:.3f}]" if g.get("ci_low") is not None else "(one utterance)"
            lines.append(f"{name} {g['mean']:.3f} 95% CI {ci} n={g['n']}")
    if lines:
        lines[-1] += (": reads its text" if summary.get("reads_text") else
                      ": DOES NOT READ ITS PHONEMES (interval includes 1): its quality numbers compare noise")
    return lines


def format_summary(summary: dict) -> str:
    lines = [f"{summary['checkpoint']} (step {summary['step']}, {summary.get('weights', 'raw')} weights), split "
             f"{summary['split']}, {len(summary['utterances'])} utterances, {summary['machine']}, "
             f"{summary.get('precision', 'fp32')}"]
    lines += gain_lines(summary)
    for label, metrics in summary["metrics"].items():
        sp = summary["speed"][label]
        snr = f", start SNR {sp['start_snr_db']:.1f} dB" if sp.get("start_snr_db") is not None else ""
        rtfs = sp.get("rtf_by_batch") or {str(sp["batch_size"]): sp["rtf"]}  # summaries from before rtf_by_batch
        rtf = ", ".join(f"{value:.4f} (batch {batch})" for batch, value in rtfs.items())
        lines.append(f"\n[{label}] {sp['steps']} steps: RTF {rtf}{', compiled' if sp.get('compiled') else ''}, "
                     f"peak memory {sp['peak_memory_mb']:.0f} MiB{snr}")
        for metric, s in metrics.items():
            if s["mean"] is None:
                lines.append(f"  {metric:24s} missing ({s['n_missing']}): {s['missing_reasons']}")
                continue
            ci = f"[{s['ci_low']:.3f}, {s['ci_high']:.3f}]" if s["ci_low"] is not None else "(one value)"
            extra = f", {s['n_missing']} missing" if s["n_missing"] else ""
            lines.append(f"  {metric:24s} {s['mean']:8.3f} 95% CI {ci} n={s['n']}{extra}")
    return "\n".join(lines)
