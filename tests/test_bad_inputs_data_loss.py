"""Issue 24, data loss: wg2 deletes or overwrites only files it can prove it wrote. A user's `*.tmp<digits>` files in
a run folder, a report folder's files that no `wg2 compare` wrote, the home folder, and grid names that are paths
(they would put results/<name> elsewhere) all survive; each refusal names what and how to force it."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.cli import main
from experiments.train import runtime

FOREIGN_TEMPS = ("notes.tmp999999", "thesis.tex.tmp4242424")


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _train_until_data(run: Path, tmp_path: Path) -> int:
    """`wg2 train --out RUN` up to the point where the corpus is read (a missing corpus: exit 2): the run folder's
    clean-up of dead writers' temporaries has happened by then."""
    config = tmp_path / "run.toml"
    config.write_text(f'[data]\nroot = "{tmp_path / "no-corpus"}"\n')
    return main(["train", str(config), "--no-track", "--device", "cpu", "--out", str(run)])


def test_train_out_keeps_a_users_tmp_digit_files_and_removes_only_its_own(tmp_path: Path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    theirs = [run / name for name in FOREIGN_TEMPS]
    ours = run / f"checkpoint.pt{runtime.TEMPORARY_MARK}{_dead_pid()}"
    for path in (*theirs, ours):
        path.write_bytes(b"precious" if path in theirs else b"half a checkpoint")
    assert _train_until_data(run, tmp_path) == 2
    assert all(p.read_bytes() == b"precious" for p in theirs) and not ours.exists()

    # the old clean-up (any NAME.tmp<digits>) deletes the user's files: the assertion above catches it
    monkeypatch.setattr(runtime, "TEMPORARY_MARK", ".tmp")
    monkeypatch.setattr(runtime, "_TEMPORARY", re.compile(r"^(?P<name>.+)\.tmp(?P<pid>\d+)$"))
    assert _train_until_data(run, tmp_path) == 2
    assert not any(p.exists() for p in theirs)


# ----------------------------------------------------------------------------- wg2 compare --out

@pytest.fixture
def store(tmp_path: Path, monkeypatch) -> str:
    """A store holding one (empty) grid experiment "g", and a grid file naming it."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    MlflowClient(uri).create_experiment("g", artifact_location=str(tmp_path / "artifacts"))
    return uri


def test_compare_refuses_an_out_folder_with_foreign_report_files_and_force_replaces_them(store, tmp_path: Path,
                                                                                          capsys):
    out = tmp_path / "mine"
    (out / "listen").mkdir(parents=True)
    (out / "report.md").write_text("my thesis notes")
    (out / "listen" / "keep.wav").write_bytes(b"my recording")
    assert main(["compare", "g", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{out / 'report.md'}" in err and f"{out / 'listen'}" in err and "--force" in err, err
    assert (out / "report.md").read_text() == "my thesis notes" and (out / "listen" / "keep.wav").is_file()

    # a folder compare wrote itself is rewritten without asking
    own = tmp_path / "own"
    assert main(["compare", "g", "--out", str(own)]) == 0
    assert main(["compare", "g", "--out", str(own)]) == 0

    # forced (what the old compare always did): the user's report.md is gone, as the first check would catch
    assert main(["compare", "g", "--out", str(out), "--force"]) == 0
    assert (out / "report.md").read_text() != "my thesis notes"


def test_compare_refuses_the_home_folder(store, tmp_path: Path, monkeypatch, capsys):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    assert main(["compare", "g", "--out", "~"]) == 2
    assert f"--out {home}: it is the home folder" in capsys.readouterr().err
    assert sorted(p.name for p in home.iterdir()) == []
    assert main(["compare", "g", "--out", str(home / "report")]) == 0  # a folder of its own is fine


@pytest.mark.parametrize("name", ["/some/where", "../outside", "~/x", ".hidden", "a/b"])
def test_grid_names_that_are_not_plain_names_are_refused(name: str, tmp_path: Path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")  # refused before it is read
    grid = tmp_path / "g.toml"
    grid.write_text(f'name = "{name}"\ndescription = "q?"\n[axes]\n"model.upsampler" = ["gaussian"]\n')
    for argv in (["compare", str(grid)], ["grid", str(grid), "--dry-run"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"name = {name!r} is not a plain name" in err, err
    # what the check prevents: results/<name> is not one plain folder inside results/ for such a name
    assert (Path("results") / name).parent != Path("results") or name.startswith((".", "~"))
    assert main(["compare", name]) == 2  # an experiment name that is no plain name needs --out
    assert "give the report folder with --out" in capsys.readouterr().err
    assert not (tmp_path / "results").exists() and not (tmp_path / "mlflow.db").exists()
