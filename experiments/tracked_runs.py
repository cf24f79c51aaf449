"""`wg2 train` and `wg2 eval` outside a grid, each an MLflow run unless `--no-track` (store: evaluation/runs.py).

`wg2 train CONFIG`: experiment "wg2 train" (or `--experiment NAME`), one run per config (tag wg2.kind=train,
found by tag wg2.train_hash = the config hash, as grid cells are by their cell hash): params (the flattened
config, as in grids), config.toml, the corpus as a dataset input (digest = its content hash), the training
curves (train/*) while it trains, MLflow's system metrics (system/*), the checkpoint uploaded at every
train.checkpoint_every steps (tag wg2.checkpoint_step), throughput at the end. Rerunning a config whose run
FINISHED finds it (the checkpoint is downloaded when the run folder lacks it) and trains nothing; a run
being trained by a live process is refused (exit 2); an interrupted one (killed, failed, or its owner dead)
is taken over with `--resume`, from the run folder's checkpoint or, when the store's copy is at a later step
(another machine, another runs/ folder), from the store's.

`wg2 eval CKPT|RUN_ID`: experiment "wg2 eval" (or `--experiment NAME`), a new run per evaluation (tag
wg2.kind=eval; wg2.model_run_id when the model was given as a run ID, wg2.checkpoint the file): params (the
model's config with the eval settings used), the corpus as a dataset input (context "evaluation"), every
metric, the output folder as artifacts, system metrics.

The same run machinery serves grid cells: `run_training` (experiments/grid.py calls it for each cell).
"""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from evaluation import runs
from experiments import corpus
from experiments import evaluate as evaluation
from experiments import tracking
from experiments import train as training
from experiments.config import InputError, RunConfig, config_hash, flatten, load_config
from experiments.precision import set_threads
from experiments.runtime import preflight_run_folder, resolve_device
from experiments.synth import load_checkpoint

TRAIN_EXPERIMENT = "wg2 train"
EVAL_EXPERIMENT = "wg2 eval"

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- training (also a grid cell's)

def run_training(mlf, run_id: str, config: RunConfig, out: Path, device: str, dataset, resume: bool = True,
                 progress: bool = True, logged_config: RunConfig | None = None) -> training.TrainResult:
    """Train `config` in folder `out` as MLflow run `run_id`: set-up logged (tags, params and config.toml of
    `logged_config`, default `config`; the corpus input), the store's checkpoint fetched when it is ahead of
    the local one, curves logged while training, each checkpoint uploaded, throughput at the end."""
    tracking.log_run_config(mlf, run_id, logged_config or config, str(resolve_device(device)))
    tracking.log_corpus_input(mlf, run_id, config.data.root, dataset.corpus_hash, "training",
                              {"train": len(dataset.train), "val": len(dataset.val), "test": len(dataset.test)})
    tracking.fetch_checkpoint(mlf, run_id, Path(out) / training.CHECKPOINT)
    curves = tracking.CurveLogger(mlf, run_id, tracking.logged_steps(mlf, run_id))
    upload = tracking.CheckpointUploader(mlf, run_id)
    result = training.train(config, out, device=device, resume=resume, progress=progress, on_log=curves.on_log,
                            dataset=dataset, on_checkpoint=upload)
    curves.flush(result.history)
    upload(result.checkpoint, result.steps)  # training found done (a cell sharing a model): the file still goes up
    figures = {f"train/{k}": v for k, v in result.throughput.items()}
    if result.wall_seconds:
        figures["train/wall_seconds"] = result.wall_seconds
    tracking.retry(lambda: tracking.log_metrics(mlf, run_id, figures, step=result.steps))
    return result


def _end(mlf, run_id: str, status: str, reason: str) -> None:
    try:
        tracking.end_run(mlf, run_id, status, reason)
    except Exception as err:  # noqa: BLE001 - the original error matters more
        log.warning("run %s not marked %s: %s", run_id, status, err)


def _interrupted_checkpoint(mlf, experiment_id: str, key: str) -> tuple[str, int] | None:
    """(run ID, step) of an unfinished run of this config whose checkpoint was uploaded."""
    query = f"{runs.tag_is(runs.TAG_TRAIN_HASH, key)} and {runs.tag_is(runs.TAG_KIND, runs.KIND_TRAIN)}"
    for run in tracking.retry(lambda: runs.search_all_runs(mlf, [experiment_id], query)):
        step = run.data.tags.get(runs.TAG_CHECKPOINT_STEP, "")
        if run.info.status != "FINISHED" and step.isdigit() and int(step) > 0:
            return run.info.run_id, int(step)
    return None


def tracked_train(config: RunConfig, out: Path, device: str = "auto", resume: bool = False,
                  config_file: str | None = None, experiment: str = TRAIN_EXPERIMENT,
                  progress: bool = True) -> tuple[training.TrainResult, str]:
    """`wg2 train` as an MLflow run (see the module docstring). Returns (result, run ID)."""
    out = Path(out)
    preflight_run_folder(out)
    uri = tracking.ensure_store(runs.tracking_uri())  # an unwritable store: exit 2 before the corpus is read
    experiment_id = tracking.get_or_create_experiment(experiment, uri=uri)
    mlf = tracking.client(uri)
    key = config_hash(config)
    ckpt = out / training.CHECKPOINT
    if not resume and not ckpt.exists():
        found = _interrupted_checkpoint(mlf, experiment_id, key)
        if found is not None:
            raise InputError(f"MLflow run {found[0]} (experiment {experiment!r}) holds an interrupted training of "
                             f"this config, uploaded at step {found[1]}; pass --resume to continue it, or "
                             "--no-track")

    def create(tags: dict[str, str]) -> str:
        tags = {**tags, runs.TAG_KIND: runs.KIND_TRAIN, runs.TAG_CONFIG_FILE: str(config_file or "")}
        name = f"train: {Path(config_file).stem if config_file else key}"
        return tracking.retry(lambda: mlf.create_run(experiment_id, run_name=name, tags=tags)).info.run_id

    run_id, state = tracking.claim_run(mlf, experiment_id, runs.TAG_TRAIN_HASH, key, create)
    if state == "busy":
        owner = mlf.get_run(run_id).data.tags.get(runs.TAG_OWNER, "?")
        raise InputError(f"this config (hash {key}) is being trained in MLflow run {run_id} by a live process "
                         f"({owner}); wait for it, or pass --no-track")
    if state == "finished":
        tracking.fetch_checkpoint(mlf, run_id, ckpt)
        log.info("this config was trained before: MLflow run %s (experiment %r)", run_id, experiment)
        return training.train(config, out, device=device, resume=resume, progress=progress), run_id
    log.info("MLflow run %s (experiment %r, %s) in %s", run_id, experiment, state, uri)
    try:
        dataset = corpus.load_dataset(config.data, progress=progress)
        with tracking.Heartbeat(uri, run_id), tracking.system_metrics(uri, run_id):
            result = run_training(mlf, run_id, config, out, device, dataset, resume=resume, progress=progress)
    except KeyboardInterrupt:
        _end(mlf, run_id, "KILLED", "interrupted (KeyboardInterrupt)")
        raise
    except BaseException as err:
        _end(mlf, run_id, "FAILED", f"{type(err).__name__}: {err}")
        raise
    tracking.end_run(mlf, run_id, "FINISHED")
    return result, run_id


def cmd_train(args) -> int:
    config = load_config(args.config, args.overrides)
    out = Path(args.out) if args.out else Path("runs") / config_hash(config)
    run_id = None
    if getattr(args, "no_track", False):
        result = training.train(config, out, device=args.device, resume=args.resume)
    else:
        result, run_id = tracked_train(config, out, args.device, args.resume, args.config,
                                       args.experiment or TRAIN_EXPERIMENT)
    first = result.history[0]["loss"] if result.history else float("nan")
    last = result.history[-1]["loss"] if result.history else float("nan")
    log.info("trained %d steps: loss %.4f -> %.4f; %.2f steps/s; checkpoint %s%s", result.steps, first, last,
             result.throughput.get("steps_per_sec", float("nan")), result.checkpoint,
             f"; MLflow run {run_id}" if run_id else "")
    return 0


# ----------------------------------------------------------------------------- evaluation

def tracked_eval(loaded, config, out: Path, model_run_id: str | None, experiment: str = EVAL_EXPERIMENT,
                 progress: bool = True) -> tuple[evaluation.EvalResult, str]:
    """`wg2 eval` as a new MLflow run (see the module docstring). Returns (result, run ID)."""
    uri = tracking.ensure_store(runs.tracking_uri())
    experiment_id = tracking.get_or_create_experiment(experiment, uri=uri)
    mlf = tracking.client(uri)
    device = str(loaded.device)
    tags = {runs.TAG_KIND: runs.KIND_EVAL, runs.TAG_CHECKPOINT: str(loaded.path),
            runs.TAG_MODEL_RUN_ID: model_run_id or "", runs.TAG_TRAIN_HASH: config_hash(loaded.config),
            **tracking.run_tags(device)}
    name = f"eval: {model_run_id[:8] if model_run_id else loaded.path.parent.name} step {loaded.step}"
    run_id = tracking.retry(lambda: mlf.create_run(experiment_id, run_name=name, tags=tags)).info.run_id
    log.info("MLflow run %s (experiment %r) in %s", run_id, experiment, uri)
    try:
        with tracking.system_metrics(uri, run_id):
            dataset = corpus.load_dataset(loaded.config.data, progress=progress)
            params = {**flatten(dataclasses.replace(loaded.config, eval=config)), "checkpoint": str(loaded.path),
                      "checkpoint_step": loaded.step, "model_run_id": model_run_id or ""}
            tracking.retry(lambda: tracking.log_params(mlf, run_id, params))
            tracking.log_corpus_input(mlf, run_id, loaded.config.data.root, dataset.corpus_hash, "evaluation")
            result = evaluation.evaluate(loaded, config, out, dataset=dataset, progress=progress)
            tracking.retry(lambda: tracking.log_metrics(mlf, run_id, result.metrics, step=loaded.step))
            tracking.retry(lambda: mlf.log_artifacts(run_id, str(out)))
    except KeyboardInterrupt:
        _end(mlf, run_id, "KILLED", "interrupted (KeyboardInterrupt)")
        raise
    except BaseException as err:
        _end(mlf, run_id, "FAILED", f"{type(err).__name__}: {err}")
        raise
    tracking.end_run(mlf, run_id, "FINISHED")
    return result, run_id


def cmd_eval(args) -> int:
    set_threads()
    evaluation.check_eval_numbers(args)
    checkpoint, model_run_id = tracking.resolve_checkpoint(args.checkpoint)
    out = Path(args.out) if args.out else checkpoint.parent / "eval"
    evaluation.check_eval_out(out)
    loaded = load_checkpoint(checkpoint, args.device)
    config = evaluation.eval_config(loaded, args)
    run_id = None
    if getattr(args, "no_track", False):
        result = evaluation.evaluate(loaded, config, out)
    else:
        result, run_id = tracked_eval(loaded, config, out, model_run_id, args.experiment or EVAL_EXPERIMENT)
    if getattr(args, "json", False):
        print(json.dumps({**result.summary, "mlflow_run_id": run_id}, indent=2, default=str))
    else:
        print(evaluation.format_summary(result.summary))
    log.info("wrote %d files to %s%s", len(result.files), out, f"; MLflow run {run_id}" if run_id else "")
    return 0
