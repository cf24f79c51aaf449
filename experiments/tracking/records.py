"""What every tracked run records besides its metrics: where and with what it was made (git commit, machine,
device, package versions), its config (params and config.toml), the corpus as its MLflow dataset input, and
MLflow's system metrics while it runs. The store itself, batched logging and retries: experiments/tracking/store.py."""
from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import os
import platform
import subprocess
import tempfile
import warnings
from collections.abc import Iterable
from pathlib import Path

from evaluation.runs import (
    TAG_CORPUS_HASH,
    TAG_DEPARTURES,
    TAG_DEVICE,
    TAG_GIT_COMMIT,
    TAG_MACHINE,
    TAG_PYTHON,
    TAG_TORCH_VERSION,
    TAG_VERSION_PREFIX,
)
from experiments.tracking.store import log_params, log_tags, retry

PACKAGES = ("torch", "numpy", "scipy", "mlflow", "optuna", "pesq", "pystoi", "soundfile")


# ----------------------------------------------------------------------------- tags

def git_commit(cwd: str | Path | None = None) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd or Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: str = "cpu") -> str:
    """OS, CPU (with core count) and, when the device is a GPU, its name."""
    parts = [platform.platform(terse=True), f"{cpu_name()} x{os.cpu_count()}"]
    if device.startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            index = torch.device(device).index or 0
            parts.append(torch.cuda.get_device_name(index))
    return "; ".join(parts)


def package_versions(names: Iterable[str] = PACKAGES) -> dict[str, str]:
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def run_tags(device: str) -> dict[str, str]:
    """Where and with what a run was made: git commit, machine, device, torch and package versions."""
    versions = package_versions()
    tags = {TAG_GIT_COMMIT: git_commit(), TAG_MACHINE: machine(device), TAG_DEVICE: device,
            TAG_TORCH_VERSION: versions.get("torch", "absent"), TAG_PYTHON: platform.python_version()}
    tags.update({f"{TAG_VERSION_PREFIX}{name}": version for name, version in versions.items()})
    return tags


# ----------------------------------------------------------------------------- a training run's set-up

def log_run_config(mlf, run_id: str, config, device: str) -> None:
    """Where and with what (run_tags) on every start; the config as params (flatten) and as config.toml
    once per run, so a resumed run keeps what it began with."""
    from experiments.config.departures import departures
    from experiments.config.identity import to_toml
    from experiments.config.run import flatten

    # its departures from WaveGrad 2 as published: `wg2 compare` opens every report with them
    retry(lambda: log_tags(mlf, run_id, {**run_tags(device), TAG_DEPARTURES: json.dumps(departures(config))}))
    if not retry(lambda: mlf.get_run(run_id)).data.params:
        retry(lambda: log_params(mlf, run_id, flatten(config)))
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "config.toml").write_text(to_toml(config))
            retry(lambda: mlf.log_artifact(run_id, str(Path(tmp) / "config.toml")))


# ----------------------------------------------------------------------------- inputs and system metrics

def log_corpus_input(mlf, run_id: str, root: str, corpus_hash: str, context: str = "training",
                     profile: dict | None = None) -> None:
    """Once per run (a resumed run already has it). The corpus as the run's MLflow dataset input (what
    `mlflow.log_input` records): named after its folder, source = the folder, digest = its content hash
    (cut to MLflow's 36 characters; the whole hash is tag wg2.corpus_hash and in the profile)."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import Dataset as DatasetEntity
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    if retry(lambda: mlf.get_run(run_id)).inputs.dataset_inputs:
        return
    folder = Path(root).resolve()
    with warnings.catch_warnings():  # a local folder resolves to MLflow's "local" source, with a notice
        warnings.simplefilter("ignore")
        source = resolve_dataset_source(str(folder))
    dataset = MetaDataset(source, name=folder.name or str(folder), digest=corpus_hash[:36])  # type: ignore[abstract]
    described = dataset.to_dict()
    entity = DatasetEntity(described["name"], described["digest"], described["source_type"], described["source"],
                           schema=described.get("schema"),
                           profile=json.dumps({"corpus_hash": corpus_hash, **(profile or {})}))
    inputs = [DatasetInput(entity, [InputTag(MLFLOW_DATASET_CONTEXT, context)])]
    try:
        retry(lambda: mlf.log_inputs(run_id, datasets=inputs))
    except Exception as err:
        text = str(err).lower()
        if "unique constraint" not in text or "dataset" not in text:
            raise
        # Two cells of a new experiment started together: both saw no dataset row and both inserted it; the
        # other's insert won (seen with `wg2 grid --workers 2` on a fresh store). The row exists now: link it.
        retry(lambda: mlf.log_inputs(run_id, datasets=inputs))
    retry(lambda: mlf.set_tag(run_id, TAG_CORPUS_HASH, corpus_hash))


SYSTEM_METRICS_SECONDS = 10.0  # MLflow's default; MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL overrides it


@contextlib.contextmanager
def system_metrics(uri: str, run_id: str):
    """MLflow's own system-metrics sampler (CPU, memory, disk, network; GPU with pynvml) on `run_id` while
    the block runs: metrics system/*, continued (not restarted at step 0) when a run is resumed. Off when
    WG2_SYSTEM_METRICS=0."""
    if os.environ.get("WG2_SYSTEM_METRICS", "1") == "0":
        yield None
        return
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    for name in ("mlflow.system_metrics.system_metrics_monitor", "mlflow.system_metrics"):
        logging.getLogger(name).setLevel(logging.WARNING)  # its start/stop lines at INFO are noise here
    monitor = None
    try:
        monitor = SystemMetricsMonitor(run_id, sampling_interval=SYSTEM_METRICS_SECONDS, resume_logging=True,
                                       tracking_uri=uri)
        monitor.start()
    except Exception as err:  # noqa: BLE001 - system metrics are a nicety
        logging.getLogger(__name__).warning("system metrics not recorded: %s", err)
        monitor = None
    try:
        yield monitor
    finally:
        if monitor is not None:
            monitor.finish()
