"""Stage one of latent-space runs: train the waveform autoencoder once per (corpus, autoencoder config),
cache it by hash, measure its reconstruction quality (the ceiling of every latent cell) and record it
as its own MLflow run. `wg2 autoencoder train CONFIG` runs it alone; `wg2 train` with
model.space = "latent" calls it when the cache is empty.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow.entities import Metric
from tqdm import tqdm

from components.autoencoder import AUTOENCODERS
from evaluation.pool import ScoreJob, score_many
from evaluation.progress import LogLines, progress_enabled
from evaluation.runs import (
    EXPERIMENT_AUTOENCODERS,
    KIND_AUTOENCODER,
    TAG_AUTOENCODER_KEY,
    TAG_KIND,
    tag_is,
    tracking_uri,
)
from evaluation.stats import summarize
from experiments.config.disk import file_lock
from experiments.config.run import InputError, RunConfig, load_config
from experiments.corpus.dataset import load_dataset
from experiments.tracking.store import ensure_store, get_or_create_experiment
from experiments.train.checkpoint import read_checkpoint, weights_error
from experiments.train.runtime import atomic_save, resolve_device

log = logging.getLogger(__name__)

RECON_UTTERANCES = 8  # val utterances scored for the reconstruction ceiling
RECON_METRICS = ("pesq_wb", "stoi", "estoi", "mel_cd")


def autoencoder_key(config: RunConfig, corpus_hash: str) -> str:
    """What the trained autoencoder depends on: the corpus content, the audio rate, the train split, its config."""
    d = config.data
    blob = {"corpus": corpus_hash, "sample_rate": d.sample_rate, "val": d.val_fraction, "test": d.test_fraction,
            "max_utterances": d.max_utterances, "autoencoder": dataclasses.asdict(config.autoencoder)}
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:12]


def _segments(utterances, length: int, batch: int, rng: np.random.Generator) -> torch.Tensor:
    out = np.zeros((batch, length), np.float32)
    for b in range(batch):
        audio = utterances[rng.integers(len(utterances))].audio
        start = int(rng.integers(0, max(len(audio) - length, 0) + 1))
        piece = audio[start:start + length]
        out[b, :len(piece)] = piece
    return torch.from_numpy(out)


def train_autoencoder(config: RunConfig, dataset, device: torch.device, progress: bool = True):
    ae_cfg = config.autoencoder
    torch.manual_seed(ae_cfg.seed)
    rng = np.random.default_rng(ae_cfg.seed)
    model = AUTOENCODERS.build(ae_cfg.kind, ae_cfg).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=ae_cfg.learning_rate)
    segment = ae_cfg.segment_samples - ae_cfg.segment_samples % ae_cfg.stride
    history, lines, started = [], LogLines(progress), time.perf_counter()
    model.train()
    for step in tqdm(range(ae_cfg.steps), desc="autoencoder", unit="step",
                     disable=not progress_enabled(progress), dynamic_ncols=True):
        audio = _segments(dataset.train, segment, ae_cfg.batch_size, rng).to(device)
        loss, parts = model.loss(audio, model(audio))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"autoencoder: non-finite loss at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % 25 == 0 or step == ae_cfg.steps - 1:
            history.append({"step": step, **{k: float(v) for k, v in parts.items()}})
            if lines.due(last=step == ae_cfg.steps - 1):
                log.info("autoencoder step %d/%d: loss %.4f, %.2f steps/s", step + 1, ae_cfg.steps, loss.item(),
                         (step + 1) / (time.perf_counter() - started))
    model.eval()
    with torch.no_grad():  # unit-variance latents, so diffusion noise levels mean what they mean on waveforms
        sample = torch.cat([model.encode(_segments(dataset.train, segment, ae_cfg.batch_size, rng).to(device))
                            for _ in range(4)])
        model.calibrate_scale(sample)
    return model, history


@torch.no_grad()
def reconstruction_quality(model, dataset, device: torch.device, workers: int = 2) -> dict[str, float]:
    """The ceiling of latent cells: encode-decode val utterances and score them like `wg2 eval` does."""
    utterances = sorted(dataset.val or dataset.train, key=lambda u: u.id)[:RECON_UTTERANCES]
    jobs = []
    for u in utterances:
        audio = torch.from_numpy(u.audio[None]).to(device)
        recon = model.decode(model.encode(audio))[0].float().cpu().numpy()
        jobs.append(ScoreJob(u.id, u.audio, recon, dataset.sample_rate, aligned=True))
    scores = score_many(jobs, workers, progress=False)
    result = {}
    for metric in RECON_METRICS:
        s = summarize([sc.get(metric) for sc in scores])
        if s["mean"] is not None:
            result[f"recon/{metric}"] = s["mean"]
        result[f"recon/{metric}_n_missing"] = s["n_missing"]
    return result


def _read_cached(path: Path) -> dict:
    """A cached autoencoder file, or an InputError in one line naming it (and saying the cache entry can go)."""
    try:
        state = read_checkpoint(path, ("model", "info"))
    except InputError as err:
        raise InputError(f"{err} (a cache entry: delete {path.parent} and it is trained again)") from None
    if not isinstance(state["info"], dict):
        raise InputError(f"{path}: its info is not a dict (a cache entry: delete {path.parent} and it is trained "
                         "again)")
    return state


def ensure_autoencoder(config: RunConfig, dataset, device: torch.device, progress: bool = True,
                       record: bool = True):
    """The trained autoencoder for this config, from the cache or trained now. Returns (model, info);
    info holds the cache key, the file, whether the cache was hit, the reconstruction metrics and the
    MLflow run in experiment 'wg2 autoencoders' that records them (None when not `record`)."""
    key = autoencoder_key(config, dataset.corpus_hash)
    path = Path(config.data.cache_dir) / "autoencoders" / key / "autoencoder.pt"
    model = AUTOENCODERS.build(config.autoencoder.kind, config.autoencoder)
    # Two grid workers starting latent cells at once train stage one once: the second waits, then reads the cache.
    with file_lock(path.parent.parent / f"{key}.lock", busy=f"autoencoder {key} is being trained by another process"):
        return _load_or_train(config, dataset, device, progress, record, key, path, model)


def _load_or_train(config, dataset, device, progress, record, key, path, model):
    if path.exists():
        state = _read_cached(path)
        try:
            model.load_state_dict(state["model"])
        except (RuntimeError, TypeError, AttributeError) as err:
            raise weights_error(path, err, "cached autoencoder weights") from None
        model.to(device).eval()
        info = {"key": key, "path": str(path), "cache_hit": True, **state["info"]}
    else:
        started = time.perf_counter()
        model, history = train_autoencoder(config, dataset, device, progress)
        info = {"key": key, "path": str(path), "cache_hit": False, "seconds": time.perf_counter() - started,
                "recon": reconstruction_quality(model, dataset, device, config.eval.metric_workers),
                "history": history}
        path.parent.mkdir(parents=True, exist_ok=True)
        kept = {k: v for k, v in info.items() if k not in ("path", "cache_hit")}
        atomic_save({"model": model.state_dict(), "info": kept}, path)
    info["mlflow_run_id"] = record_run(config, info) if record else None
    return model, info


def record_run(config: RunConfig, info: dict) -> str:
    """One MLflow run per (autoencoder key, experiment): found by tag, created once."""
    uri = tracking_uri()
    ensure_store(uri)
    client = mlflow.MlflowClient(uri)
    exp = get_or_create_experiment(EXPERIMENT_AUTOENCODERS)
    query = f"{tag_is(TAG_AUTOENCODER_KEY, info['key'])} and {tag_is(TAG_KIND, KIND_AUTOENCODER)}"
    found = client.search_runs([exp], query)
    if found:
        return found[0].info.run_id
    run = client.create_run(exp, run_name=f"autoencoder {config.autoencoder.kind} R={config.autoencoder.stride}",
                            tags={TAG_KIND: KIND_AUTOENCODER, TAG_AUTOENCODER_KEY: info["key"]})
    now = int(time.time() * 1000)
    params = [mlflow.entities.Param(f"autoencoder.{k}", str(v))
              for k, v in dataclasses.asdict(config.autoencoder).items()]
    metrics = [Metric(k, float(v), now, 0) for k, v in info.get("recon", {}).items()]
    metrics += [Metric(f"train/{k}", float(v), now, h["step"]) for h in info.get("history", []) for k, v in h.items()
                if k != "step"]
    for i in range(0, len(metrics), 900):
        client.log_batch(run.info.run_id, metrics=metrics[i:i + 900], params=params if i == 0 else [])
    if not metrics:
        client.log_batch(run.info.run_id, params=params)
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def cmd_autoencoder_train(args) -> int:
    config = load_config(args.config, args.overrides)
    dataset = load_dataset(config.data)
    _, info = ensure_autoencoder(config, dataset, resolve_device(args.device))
    state = "found in cache" if info["cache_hit"] else f"trained in {info['seconds']:.0f} s"
    recon = ", ".join(f"{k.split('/')[1]} {v:.3f}" for k, v in info.get("recon", {}).items() if "n_missing" not in k)
    logging.getLogger(__name__).info("autoencoder %s %s: %s\nreconstruction ceiling (val): %s\nMLflow run: %s",
                                     info["key"], state, info["path"], recon, info["mlflow_run_id"])
    return 0
