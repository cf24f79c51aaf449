"""`wg2 eval CKPT|RUN_ID`: experiment "wg2 eval" (or `--experiment NAME`), a new run per evaluation (tag
wg2.kind=eval; wg2.model_run_id when the model was given as a run ID, wg2.checkpoint the file): params (the
model's config with the eval settings used), the corpus as a dataset input (context "evaluation"), every
metric, the output folder as artifacts, system metrics.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from evaluation import runs
from evaluation.runs import EXPERIMENT_EVAL
from experiments.config.identity import train_hash
from experiments.config.run import flatten
from experiments.corpus.dataset import load_dataset
from experiments.infer import evaluate, synth
from experiments.tracking import records, store
from experiments.tracking.ending import ends_if_stopped
from experiments.train import store_checkpoints
from experiments.train.precision import set_threads

log = logging.getLogger(__name__)


def tracked_eval(loaded, config, out: Path, model_run_id: str | None, experiment: str = EXPERIMENT_EVAL,
                 progress: bool = True, skip_unknown: bool = False) -> tuple[evaluate.EvalResult, str]:
    """`wg2 eval` as a new MLflow run (see the module docstring). Returns (result, run ID)."""
    uri = store.ensure_store(runs.tracking_uri())
    experiment_id = store.get_or_create_experiment(experiment, uri=uri)
    mlf = store.client(uri)
    device = str(loaded.device)
    tags = {runs.TAG_KIND: runs.KIND_EVAL, runs.TAG_CHECKPOINT: str(loaded.path),
            runs.TAG_MODEL_RUN_ID: model_run_id or "", runs.TAG_TRAIN_HASH: train_hash(loaded.config),
            **records.run_tags(device)}
    name = f"eval: {model_run_id[:8] if model_run_id else loaded.path.parent.name} step {loaded.step}"
    run_id = store.retry(lambda: mlf.create_run(experiment_id, run_name=name, tags=tags)).info.run_id
    log.info("MLflow run %s (experiment %r) in %s", run_id, experiment, uri)
    with ends_if_stopped(mlf, run_id), records.system_metrics(uri, run_id):
        dataset = load_dataset(loaded.config.data, progress=progress)
        params = {**flatten(dataclasses.replace(loaded.config, eval=config)), "checkpoint": str(loaded.path),
                  "checkpoint_step": loaded.step, "model_run_id": model_run_id or ""}
        store.retry(lambda: store.log_params(mlf, run_id, params))
        records.log_corpus_input(mlf, run_id, loaded.config.data.root, dataset.corpus_hash, "evaluation")
        result = evaluate.evaluate(loaded, config, out, dataset=dataset, progress=progress,
                                   skip_unknown=skip_unknown)
        store.retry(lambda: store.log_metrics(mlf, run_id, result.metrics, step=loaded.step))
        store.retry(lambda: mlf.log_artifacts(run_id, str(out)))
    store.end_run(mlf, run_id, "FINISHED")
    return result, run_id


def cmd_eval(args) -> int:
    set_threads()
    evaluate.check_eval_numbers(args)
    checkpoint, model_run_id = store_checkpoints.resolve_checkpoint(args.checkpoint)
    out = Path(args.out) if args.out else checkpoint.parent / "eval"
    evaluate.check_eval_out(out)
    loaded = synth.load_checkpoint(checkpoint, args.device)
    config = evaluate.eval_config(loaded, args)
    run_id, skip = None, bool(getattr(args, "skip_unknown_phonemes", False))
    if getattr(args, "no_track", False):
        result = evaluate.evaluate(loaded, config, out, skip_unknown=skip)
    else:
        result, run_id = tracked_eval(loaded, config, out, model_run_id, args.experiment or EXPERIMENT_EVAL,
                                      skip_unknown=skip)
    if getattr(args, "json", False):
        print(json.dumps({**result.summary, "mlflow_run_id": run_id}, indent=2, default=str))
    else:
        print(evaluate.format_summary(result.summary))
    log.info("wrote %d files to %s%s", len(result.files), out, f"; MLflow run {run_id}" if run_id else "")
    return 0
