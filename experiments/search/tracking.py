"""MLflow for a search: one parent run per study (found again on resume by its study key) and one child
run per finished trial, logged by the worker that ran it; the parent logs what is left at the end."""
from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
from mlflow.entities import Metric
from optuna.trial import FrozenTrial, TrialState

from evaluation.runs import (
    EXPERIMENT_SEARCH,
    KIND_SEARCH,
    KIND_TRIAL,
    TAG_BASELINE,
    TAG_ERROR,
    TAG_GIT_COMMIT,
    TAG_KIND,
    TAG_MACHINE,
    TAG_MODEL,
    TAG_MODEL_CONFIG_HASH,
    TAG_MODEL_RUN_ID,
    TAG_MODEL_SHA256,
    TAG_OBJECTIVES,
    TAG_OWNER,
    TAG_PRUNE_REASON,
    TAG_SAMPLER,
    TAG_STATE,
    TAG_STORAGE,
    TAG_STUDY,
    TAG_STUDY_KEY,
    TAG_TRIAL_NUMBER,
    TAG_TRIALS_REQUESTED,
    search_all_runs,
    tag_is,
)
from experiments.search import keys
from experiments.search.evaluator import ModelInfo
from experiments.search.spec import SearchSpec, redact
from experiments.search.trial import fail_reason
from experiments.tracking import claims, records, store


@dataclass(frozen=True)
class TrackingContext:
    uri: str
    experiment_id: str
    parent_run_id: str
    study_key: str


def study_key(spec: SearchSpec) -> str:
    return hashlib.sha256(f"{redact(spec.storage)}\n{spec.study}".encode()).hexdigest()[:16]


def open_parent_run(spec: SearchSpec, model: ModelInfo, sets: dict) -> TrackingContext:
    """The study's parent run: found by tag wg2.study_key (reused on resume) or created once."""
    uri = store.ensure_store(spec.tracking_uri)
    experiment_id = store.get_or_create_experiment(EXPERIMENT_SEARCH, uri=uri)
    mlf = store.client(uri)
    key = study_key(spec)
    tags = {TAG_KIND: KIND_SEARCH, TAG_STUDY: spec.study, TAG_STUDY_KEY: key, TAG_STORAGE: redact(spec.storage),
            TAG_MODEL: model.checkpoint, TAG_MODEL_SHA256: model.sha256, TAG_MODEL_CONFIG_HASH: model.config_hash,
            TAG_MODEL_RUN_ID: model.mlflow_run_id or "", TAG_OBJECTIVES: json.dumps(list(spec.objectives)),
            TAG_SAMPLER: spec.sampler, TAG_TRIALS_REQUESTED: str(spec.trials),
            TAG_GIT_COMMIT: records.git_commit(), TAG_MACHINE: records.machine(spec.device)}
    query = f"{tag_is(TAG_STUDY_KEY, key)} and {tag_is(TAG_KIND, KIND_SEARCH)}"
    runs = store.retry(lambda: search_all_runs(mlf, [experiment_id], query))
    if not runs:
        mine = store.retry(lambda: mlf.create_run(experiment_id, run_name=f"search: {spec.study}", tags=tags))
        runs = store.retry(lambda: search_all_runs(mlf, [experiment_id], query))
        if claims.earliest(runs).info.run_id != mine.info.run_id:  # another command created it meanwhile
            store.retry(lambda: mlf.delete_run(mine.info.run_id))
    run_id = claims.earliest(runs).info.run_id
    store.retry(lambda: store.log_tags(mlf, run_id, tags))
    params = {k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in spec.identity().items()}
    params.update({"model_sha256": model.sha256, **{k: json.dumps(v) if isinstance(v, list) else v
                                                    for k, v in sets.items()}})
    store.retry(lambda: store.log_params(mlf, run_id, params))  # identical on resume (checked)
    store.retry(lambda: mlf.update_run(run_id, status="RUNNING"))
    return TrackingContext(uri, experiment_id, run_id, key)


def _ms(moment: datetime | None) -> int | None:
    return int(moment.timestamp() * 1000) if moment is not None else None


class TrialLogger:
    """One MLflow child run per finished trial (our own small callback; optuna-integration's MLflowCallback
    is deprecated in Optuna 5). A logging failure is reported, never fails the trial: the parent logs
    trials without a run at the end."""

    STATUS = {TrialState.COMPLETE: "FINISHED", TrialState.PRUNED: "KILLED"}

    def __init__(self, ctx: TrackingContext, spec: SearchSpec):
        self.ctx, self.spec, self.mlf = ctx, spec, store.client(ctx.uri)

    def __call__(self, t: FrozenTrial) -> str | None:
        try:
            return self.log(t)
        except Exception as err:  # noqa: BLE001 - the trial is already stored in the study
            logging.getLogger(__name__).warning("warning: trial %d not logged to MLflow yet (%s: %s); the parent "
                                                "logs it at the end", t.number, type(err).__name__, err)
            return None

    def log(self, t: FrozenTrial) -> str:
        mlf, attrs, retry = self.mlf, t.user_attrs, store.retry
        tags = {"mlflow.parentRunId": self.ctx.parent_run_id, TAG_KIND: KIND_TRIAL, TAG_STUDY: self.spec.study,
                TAG_STUDY_KEY: self.ctx.study_key, TAG_TRIAL_NUMBER: str(t.number), TAG_STATE: t.state.name}
        for tag, value in ((TAG_ERROR, fail_reason(t)), (TAG_PRUNE_REASON, attrs.get(keys.PRUNE_REASON)),
                           (TAG_BASELINE, attrs.get(keys.BASELINE)), (TAG_OWNER, attrs.get(keys.OWNER))):
            if value:
                tags[tag] = str(value)[:5000]
        name = f"trial {t.number}" + (f" ({attrs[keys.BASELINE]})" if keys.BASELINE in attrs else "")
        run = retry(lambda: mlf.create_run(self.ctx.experiment_id, start_time=_ms(t.datetime_start), tags=tags,
                                           run_name=name))
        run_id = run.info.run_id
        params: dict[str, Any] = dict(t.params)
        if keys.BETAS in attrs:
            params.update({"steps": attrs[keys.STEPS], "betas": json.dumps(attrs[keys.BETAS])})
        retry(lambda: store.log_params(mlf, run_id, params))
        metrics = {k: v for k, v in attrs.get(keys.METRICS, {}).items() if v is not None}
        metrics.update({f"n_missing/{k}": v for k, v in attrs.get(keys.N_MISSING, {}).items()})
        metrics.update({f"objective/{k}": v for k, v in zip(self.spec.objectives, t.values or [])})
        for name, key in (("seconds", keys.SECONDS), ("utterances_scored", keys.UTTERANCES_SCORED)):
            if key in attrs:
                metrics[name] = attrs[key]
        retry(lambda: store.log_metrics(mlf, run_id, metrics))
        now = int(time.time() * 1000)
        curve = [Metric(f"running/{self.spec.objective}", v, now, int(step))
                 for step, v in t.intermediate_values.items()]
        if curve:
            retry(lambda: mlf.log_batch(run_id, metrics=curve))
        if keys.BETAS in attrs:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "schedule.json"
                path.write_text(json.dumps({"betas": attrs[keys.BETAS], "steps": attrs[keys.STEPS],
                                            "trial": t.number, "study": self.spec.study, "state": t.state.name}))
                retry(lambda: mlf.log_artifact(run_id, str(path)))
        retry(lambda: mlf.set_terminated(run_id, self.STATUS.get(t.state, "FAILED"), end_time=_ms(t.datetime_complete)))
        return run_id


def log_missing_trials(study: optuna.Study, ctx: TrackingContext, spec: SearchSpec) -> int:
    """Log every finished trial that has no child run yet (a worker died, or its logging failed). A trial
    whose worker is still alive is left to it: another command on the study may be logging it right now."""
    mlf = store.client(ctx.uri)
    query = f"{tag_is(TAG_STUDY_KEY, ctx.study_key)} and {tag_is(TAG_KIND, KIND_TRIAL)}"
    logged = {r.data.tags.get(TAG_TRIAL_NUMBER) for r in store.retry(
        lambda: search_all_runs(mlf, [ctx.experiment_id], query))}
    logger, n = TrialLogger(ctx, spec), 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)):
        if str(t.number) not in logged and not claims.owner_alive({TAG_OWNER: t.user_attrs.get(keys.OWNER, "")}):
            logger.log(t)
            n += 1
    return n
