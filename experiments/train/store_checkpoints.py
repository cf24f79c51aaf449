"""Checkpoints in the MLflow store. A training run (a grid cell, a `wg2 train` run) uploads its checkpoint as the
artifact `checkpoint.pt` at every train.checkpoint_every steps and records the step in tag wg2.checkpoint_step.
A worker that takes the run over in another runs/ folder (another machine) downloads it when it is ahead of the
local one. `synth`, `eval` and `search` accept a run ID where they take a checkpoint file (resolve_checkpoint)."""
from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

from evaluation.runs import TAG_CHECKPOINT_STEP, store_problem, tracking_uri
from experiments.tracking.store import client, retry
from experiments.train.checkpoint import checkpoint_step

CHECKPOINT_ARTIFACT = "checkpoint.pt"
RUN_ID_PATTERN = re.compile(r"[0-9a-f]{32}")
CHECKPOINT_CACHE = Path(".cache/wg2/checkpoints")  # downloads of run IDs' checkpoints, under the working directory


def stored_step(mlf, run_id: str) -> int:
    """The step of the run's uploaded checkpoint (tag wg2.checkpoint_step), 0 when none was uploaded."""
    text = retry(lambda: mlf.get_run(run_id)).data.tags.get(TAG_CHECKPOINT_STEP, "")
    return int(text) if text.isdigit() else 0


def upload_checkpoint(mlf, run_id: str, path: Path, step: int) -> bool:
    """Upload `path` as the run's checkpoint.pt, then tag its step (in that order: the tag never names a step
    the store does not hold). A failure is a warning, never stops training; returns whether it worked."""
    try:
        with tempfile.TemporaryDirectory() as tmp:  # a snapshot: training may replace the file meanwhile
            copy = Path(tmp) / CHECKPOINT_ARTIFACT
            shutil.copyfile(path, copy)
            retry(lambda: mlf.log_artifact(run_id, str(copy)))
        retry(lambda: mlf.set_tag(run_id, TAG_CHECKPOINT_STEP, str(int(step))))
        return True
    except Exception as err:  # noqa: BLE001 - the next checkpoint tries again
        logging.getLogger(__name__).warning("run %s: checkpoint at step %d not uploaded: %s", run_id, step, err)
        return False


def fetch_checkpoint(mlf, run_id: str, path: Path) -> int:
    """Replace the local checkpoint `path` by the run's uploaded one when that is at a later step (a run
    taken over in a fresh runs/ folder resumes where the other worker's last upload left it). Returns the
    downloaded step, or 0 when the local file was kept."""
    import mlflow.artifacts

    path = Path(path)
    remote = stored_step(mlf, run_id)
    here = checkpoint_step(path)
    if remote <= here:
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".download-") as tmp:
        got = retry(lambda: mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=CHECKPOINT_ARTIFACT, dst_path=tmp, tracking_uri=mlf.tracking_uri))
        os.replace(got, path)
    logging.getLogger(__name__).info("run %s: resuming from the tracking server's checkpoint at step %d "
                                     "(the local one was at step %d)", run_id, remote, here)
    return remote


class CheckpointUploader:
    """train(on_checkpoint=...): uploads each checkpoint the training saves, skipping a step already stored."""

    def __init__(self, mlf, run_id: str):
        self.mlf, self.run_id = mlf, run_id
        self.step = stored_step(mlf, run_id)

    def __call__(self, path: Path, step: int) -> None:
        if step != self.step and upload_checkpoint(self.mlf, self.run_id, path, step):
            self.step = step


def resolve_checkpoint(model: str | Path, uri: str | None = None) -> tuple[Path, str | None]:
    """What `wg2 synth`, `wg2 eval` and `wg2 search` accept as a model: a checkpoint file, or an MLflow run
    ID whose checkpoint.pt artifact is downloaded to .cache/wg2/checkpoints/<run id>/ (downloaded again when
    the run has uploaded a later step since). Returns (absolute path, run ID or None); InputError otherwise."""
    import mlflow.artifacts

    from experiments.config.run import InputError

    path = Path(model)
    if path.is_file():
        return path.resolve(), None
    text = str(model)
    if not RUN_ID_PATTERN.fullmatch(text):
        raise InputError(f"model {text!r}: no such checkpoint file, and not an MLflow run ID (32 hex characters)")
    uri = uri or tracking_uri()
    problem = store_problem(uri)
    if problem:
        raise InputError(f"model {text!r} (an MLflow run ID): {problem}")
    dest = CHECKPOINT_CACHE / text
    local = dest / CHECKPOINT_ARTIFACT
    try:
        remote = stored_step(client(uri), text) if local.is_file() else 0
        if not local.is_file() or (remote and remote != checkpoint_step(local)):
            dest.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=dest, prefix=".download-") as tmp:
                got = mlflow.artifacts.download_artifacts(run_id=text, artifact_path=CHECKPOINT_ARTIFACT,
                                                          dst_path=tmp, tracking_uri=uri)
                os.replace(got, local)
    except InputError:
        raise
    except Exception as err:  # unknown run, no such artifact, unreachable store
        raise InputError(f"model {text!r}: could not download the run's {CHECKPOINT_ARTIFACT} artifact from MLflow "
                         f"{uri}: {type(err).__name__}: {err}") from err
    return local.resolve(), text
