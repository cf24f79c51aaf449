"""Pictures for reports: reference vs output log-mel spectrograms, ground-truth vs predicted durations, and a
run's training curves beside its conditioning gain.
PNG files are written to a temporary name in the target folder and moved into place, so a reader never sees half
a file."""
from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display: safe in workers and on headless machines
import matplotlib.pyplot as plt
import numpy as np

from evaluation.metrics import GAIN_KEY, PHONEME_GAIN_KEY
from evaluation.signal_features import HOP_S, TOP_DB, log_mel_db, mel_power

LOSSES = ("loss", "noise_loss", "mel_loss", "duration_loss")  # the training log's loss terms, as train() names them


def _save_atomic(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    finally:
        plt.close(fig)
    return path


def _log_mel(x: np.ndarray, sample_rate: int) -> np.ndarray:
    """(N_MELS, frames) in dB, 80 dB of range below the signal's peak (same features as the metrics)."""
    power = mel_power(np.nan_to_num(np.asarray(x, dtype=np.float64)), sample_rate)
    peak = 10.0 * np.log10(max(float(power.max(initial=0.0)), 1e-20))
    return log_mel_db(power, peak - TOP_DB).T


def spectrogram_comparison(path: str | Path, items: Sequence[tuple[str, np.ndarray, np.ndarray]],
                           sample_rate: int) -> Path:
    """One row per (title, reference, output): reference and output log-mel spectrograms side by side, sharing
    the colour scale of the row so level differences show."""
    if not items:
        raise ValueError("spectrogram_comparison needs at least one (title, reference, output) item")
    fig, axes = plt.subplots(len(items), 2, figsize=(11, 2.8 * len(items)), squeeze=False, layout="constrained")
    for row, (title, reference, output) in enumerate(items):
        ref_db, out_db = _log_mel(reference, sample_rate), _log_mel(output, sample_rate)
        top = max(ref_db.max(initial=-np.inf), out_db.max(initial=-np.inf))
        for col, (label, spec) in enumerate((("reference", ref_db), ("output", out_db))):
            ax = axes[row, col]
            extent = (0.0, spec.shape[1] * HOP_S, 0, spec.shape[0])
            image = ax.imshow(spec, origin="lower", aspect="auto", extent=extent, cmap="magma",
                              vmin=top - TOP_DB, vmax=top)
            ax.set_title(f"{title}: {label}", fontsize=9)
            ax.set_xlabel("seconds")
            ax.set_ylabel("mel band")
        fig.colorbar(image, ax=axes[row].tolist(), label="dB")
    return _save_atomic(fig, path)


def alignment_plot(path: str | Path, durations_true: Sequence[float], durations_pred: Sequence[float],
                   phonemes: Sequence[str]) -> Path:
    """Top: frames per phoneme, ground truth vs predicted bars. Bottom: cumulative alignment (phoneme index
    against frame), where a predicted line that drifts from the true one shows accumulated timing error."""
    true = np.asarray(durations_true, dtype=np.float64)
    pred = np.asarray(durations_pred, dtype=np.float64)
    if not (len(true) == len(pred) == len(phonemes)):
        raise ValueError(f"alignment_plot needs one duration per phoneme: {len(true)} true, {len(pred)} predicted, "
                         f"{len(phonemes)} phonemes")
    idx = np.arange(len(phonemes))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(6.0, 0.28 * len(phonemes) + 2), 6.5))
    top.bar(idx - 0.2, true, width=0.4, label="ground truth")
    top.bar(idx + 0.2, pred, width=0.4, label="predicted")
    top.set_xticks(idx, list(phonemes), fontsize=7)
    top.set_ylabel("frames")
    top.legend(fontsize=8)
    top.set_title(f"durations: total {true.sum():.0f} true vs {pred.sum():.0f} predicted frames", fontsize=9)
    for label, d in (("ground truth", true), ("predicted", pred)):
        edges = np.concatenate(([0.0], np.cumsum(d)))
        bottom.step(edges, np.concatenate((idx, [len(idx)])), where="post", label=label)
    bottom.set_xlabel("frame")
    bottom.set_ylabel("phoneme index")
    bottom.legend(fontsize=8)
    return _save_atomic(fig, path)


def training_curves(path: str | Path, history: Sequence[dict], title: str = "") -> Path | None:
    """Loss terms (log scale) and the conditioning gain with its 95% interval against the step: is the model
    still learning, and does it read its text more as it goes? None when the log is empty."""
    if not history:
        return None
    steps = np.asarray([h["step"] for h in history])
    fig, (ax_loss, ax_gain) = plt.subplots(1, 2, figsize=(11, 3.6))
    for key in LOSSES:
        values = np.asarray([h.get(key, np.nan) for h in history], dtype=float)
        if np.isfinite(values).any():
            ax_loss.plot(steps, values, lw=1, label=key)
    ax_loss.set(xlabel="step", ylabel="training loss (per logged batch)", yscale="log")
    ax_loss.legend(fontsize=8)
    for key, name in ((GAIN_KEY, "envelope gain"), (PHONEME_GAIN_KEY, "phoneme gain")):
        gains = [h for h in history if key in h]
        if gains:
            x = np.asarray([h["step"] for h in gains])
            mean = np.asarray([h[key] for h in gains])
            low = np.asarray([h.get(f"{key}_ci_low", m) for h, m in zip(gains, mean)])
            high = np.asarray([h.get(f"{key}_ci_high", m) for h, m in zip(gains, mean)])
            ax_gain.fill_between(x, low, high, alpha=0.25)
            ax_gain.plot(x, mean, "o-", ms=3, label=f"{name} (95% interval shaded)")
    ax_gain.axhline(1.0, color="grey", lw=0.8, ls="--", label="1: ignores its text")
    ax_gain.set(xlabel="step", ylabel="gain on speech frames (held-out utterances)")
    ax_gain.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save_atomic(fig, path)
