"""`wg2 train` and `wg2 eval` outside a grid are MLflow runs; synth, eval and search take a run ID; the corpus is
a dataset input; system metrics are on; checkpoints are uploaded as training goes, and a run (or grid cell) taken
over in another runs/ folder resumes from the store's copy. Real MLflow (SQLite in a temp dir), real corpus
audio, a tiny model."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import soundfile as sf
import torch
from mlflow import MlflowClient
from test_grid import grid_text, tiny_base

import experiments.infer.synth
import experiments.search.spec
import experiments.train.loop
from experiments.cli import main
from experiments.config.run import DataConfig
from experiments.corpus.dataset import load_dataset
from experiments.tracking import records
from experiments.train import store_checkpoints
from experiments.train.checkpoint import CHECKPOINT, checkpoint_step

pytestmark = pytest.mark.slow

STEPS = 6


def config_text(corpus: Path, cache: Path, steps: int = STEPS, checkpoint_every: int = 2) -> str:
    return f"""[data]
root = "{corpus}"
cache_dir = "{cache}"
val_fraction = 0.3
test_fraction = 0.1
[model]
encoder_channels = 16
duration_channels = 8
decoder_preset = "tiny"
zoneout = 0.0
[train]
steps = {steps}
batch_size = 2
window_frames = 8
warmup_steps = 1
learning_rate = 1e-3
log_every = 1
checkpoint_every = {checkpoint_every}
gain_utterances = 0
[eval]
schedules = ["manual-6"]
limit = 1
metric_workers = 1
audio_artifacts = 1
"""


def only_run(mlf: MlflowClient, experiment: str):
    exp = mlf.get_experiment_by_name(experiment)
    found = mlf.search_runs([exp.experiment_id]) if exp is not None else []
    assert len(found) == 1, [r.info.run_id for r in found]
    return found[0]


def all_runs(mlf: MlflowClient) -> list:
    return mlf.search_runs([e.experiment_id for e in mlf.search_experiments()])


@pytest.fixture(scope="module")
def tracked(corpus_dir: Path, tmp_path_factory):
    """One `wg2 train CONFIG` (nothing but the config, the device and the folder) in a store of its own."""
    home = tmp_path_factory.mktemp("tracked")
    uri = f"sqlite:///{home / 'mlflow.db'}"
    config = home / "tiny.toml"
    config.write_text(config_text(corpus_dir, home / "cache"))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(home)
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.setattr(records, "SYSTEM_METRICS_SECONDS", 0.2)  # samples even in a run this short
        assert main(["train", str(config), "--device", "cpu", "--out", str(home / "A")]) == 0
        mlf = MlflowClient(uri)
        yield {"home": home, "uri": uri, "config": config, "mlf": mlf, "run": only_run(mlf, "wg2 train")}


def test_train_alone_is_a_run_with_params_curves_checkpoint_corpus_input_and_system_metrics(tracked, corpus_dir):
    mlf, run = tracked["mlf"], tracked["run"]
    assert run.info.status == "FINISHED" and run.data.tags["wg2.kind"] == "train"
    assert run.data.tags["wg2.config_file"] == str(tracked["config"])
    assert run.data.params["train.steps"] == str(STEPS) and run.data.params["model.decoder_preset"] == "tiny"
    assert [m.step for m in mlf.get_metric_history(run.info.run_id, "train/loss")] == list(range(1, STEPS + 1))
    assert "train/steps_per_sec" in run.data.metrics
    assert any(key.startswith("system/") for key in run.data.metrics), sorted(run.data.metrics)
    assert {"checkpoint.pt", "config.toml"} <= {a.path for a in mlf.list_artifacts(run.info.run_id)}
    assert run.data.tags["wg2.checkpoint_step"] == str(STEPS)
    corpus_hash = load_dataset(DataConfig(root=str(corpus_dir), cache_dir=str(tracked["home"] / "cache"),
                                          val_fraction=0.3, test_fraction=0.1), progress=False).corpus_hash
    (given,) = run.inputs.dataset_inputs
    assert given.dataset.digest == corpus_hash[:36] and run.data.tags["wg2.corpus_hash"] == corpus_hash
    assert json.loads(given.dataset.profile)["corpus_hash"] == corpus_hash
    assert {t.key: t.value for t in given.tags}["mlflow.data.context"] == "training"


def test_resuming_a_finished_run_trains_nothing_and_keeps_the_folder(tracked, monkeypatch):
    monkeypatch.chdir(tracked["home"])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracked["uri"])
    monkeypatch.setattr(experiments.train.loop, "train", _no_training_past_the_end(experiments.train.loop.train))
    folder = tracked["home"] / "A"
    assert json.loads((folder / "mlflow_run.json").read_text())["run_id"] == tracked["run"].info.run_id
    before = (folder / "checkpoint.pt").read_bytes()
    assert main(["train", str(tracked["config"]), "--device", "cpu", "--out", str(folder), "--resume"]) == 0
    assert (folder / "checkpoint.pt").read_bytes() == before
    assert only_run(tracked["mlf"], "wg2 train").info.run_id == tracked["run"].info.run_id


def _no_training_past_the_end(real):
    def train(config, out, *args, **kwargs):
        assert checkpoint_step(Path(out) / "checkpoint.pt") == config.train.steps, "would train again"
        return real(config, out, *args, **kwargs)
    return train


def test_eval_and_synth_take_a_run_id_and_eval_is_a_run(tracked, monkeypatch, capsys):
    monkeypatch.chdir(tracked["home"])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracked["uri"])
    model = tracked["run"].info.run_id
    out = tracked["home"] / "eval"
    assert main(["eval", model, "--device", "cpu", "--limit", "1", "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["step"] == STEPS and summary["mlflow_run_id"]
    run = tracked["mlf"].get_run(summary["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["wg2.kind"] == "eval"
    assert run.data.tags["wg2.model_run_id"] == model and run.data.params["model_run_id"] == model
    assert "manual-6/pesq_wb" in run.data.metrics and "phoneme_gain" in " ".join(run.data.metrics)
    assert {"summary.json", "per_utterance.csv"} <= {a.path for a in tracked["mlf"].list_artifacts(run.info.run_id)}
    (given,) = run.inputs.dataset_inputs
    assert given.dataset.digest == tracked["run"].data.tags["wg2.corpus_hash"][:36]
    assert {t.key: t.value for t in given.tags}["mlflow.data.context"] == "evaluation"

    wav = tracked["home"] / "hello.wav"
    assert main(["synth", model, "hello", "-o", str(wav), "--device", "cpu"]) == 0
    audio, rate = sf.read(wav)
    assert rate == 22050 and len(audio) > 0
    # one resolver, not copies
    assert experiments.search.spec.resolve_checkpoint is store_checkpoints.resolve_checkpoint
    assert experiments.infer.synth.resolve_checkpoint is store_checkpoints.resolve_checkpoint


def test_no_track_writes_nothing_and_batch_logs_show_progress(tracked, monkeypatch, caplog):
    monkeypatch.chdir(tracked["home"])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracked["uri"])
    monkeypatch.setattr(experiments.train.loop, "HEARTBEAT_LOGS", 2)
    before = {r.info.run_id for r in all_runs(tracked["mlf"])}
    caplog.set_level("INFO")
    assert main(["train", str(tracked["config"]), "--set", "train.steps=4", "--no-track", "--device", "cpu",
                 "--out", str(tracked["home"] / "untracked")]) == 0
    assert {r.info.run_id for r in all_runs(tracked["mlf"])} == before
    lines = [r.getMessage() for r in caplog.records if r.name == "experiments.train.loop"]
    assert [line.split(":")[0] for line in lines if "steps/s" in line] == ["step 2/4", "step 4/4"], lines


# ----------------------------------------------------------------------------- takeover from the store

def _crash_after_upload_of(step_at: int):
    """upload_checkpoint that dies (as a killed process would) right after the upload at `step_at`."""
    real = store_checkpoints.upload_checkpoint

    def upload(mlf, run_id, path, step):
        done = real(mlf, run_id, path, step)
        if step == step_at:
            raise KeyboardInterrupt(f"crash after the upload at step {step}")
        return done
    return upload


def _as_if_its_machine_died(mlf: MlflowClient, run_id: str) -> None:
    """What a machine that lost power leaves: the run RUNNING, owned elsewhere, its heartbeat long stale."""
    mlf.update_run(run_id, status="RUNNING")
    mlf.set_tag(run_id, "wg2.owner", "another-host:12345:1")
    mlf.set_tag(run_id, "wg2.heartbeat", "0")


def _starting_steps(monkeypatch) -> list[int]:
    """The step of the run folder's checkpoint each time training starts."""
    starts: list[int] = []
    real = experiments.train.loop.train

    def spy(config, out, *args, **kwargs):
        starts.append(checkpoint_step(Path(out) / CHECKPOINT))
        return real(config, out, *args, **kwargs)
    monkeypatch.setattr(experiments.train.loop, "train", spy)
    return starts


def test_train_taken_over_in_another_runs_folder_resumes_from_the_uploaded_step(corpus_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    config = tmp_path / "tiny.toml"
    config.write_text(config_text(corpus_dir, tmp_path / "cache"))
    mlf = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])

    with monkeypatch.context() as crash:
        crash.setattr(store_checkpoints, "upload_checkpoint", _crash_after_upload_of(4))
        # the CLI ends an interrupt with the shell's code for SIGINT, the run KILLED
        assert main(["train", str(config), "--device", "cpu", "--out", str(tmp_path / "runsA" / "run")]) == 130
    run = only_run(mlf, "wg2 train")
    assert run.data.tags["wg2.checkpoint_step"] == "4" and run.info.status == "KILLED"
    _as_if_its_machine_died(mlf, run.info.run_id)

    folder_b = tmp_path / "runsB" / "run"  # another machine: its runs/ folder has never seen this run
    starts = _starting_steps(monkeypatch)
    assert main(["train", str(config), "--device", "cpu", "--out", str(folder_b), "--resume"]) == 0
    assert starts == [4], "resumed from the store's step-4 checkpoint, not from step 0"
    run = only_run(mlf, "wg2 train")
    assert run.info.status == "FINISHED" and run.data.tags["wg2.checkpoint_step"] == str(STEPS)
    assert [m.step for m in mlf.get_metric_history(run.info.run_id, "train/loss")] == list(range(1, STEPS + 1))

    # the same numbers as a training never interrupted (weights and optimizer state came through)
    straight = tmp_path / "straight"
    assert main(["train", str(config), "--device", "cpu", "--out", str(straight), "--no-track"]) == 0
    resumed = torch.load(folder_b / "checkpoint.pt", weights_only=True)["history"]
    plain = torch.load(straight / "checkpoint.pt", weights_only=True)["history"]
    assert resumed[-1]["loss"] == pytest.approx(plain[-1]["loss"], rel=1e-5)


def test_grid_cell_taken_over_in_another_runs_folder_resumes_from_the_uploaded_step(corpus_dir, tmp_path,
                                                                                    monkeypatch):
    from experiments.grid.run import run_grid

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    data = {"root": str(corpus_dir), "cache_dir": str(tmp_path / "cache"), "val_fraction": 0.3, "test_fraction": 0.1}
    grid = tmp_path / "g.toml"
    grid.write_text(grid_text("takeover", tiny_base(data), {"eval.schedules": [["manual-6"]]}))  # 12 steps, checkpoint every 4

    monkeypatch.setenv("WG2_RUNS_DIR", str(tmp_path / "runsA"))
    with monkeypatch.context() as crash:
        crash.setattr(store_checkpoints, "upload_checkpoint", _crash_after_upload_of(8))
        with pytest.raises(KeyboardInterrupt):
            run_grid(grid, progress=False)
    mlf = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    exp = mlf.get_experiment_by_name("takeover")
    (cell,) = mlf.search_runs([exp.experiment_id], "tags.`wg2.kind` = 'cell'")
    assert cell.data.tags["wg2.checkpoint_step"] == "8"
    _as_if_its_machine_died(mlf, cell.info.run_id)

    monkeypatch.setenv("WG2_RUNS_DIR", str(tmp_path / "runsB"))
    starts = _starting_steps(monkeypatch)
    outcome = run_grid(grid, progress=False)
    assert outcome.exit_code == 0 and len(outcome.with_status("finished")) == 1
    assert starts == [8], "the cell resumed from the store's step-8 checkpoint, not from step 0"
    cell = mlf.get_run(cell.info.run_id)
    assert cell.info.status == "FINISHED" and cell.data.tags["wg2.checkpoint_step"] == "12"
    assert [m.step for m in mlf.get_metric_history(cell.info.run_id, "train/loss")] == list(range(2, 13, 2))
    (given,) = cell.inputs.dataset_inputs
    assert given.dataset.digest == cell.data.tags["wg2.corpus_hash"][:36]
