"""`wg2 train` outside a grid, an MLflow run unless `--no-track` (store: evaluation/runs.py; `wg2 eval`, the same
for an evaluation: experiments/infer/command.py).

`wg2 train CONFIG`: experiment "wg2 train" (or `--experiment NAME`), a run per training (tags wg2.kind=train,
wg2.train_hash = the config hash, wg2.train_key = the run's own key, claimed like a grid cell by its hash):
params (the flattened config, as in grids), config.toml, the corpus as a dataset input (digest = its content
hash), the training curves (train/*) while it trains, MLflow's system metrics (system/*), the checkpoint
uploaded at every train.checkpoint_every steps (tag wg2.checkpoint_step), throughput at the end. The run
folder records its run (mlflow_run.json). `--resume` continues that run; in a fresh folder (another machine,
another runs/) it takes over the latest interrupted run of the same config (killed, failed, or RUNNING with
a dead owner) and resumes from the store's checkpoint; when the store's copy of the folder's own run is at a
later step than the folder's, the store's is taken too. A run being trained by a live process is refused
(exit 2). Without --resume, a folder holding a checkpoint is refused as before (or found done).

The same run machinery serves grid cells: `run_training` (experiments/grid/cell.py calls it for each cell).
"""
from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path

from evaluation import runs
from evaluation.runs import EXPERIMENT_TRAIN
from experiments.config.disk import file_lock
from experiments.config.identity import train_hash
from experiments.config.run import InputError, RunConfig, load_config
from experiments.corpus.dataset import load_dataset
from experiments.tracking import claims, records, store
from experiments.tracking.ending import ends_if_stopped
from experiments.train import loop, store_checkpoints
from experiments.train.checkpoint import CHECKPOINT
from experiments.train.runtime import atomic_write_bytes, check_writable, preflight_run_folder, resolve_device

MARKER = "mlflow_run.json"  # in a tracked run folder: the run that trains there (its ID and key)

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- training (also a grid cell's)

def run_training(mlf, run_id: str, config: RunConfig, out: Path, device: str, dataset, resume: bool = True,
                 progress: bool = True, logged_config: RunConfig | None = None) -> loop.TrainResult:
    """Train `config` in folder `out` as MLflow run `run_id`: set-up logged (tags, params and config.toml of
    `logged_config`, default `config`; the corpus input), the store's checkpoint fetched when it is ahead of
    the local one, curves logged while training, each checkpoint uploaded, throughput at the end."""
    records.log_run_config(mlf, run_id, logged_config or config, str(resolve_device(device)))
    records.log_corpus_input(mlf, run_id, config.data.root, dataset.corpus_hash, "training",
                              {"train": len(dataset.train), "val": len(dataset.val), "test": len(dataset.test)})
    store_checkpoints.fetch_checkpoint(mlf, run_id, Path(out) / CHECKPOINT)
    curves = store.CurveLogger(mlf, run_id, store.logged_steps(mlf, run_id))
    upload = store_checkpoints.CheckpointUploader(mlf, run_id)
    result = loop.train(config, out, device=device, resume=resume, progress=progress, on_log=curves.on_log,
                            dataset=dataset, on_checkpoint=upload)
    curves.flush(result.history)
    upload(result.checkpoint, result.steps)  # training found done (a cell sharing a model): the file still goes up
    figures = {f"train/{k}": v for k, v in result.throughput.items()}
    if result.wall_seconds:
        figures["train/wall_seconds"] = result.wall_seconds
    store.retry(lambda: store.log_metrics(mlf, run_id, figures, step=result.steps))
    return result


def _interrupted_run(mlf, experiment_id: str, config_key: str) -> str | None:
    """The run key of the latest unfinished `wg2 train` run of this config whose checkpoint was uploaded."""
    query = f"{runs.tag_is(runs.TAG_TRAIN_HASH, config_key)} and {runs.tag_is(runs.TAG_KIND, runs.KIND_TRAIN)}"
    found = [r for r in store.retry(lambda: runs.search_all_runs(mlf, [experiment_id], query))
             if r.info.status != "FINISHED" and runs.TAG_TRAIN_KEY in r.data.tags
             and r.data.tags.get(runs.TAG_CHECKPOINT_STEP, "").isdigit()
             and int(r.data.tags[runs.TAG_CHECKPOINT_STEP]) > 0]
    if not found:
        return None
    return max(found, key=lambda r: (r.info.start_time or 0, r.info.run_id)).data.tags[runs.TAG_TRAIN_KEY]


def _read_marker(out: Path) -> dict | None:
    try:
        marker = json.loads((out / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and isinstance(marker.get("key"), str) else None


def tracked_train(config: RunConfig, out: Path, device: str = "auto", resume: bool = False,
                  config_file: str | None = None, experiment: str = EXPERIMENT_TRAIN,
                  progress: bool = True) -> tuple[loop.TrainResult, str | None]:
    """`wg2 train` as an MLflow run (see the module docstring). Returns (result, run ID or None when nothing
    was tracked: the run folder already held this training, finished)."""
    out = Path(out)
    ckpt = out / CHECKPOINT
    if ckpt.exists() and not resume:  # done already (returns), or another run's folder (InputError): no run
        return loop.train(config, out, device=device, resume=False, progress=progress), None
    preflight_run_folder(out)
    loop.existing_checkpoint(config, ckpt, resume)  # unreadable, or another config's: exit 2, no run made
    uri = store.ensure_store(runs.tracking_uri())  # an unwritable store: exit 2 before the corpus is read
    experiment_id = store.get_or_create_experiment(experiment, uri=uri)
    mlf = store.client(uri)
    config_key = train_hash(config)
    key = None
    if resume:
        marker = _read_marker(out)  # this folder's own run, or (a fresh folder) the interrupted run to take over
        key = marker["key"] if marker else (None if ckpt.exists() else _interrupted_run(mlf, experiment_id, config_key))
    key = key or uuid.uuid4().hex

    def create(tags: dict[str, str]) -> str:
        tags = {**tags, runs.TAG_KIND: runs.KIND_TRAIN, runs.TAG_TRAIN_HASH: config_key,
                runs.TAG_CONFIG_FILE: str(config_file or "")}
        name = f"train: {Path(config_file).stem if config_file else config_key}"
        return store.retry(lambda: mlf.create_run(experiment_id, run_name=name, tags=tags)).info.run_id

    run_id, state = claims.claim_run(mlf, experiment_id, runs.TAG_TRAIN_KEY, key, create)
    if state == "busy":
        owner = mlf.get_run(run_id).data.tags.get(runs.TAG_OWNER, "?")
        raise InputError(f"MLflow run {run_id} of this config is being trained by a live process ({owner}); "
                         "wait for it, or pass --no-track")
    if state == "finished":
        log.info("MLflow run %s (experiment %r) trained this folder to the end", run_id, experiment)
        return loop.train(config, out, device=device, resume=resume, progress=progress), run_id
    log.info("MLflow run %s (experiment %r, %s) in %s", run_id, experiment, state, uri)
    if run_id is None:  # claim_run gives an ID for every state but "busy", handled above
        raise RuntimeError(f"claiming an MLflow run for {out} gave no run ID")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / MARKER, json.dumps({"run_id": run_id, "key": key, "tracking_uri": uri}).encode())
    with ends_if_stopped(mlf, run_id):
        dataset = load_dataset(config.data, progress=progress)
        with claims.Heartbeat(uri, run_id), records.system_metrics(uri, run_id):
            result = run_training(mlf, run_id, config, out, device, dataset, resume=resume, progress=progress)
    store.end_run(mlf, run_id, "FINISHED")
    return result, run_id


RUN_LOCK = ".wg2-lock"  # in a run folder: held by the `wg2 train` writing it


def cmd_train(args) -> int:
    config = load_config(args.config, args.overrides)
    out = Path(args.out) if args.out else Path("runs") / train_hash(config)
    run_id = None
    check_writable(out, "run folder")
    made, lock = not out.exists(), out / RUN_LOCK
    # one training per run folder at a time: a second would make a second MLflow run or overwrite the checkpoint
    try:
        with file_lock(lock, f"--out {out}: another `wg2 train` is writing this run folder now; wait for it to "
                       "end or choose another --out", wait=False):
            if getattr(args, "no_track", False):
                result = loop.train(config, out, device=args.device, resume=args.resume, record_autoencoder=False)
            else:
                claims.stale_seconds()  # a bad $WG2_STALE_SECONDS: exit 2 now
                result, run_id = tracked_train(config, out, args.device, args.resume, args.config,
                                               args.experiment or EXPERIMENT_TRAIN)
    finally:
        if made and out.is_dir() and [p.name for p in out.iterdir()] == [RUN_LOCK]:  # stopped before any output
            lock.unlink(missing_ok=True)
            out.rmdir()
    first = result.history[0]["loss"] if result.history else float("nan")
    last = result.history[-1]["loss"] if result.history else float("nan")
    log.info("trained %d steps: loss %.4f -> %.4f; %.2f steps/s; checkpoint %s%s", result.steps, first, last,
             result.throughput.get("steps_per_sec", float("nan")), result.checkpoint,
             f"; MLflow run {run_id}" if run_id else "")
    return 0
