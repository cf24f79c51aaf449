"""`wg2 grid`: grid files are expanded and validated before any work; real tiny trainings on the test corpus are
tracked in a real MLflow SQLite store in a temp dir; reruns skip, kill -9 resumes, failures are recorded."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_tables

from experiments.cli import main
from experiments.config.identity import _toml_value
from experiments.config.run import ConfigError
from experiments.grid.file import load_grid
from experiments.grid.run import run_grid

REPO = Path(__file__).resolve().parents[1]


def grid_text(name: str, base: dict, axes: dict, seeds=(0,), extra: str = "") -> str:
    lines = [f"name = {json.dumps(name)}", 'description = "A test question?"', f"seeds = {list(seeds)}", extra]
    lines.append("[base]")
    for section, values in base.items():
        lines += [f"{section}.{key} = {_toml_value(value)}" for key, value in values.items()]
    lines.append("[axes]")
    lines += [f"{json.dumps(key)} = {_toml_value(values)}" for key, values in axes.items()]
    return "\n".join(lines) + "\n"


def tiny_base(data: dict | None = None, **sections: dict) -> dict:
    base = tiny_tables()  # the tiny run preset: a step in well under a second, eval on 2 utterances
    base["data"] = dict(data or {})
    for section, values in sections.items():
        base.setdefault(section, {}).update(values)
    return base


@pytest.fixture(scope="module")
def data_table(corpus_dir: Path, tmp_path_factory) -> dict:
    """[data] of every test grid: the session corpus with one cache for the module (read once)."""
    cache = tmp_path_factory.mktemp("grid-cache")
    return {"root": str(corpus_dir), "cache_dir": str(cache), "val_fraction": 0.3, "test_fraction": 0.1}


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch) -> Path:
    """A fresh MLflow store, runs folder and working directory per test."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("WG2_RUNS_DIR", str(tmp_path / "runs"))
    return tmp_path


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def child_runs(experiment: str, kind: str = "cell") -> list:
    from mlflow import MlflowClient

    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id], f"tags.`wg2.kind` = '{kind}'")


# ----------------------------------------------------------------------------- expanding and validating (no data)

def test_cells_are_axes_times_seeds_minus_excluded_with_overrides_last(tmp_path: Path):
    text = grid_text("g", tiny_base(), {"model.upsampler": ["gaussian", "repeat"], "train.window_frames": [8, 16]},
                     seeds=(0, 1), extra='exclude = [{ "model.upsampler" = "repeat", "train.window_frames" = 16 }]')
    grid = load_grid(write(tmp_path / "g.toml", text), ["train.steps=7", "eval.limit=1"])
    assert len(grid.cells) == 6 and grid.excluded == 2
    assert grid.cells[0].label == "model.upsampler=gaussian train.window_frames=8 seed=0"
    for cell in grid.cells:
        assert cell.config.train.steps == 7 and cell.config.eval.limit == 1  # --set applies to every cell
        assert cell.config.train.seed == cell.config.eval.seed == cell.seed
        assert (cell.config.model.upsampler, cell.config.train.window_frames) != ("repeat", 16)
    assert len({c.cell_hash for c in grid.cells}) == 6 and len({c.train_hash for c in grid.cells}) == 6
    by_group = {}
    for cell in grid.cells:
        by_group.setdefault(cell.group, set()).add(cell.seed)
    assert sorted(map(sorted, by_group.values())) == [[0, 1]] * 3  # a group = one cell's seeds
    with pytest.raises(ConfigError, match="train.window_frames is a grid axis"):
        load_grid(tmp_path / "g.toml", ["train.window_frames=4"])


def test_multi_key_axis_sets_coupled_keys_together(tmp_path: Path):
    extra = ('[axes]\nspace = [{ "model.space" = "waveform" }, { label = "latent-8", "model.space" = "latent", '
             '"autoencoder.stride" = 8, "model.upsample_factors" = [5, 5, 3], "data.hop_length" = 600 }]\n')
    text = grid_text("g", tiny_base(), {}).replace("[axes]\n", "") + extra
    grid = load_grid(write(tmp_path / "g.toml", text))
    waveform, latent = grid.cells
    assert waveform.label == "space=waveform seed=0" and latent.label == "space=latent-8 seed=0"
    assert latent.assignment == {"space": "latent-8"}
    assert latent.config.model.upsample_factors == [5, 5, 3] and latent.config.data.hop_length == 600
    assert waveform.config.model.upsample_factors == [5, 5, 3, 2, 2]


def test_eval_axis_cells_share_one_training(tmp_path: Path):
    text = grid_text("g", tiny_base(), {"eval.schedules": [["manual-6"], ["linear-20"]]})
    grid = load_grid(write(tmp_path / "g.toml", text))
    a, b = grid.cells
    assert a.train_hash == b.train_hash and a.cell_hash != b.cell_hash
    assert a.training_config() == b.training_config()
    assert len(grid.trainings()) == 1


BAD_GRIDS = {
    "unknown top-level key": ('grid_text("g", tiny_base(), {"model.upsampler": ["gaussian"]}, extra="sedes = [1]")',
                              "unknown top-level key.*sedes"),
    "unknown registry name": ('grid_text("g", tiny_base(), {"model.upsampler": ["gaussian", "bilinear"]})',
                              r"cell \[model.upsampler=bilinear seed=0\].*model.upsampler = 'bilinear' is unknown"),
    "wrong type": ('grid_text("g", tiny_base(), {"train.steps": [10, "many"]})',
                   r"cell \[train.steps=many seed=0\].*train.steps: expected int"),
    "unknown key": ('grid_text("g", tiny_base(), {"train.stepz": [10]})', r"train.stepz=10.*unknown key.*stepz"),
    "hop mismatch": ('grid_text("g", tiny_base(), {"model.upsample_factors": [[5, 5, 3, 2, 2], [5, 5, 3]]})',
                     r"cell \[model.upsample_factors=\[5,5,3\] seed=0\].*hop mismatch"),
    "scalar on a list key": ('grid_text("g", tiny_base(), {"eval.schedules": ["manual-6", "linear-8"]})',
                             "axes.eval.schedules.*one list per cell"),
    "exclude matches nothing": ('grid_text("g", tiny_base(), {"model.upsampler": ["gaussian", "repeat"]}, '
                                'extra=\'exclude = [{ "model.upsampler" = "repeet" }]\')', r"exclude\[0\].*matches no cell"),
}


@pytest.mark.parametrize("case", sorted(BAD_GRIDS))
def test_bad_grid_exits_2_before_anything_runs(case: str, workdir: Path, capsys):
    source, message = BAD_GRIDS[case]
    path = write(workdir / "bad.toml", eval(source))  # noqa: S307 - the table above, built with grid_text
    assert main(["grid", str(path)]) == 2
    assert main(["grid", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "bad.toml" in err
    import re
    assert re.search(message, err, re.S), err
    assert not (workdir / "runs").exists() and not (workdir / "mlflow.db").exists()


def test_window_longer_than_every_utterance_exits_2_but_dry_run_passes(workdir: Path, data_table: dict, capsys):
    path = write(workdir / "g.toml", grid_text("g", tiny_base(data_table), {"train.window_frames": [8, 100000]}))
    assert main(["grid", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "train.window_frames=100000 seed=0" in out and "skipped" in out
    assert main(["grid", str(path)]) == 2
    err = capsys.readouterr().err
    assert "cell [train.window_frames=100000 seed=0]" in err and "longest training utterance" in err
    if not torch.cuda.is_available():
        assert main(["grid", str(path), "--device", "cuda"]) == 2
        assert "no CUDA device" in capsys.readouterr().err
    assert not (workdir / "runs").exists() and not (workdir / "mlflow.db").exists()


# ----------------------------------------------------------------------------- running (real training, real MLflow)

@pytest.mark.slow
def test_grid_runs_rerun_adds_nothing_and_eval_axis_trains_once(workdir: Path, data_table: dict):
    path = write(workdir / "g.toml", grid_text("evalaxis", tiny_base(data_table),
                                                {"eval.schedules": [["manual-6"], ["linear-20"]]}))
    outcome = run_grid(path, progress=False)
    assert outcome.exit_code == 0 and len(outcome.with_status("finished")) == 2
    runs = child_runs("evalaxis")
    assert sorted(r.info.status for r in runs) == ["FINISHED", "FINISHED"]
    folders = list((workdir / "runs").iterdir())
    assert len(folders) == 1 and (folders[0] / "checkpoint.pt").is_file()  # one training for two cells

    from mlflow import MlflowClient
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    for run in runs:
        schedule = json.loads(run.data.tags["wg2.assignment"])["eval.schedules"][0]
        assert run.data.params["eval.schedules"] == str([schedule]) and run.data.params["model.decoder_preset"] == "tiny"
        assert f"{schedule}/pesq_wb" in run.data.metrics and "train/audio_seconds_per_sec" in run.data.metrics
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
        assert steps == list(range(2, 13, 2))  # each logged step once
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"config.toml", "checkpoint.pt", "summary.json", "per_utterance.csv", "audio"} <= artifacts
        assert run.data.tags["wg2.train_hash"] == folders[0].name and run.data.tags["wg2.git_commit"]
    parent = client.get_run(runs[0].data.tags["mlflow.parentRunId"])
    assert parent.data.tags["wg2.kind"] == "grid" and parent.info.status == "FINISHED"
    assert len(json.loads(parent.data.tags["wg2.expected_cells"])) == 2

    again = run_grid(path, progress=False)
    assert again.exit_code == 0 and len(again.with_status("skipped")) == 2 and not again.with_status("finished")
    assert sorted(r.info.run_id for r in child_runs("evalaxis")) == sorted(r.info.run_id for r in runs)
    assert again.parent_run_id == outcome.parent_run_id


@pytest.mark.slow
def test_failing_cell_is_recorded_and_the_grid_goes_on_in_parallel(workdir: Path, data_table: dict, capsys):
    # A learning rate of 1e30 sends the weights to inf after one step: training raises NonFiniteError.
    path = write(workdir / "g.toml", grid_text("fails", tiny_base(data_table), {"train.learning_rate": [1e-3, 1e30]}))
    assert main(["grid", str(path), "--workers", "2"]) == 1
    out = capsys.readouterr().err
    assert "1 failed" in out and "train.learning_rate=1e+30" in out
    runs = {r.data.tags["wg2.label"]: r for r in child_runs("fails")}
    good, bad = runs["train.learning_rate=0.001 seed=0"], runs["train.learning_rate=1e+30 seed=0"]
    assert good.info.status == "FINISHED" and "manual-6/stoi" in good.data.metrics
    assert bad.info.status == "FAILED" and "non-finite" in bad.data.tags["wg2.error"].lower()
    from mlflow import MlflowClient
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    assert "error.log" in {a.path for a in client.list_artifacts(bad.info.run_id)}

    assert main(["grid", str(path)]) == 1  # a rerun retries the failed cell in its own run, adds no run
    assert sorted(r.info.run_id for r in child_runs("fails")) == sorted(r.info.run_id for r in runs.values())


@pytest.mark.slow
def test_kill_9_mid_cell_resumes_and_ends_with_one_finished_run_per_cell(workdir: Path, data_table: dict):
    base = tiny_base(data_table, train={"steps": 40})
    path = write(workdir / "g.toml", grid_text("killed", base, {"model.upsampler": ["gaussian", "repeat"]}))
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "experiments.cli", "grid", str(path)], cwd=workdir, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    try:
        while not list((workdir / "runs").glob("*/checkpoint.pt")):
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    (ckpt,) = list((workdir / "runs").glob("*/checkpoint.pt"))
    killed_at = torch.load(ckpt, map_location="cpu", weights_only=True)["step"]
    assert 4 <= killed_at < 40  # killed mid-training, after its first checkpoint
    assert [r.info.status for r in child_runs("killed")] == ["RUNNING"]  # the interrupted cell

    outcome = run_grid(path, progress=False)
    assert outcome.exit_code == 0
    runs = child_runs("killed")
    assert sorted(r.info.status for r in runs) == ["FINISHED", "FINISHED"]
    assert len({r.data.tags["wg2.cell_hash"] for r in runs}) == 2  # one run per cell: the killed one was reused
    from mlflow import MlflowClient
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    for run in runs:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
        assert sorted(steps) == list(range(2, 41, 2))  # the whole curve, no step twice


def _terminate_mid_cells(workdir: Path, path: Path, prefix: list[str]) -> int:
    """Start `wg2 grid --workers 2` through `prefix`, SIGTERM the parent alone (as `kill PID` or a batch
    scheduler does) once a worker has written a checkpoint; its exit code."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, *prefix, "grid", str(path), "--workers", "2", "-q"], cwd=workdir,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline, before = time.monotonic() + 240, set((workdir / "runs").glob("*/checkpoint.pt"))
    try:
        while not set((workdir / "runs").glob("*/checkpoint.pt")) - before:
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    time.sleep(3)  # orphaned workers notice their parent is gone within a second
    return proc.returncode


@pytest.mark.slow
def test_sigterm_ends_the_parent_and_its_cells_killed_with_the_signal_as_reason(workdir: Path, data_table: dict):
    from evaluation.runs import TAG_END_REASON

    base = tiny_base(data_table, train={"steps": 400})
    path = write(workdir / "g.toml", grid_text("termed", base, {"model.upsampler": ["gaussian", "repeat"]}))
    assert _terminate_mid_cells(workdir, path, ["-m", "experiments.cli"]) == 143
    (parent,) = child_runs("termed", "grid")
    cells = child_runs("termed", "cell")
    assert cells and all(r.info.status == "KILLED" for r in [parent, *cells]), [r.info.status for r in cells]
    assert {r.data.tags[TAG_END_REASON] for r in [parent, *cells]} == {"terminated (SIGTERM)"}

    # the check fails without the handler: SIGTERM kills the parent outright, its workers follow it, and
    # the parent and the cells stay RUNNING until a rerun
    broken = ("import sys, experiments.tracking.ending as w; w.raise_on_sigterm = lambda: None; "
              "from experiments.cli import main; sys.exit(main(sys.argv[1:]))")
    base = tiny_base(data_table, train={"steps": 400, "learning_rate": 2e-3})  # other cells, other run folders
    path = write(workdir / "h.toml", grid_text("unhandled", base, {"model.upsampler": ["gaussian", "repeat"]}))
    assert _terminate_mid_cells(workdir, path, ["-c", broken]) == -signal.SIGTERM
    statuses = [r.info.status for r in child_runs("unhandled", "grid") + child_runs("unhandled", "cell")]
    assert "RUNNING" in statuses, statuses


# ----------------------------------------------------------------------------- claiming a cell's run

def test_claims_skip_live_holders_take_over_dead_ones_and_settle_races(workdir: Path):
    import socket

    from evaluation.runs import TAG_HEARTBEAT, TAG_OWNER
    from experiments.tracking import claims, store

    uri = store.ensure_store()
    exp = store.get_or_create_experiment("claims", uri=uri)
    assert store.get_or_create_experiment("claims", uri=uri) == exp
    mlf = store.client(uri)

    def create(tags: dict, start_time: int | None = None) -> str:
        return mlf.create_run(exp, start_time=start_time, tags=tags).info.run_id

    def holder(owner: str, beat: float) -> None:
        mlf.set_tag(run_id, TAG_OWNER, owner)
        mlf.set_tag(run_id, TAG_HEARTBEAT, f"{beat:.0f}")

    def claim(key: str = "abc", make=create):
        return claims.claim_run(mlf, exp, "wg2.cell_hash", key, make)

    run_id, state = claim()
    assert state == "new"
    holder("other-host:123:0", time.time())  # another machine, heartbeat fresh: leave it alone
    assert claim() == (run_id, "busy")
    holder("other-host:123:0", time.time() - 2 * claims.STALE_SECONDS)  # heartbeat stale: take it over
    assert claim() == (run_id, "resumed")
    holder(f"{socket.gethostname()}:{os.getppid()}:0", time.time())  # this host, pid alive but another process
    assert claim() == (run_id, "resumed")
    mlf.set_terminated(run_id, "FINISHED")
    assert claim() == (run_id, "finished")

    def racing_create(tags: dict) -> str:  # another machine created the same cell's run a moment earlier
        create({**tags, TAG_OWNER: "other-host:9:0"}, start_time=int(time.time() * 1000) - 1000)
        return create(tags)

    other_id, state = claim("xyz", racing_create)
    assert state == "busy"  # the earlier run won; ours was deleted
    active = mlf.search_runs([exp], "tags.`wg2.cell_hash` = 'xyz'")
    assert [r.info.run_id for r in active] == [other_id]
