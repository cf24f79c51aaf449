"""Nothing lost, nothing silently wrong: corpus faults that used to pass `wg2 corpus check` (NaN/Inf audio,
broken TextGrid intervals, labels with spaces, silence-only utterances) and MLflow runs left RUNNING or a store
that cannot be written. Each test feeds the bad input and checks the message names the file (and interval) and
what was expected."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile
from conftest import tiny_tables
from test_corpus import copy_corpus as copy_three  # the same copier, one place

from experiments.cli import main
from experiments.corpus.read import read_corpus
from experiments.corpus.textgrid import read_phone_tier

SR = 22050


def uid(n: int) -> str:
    return f"harvard-{n:03d}"


def copy_corpus(src: Path, dst: Path) -> Path:
    """Three utterances of the built corpus, safe to damage."""
    return copy_three(src, dst, n=3)


def write_grid(path: Path, items: list[tuple[float, float, str]], end: float) -> None:
    """A short-format TextGrid written by hand, so it can hold what praatio would refuse to write."""
    lines = ['File type = "ooTextFile"', 'Object class = "TextGrid"', "", "0", f"{end!r}", "<exists>", "1",
             '"IntervalTier"', '"phones"', "0", f"{end!r}", str(len(items))]
    for start, stop, label in items:
        lines += [f"{start!r}", f"{stop!r}", '"' + label.replace('"', '""') + '"']
    path.write_text("\n".join(lines) + "\n")


def check(root: Path, capsys, *extra: str) -> tuple[int, str, str]:
    code = main(["corpus", "check", str(root), *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ----------------------------------------------------------------------------- audio

@pytest.mark.parametrize("value, name", [(np.nan, "NaN"), (np.inf, "+Inf"), (-np.inf, "-Inf")])
def test_nonfinite_audio_is_a_problem_naming_file_and_interval(corpus_dir: Path, tmp_path: Path, capsys,
                                                              value: float, name: str):
    root = copy_corpus(corpus_dir, tmp_path / "c")
    wav = root / "wavs" / f"{uid(2)}.wav"
    x, rate = soundfile.read(str(wav), dtype="float32")
    x[2205:2210] = value  # samples 2205..2209, 0.100 s to 0.100 s
    soundfile.write(str(wav), x, rate, subtype="FLOAT")
    code, _, err = check(root, capsys)
    assert code == 2
    assert f"{wav}: 5 {name} sample(s) in samples 2205..2209 [0.100 s, 0.100 s]; expected finite samples" in err, err
    assert "1 problem(s)" in err and "--skip-bad" in err
    code, out, _ = check(root, capsys, "--skip-bad")
    assert code == 0 and "utterances: 2 usable of 3 listed" in out and "non-finite audio: 1" in out


# ----------------------------------------------------------------------------- TextGrid intervals

def _damage(root: Path, n: int, change) -> tuple[Path, list[tuple[float, float, str]]]:
    path = root / "alignments" / f"{uid(n)}.TextGrid"
    items, end = read_phone_tier(path)
    items = change(list(items))
    write_grid(path, items, end)
    return path, items


def _second_phone(items: list[tuple[float, float, str]]) -> int:
    """Index of the second interval with a non-empty label (a phone, not the leading silence)."""
    return [k for k, (_, _, label) in enumerate(items) if label.strip() and label.strip() != "sil"][1]


def test_negative_time_is_rejected(corpus_dir: Path, tmp_path: Path, capsys):
    root = copy_corpus(corpus_dir, tmp_path / "c")

    def change(items):
        s, e, lab = items[0]
        items[0] = (-0.05, e, lab)
        return items

    path, items = _damage(root, 1, change)
    code, _, err = check(root, capsys)
    assert code == 2
    assert f"{path}: interval 1 [-0.05 s, {items[0][1]:g} s]" in err and "negative time; expected times of at least 0 s" in err, err


def test_start_after_end_is_rejected_not_a_negative_duration(corpus_dir: Path, tmp_path: Path, capsys):
    root = copy_corpus(corpus_dir, tmp_path / "c")
    k = 0

    def change(items):
        nonlocal k
        k = _second_phone(items)
        s, e, lab = items[k]
        items[k] = (e, s, lab)  # start after end
        return items

    path, items = _damage(root, 1, change)
    s, e, lab = items[k]
    code, out, err = check(root, capsys)
    assert code == 2 and out == ""
    assert f"{path}: interval {k + 1} [{s:g} s, {e:g} s] {lab!r}: starts after it ends; expected start <= end" in err, err
    code, out, _ = check(root, capsys, "--skip-bad")
    assert code == 0 and "bad interval: 1" in out and "min -" not in out  # no negative duration in the summary


def test_overlapping_intervals_are_rejected(corpus_dir: Path, tmp_path: Path, capsys):
    root = copy_corpus(corpus_dir, tmp_path / "c")
    k = 0

    def change(items):
        nonlocal k
        k = _second_phone(items)
        s, e, lab = items[k]
        items[k] = (s, items[k + 1][1] - 0.001, lab)  # reaches into the next interval
        return items

    path, items = _damage(root, 3, change)
    code, _, err = check(root, capsys)
    assert code == 2
    b = items[k + 1]
    assert f"{path}: interval {k + 2} [{b[0]:g} s, {b[1]:g} s] {b[2]!r} overlaps interval {k + 1} " in err, err
    assert "expected intervals that do not overlap" in err


def test_intervals_out_of_time_order_are_rejected_not_sorted_under_the_wrong_labels(corpus_dir: Path, tmp_path: Path,
                                                                                    capsys):
    """Two phones' times swapped in the file (labels where they were): no overlap, no reversed interval, but
    each label now sits on the other's time span. Sorting by time would silently pair labels with wrong audio."""
    root = copy_corpus(corpus_dir, tmp_path / "c")
    k = 0

    def change(items):
        nonlocal k
        k = _second_phone(items)
        (s1, e1, l1), (s2, e2, l2) = items[k], items[k + 2]
        items[k], items[k + 2] = (s2, e2, l1), (s1, e1, l2)
        return items

    path, items = _damage(root, 2, change)
    code, _, err = check(root, capsys)
    assert code == 2, err
    b = items[k + 1]
    assert f"{path}: interval {k + 2} [{b[0]:g} s, {b[1]:g} s] {b[2]!r} starts before interval {k + 1} " in err, err
    assert "expected intervals in time order" in err
    code, out, _ = check(root, capsys, "--skip-bad")
    assert code == 0 and "utterances: 2 usable of 3 listed" in out, out


def test_label_with_a_space_is_rejected(corpus_dir: Path, tmp_path: Path, capsys):
    root = copy_corpus(corpus_dir, tmp_path / "c")
    k = 0

    def change(items):
        nonlocal k
        k = _second_phone(items)
        s, e, _ = items[k]
        items[k] = (s, e, "ð 0")
        return items

    path, items = _damage(root, 2, change)
    code, _, err = check(root, capsys)
    assert code == 2
    s, e, _ = items[k]
    assert f"{path}: interval {k + 1} [{s:g} s, {e:g} s] 'ð 0': label 'ð 0' holds a space; rejected" in err, err
    assert "expected e.g." in err


def test_silence_only_is_a_warning_and_skipped_with_skip_bad(corpus_dir: Path, tmp_path: Path, capsys):
    root = copy_corpus(corpus_dir, tmp_path / "c")
    path, _ = _damage(root, 2, lambda items: [(s, e, "sil" if k % 2 else "") for k, (s, e, _) in enumerate(items)])
    code, out, err = check(root, capsys)
    assert code == 0 and "utterances: 3 usable of 3 listed" in out
    assert f"warning: {path}: silence only: every phone label of its" in err and "expected at least one phone" in err
    assert "(kept; --skip-bad" in err
    code, out, _ = check(root, capsys, "--skip-bad")
    assert code == 0 and "utterances: 2 usable of 3 listed" in out and "silence only: 1" in out
    assert [u.id for u in read_corpus(root, skip_bad=True).utterances] == [uid(1), uid(3)]


# ----------------------------------------------------------------------------- MLflow: no run left RUNNING

@pytest.fixture
def tiny_grid(corpus_dir: Path, tmp_path: Path, monkeypatch) -> Path:
    """A one-cell grid of the tiny model on the session corpus, with its own MLflow SQLite store and runs folder."""
    import json

    from experiments.config.identity import _toml_value

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("WG2_RUNS_DIR", str(tmp_path / "runs"))
    tables = {**tiny_tables(), "data": {"root": str(corpus_dir), "cache_dir": str(tmp_path / "cache"), "val_fraction": 0.3,
                               "test_fraction": 0.1}}
    lines = ['name = "faults"', 'description = "Are failed runs ended?"', "seeds = [0]", "[base]"]
    for section, values in tables.items():
        lines += [f"{section}.{key} = {_toml_value(value)}" for key, value in values.items()]
    lines += ["[axes]", f'{json.dumps("train.learning_rate")} = [0.001]']
    path = tmp_path / "g.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _runs_by_kind(kind: str) -> list:
    import os

    from mlflow import MlflowClient

    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("faults")
    return client.search_runs([exp.experiment_id], f"tags.`wg2.kind` = '{kind}'")


def _refuse_uploads(monkeypatch, kind: str) -> None:
    """Every artifact upload to a run of `kind` ('cell' or 'grid') raises, as a full or unreachable store would."""
    from mlflow import MlflowClient

    for name in ("log_artifact", "log_artifacts"):
        original = getattr(MlflowClient, name)

        def refuse(self, run_id, *args, _original=original, **kwargs):
            if self.get_run(run_id).data.tags.get("wg2.kind") == kind:
                raise OSError("artifact store refused the upload (disk full)")
            return _original(self, run_id, *args, **kwargs)

        monkeypatch.setattr(MlflowClient, name, refuse)


def test_cell_whose_artifact_upload_fails_ends_failed_and_so_does_the_parent(tiny_grid: Path, monkeypatch, capsys):
    from evaluation.runs import TAG_END_REASON, TAG_ERROR

    _refuse_uploads(monkeypatch, "cell")
    assert main(["grid", str(tiny_grid), "--device", "cpu"]) == 1
    (cell,) = _runs_by_kind("cell")
    assert cell.info.status == "FAILED", cell.info.status
    assert "artifact store refused the upload" in cell.data.tags[TAG_END_REASON]
    assert "artifact store refused the upload" in cell.data.tags[TAG_ERROR]
    (parent,) = _runs_by_kind("grid")
    assert parent.info.status == "FAILED"
    assert parent.data.tags[TAG_END_REASON] == "1 of 1 cell(s) failed: [train.learning_rate=0.001 seed=0]"
    assert "error.log not uploaded" in capsys.readouterr().err


def test_parent_whose_artifact_upload_fails_ends_failed_with_the_reason(tiny_grid: Path, monkeypatch):
    from evaluation.runs import TAG_END_REASON
    from experiments.grid.run import run_grid

    _refuse_uploads(monkeypatch, "grid")
    with pytest.raises(OSError, match="artifact store refused"):
        run_grid(tiny_grid, device="cpu", progress=False)
    (parent,) = _runs_by_kind("grid")
    assert parent.info.status == "FAILED"
    assert parent.data.tags[TAG_END_REASON] == "OSError: artifact store refused the upload (disk full)"
    assert _runs_by_kind("cell") == []


def test_interrupted_grid_ends_cell_and_parent_killed(tiny_grid: Path, monkeypatch):
    import experiments.grid.cell
    from evaluation.runs import TAG_END_REASON
    from experiments.grid.run import run_grid

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(experiments.grid.cell, "_execute", interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_grid(tiny_grid, device="cpu", progress=False)
    (cell,) = _runs_by_kind("cell")
    (parent,) = _runs_by_kind("grid")
    for run in (cell, parent):
        assert run.info.status == "KILLED"
        assert run.data.tags[TAG_END_REASON] == "interrupted (KeyboardInterrupt)"


def test_compare_names_how_and_why_unfinished_cells_and_the_parent_ended(tiny_grid: Path, monkeypatch, capsys):
    import experiments.grid.cell
    from experiments.grid.run import run_grid

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(experiments.grid.cell, "_execute", interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_grid(tiny_grid, device="cpu", progress=False)
    assert main(["compare", str(tiny_grid), "--out", "report"]) == 0
    assert "1 failed" in capsys.readouterr().err  # status lines go through logging to stderr
    md = (Path("report") / "report.md").read_text()
    assert "- `train.learning_rate=0.001 seed=0 (KILLED): interrupted (KeyboardInterrupt)`" in md, md
    assert "The grid's parent run ended **KILLED**: interrupted (KeyboardInterrupt)" in md, md


# ----------------------------------------------------------------------------- MLflow: a store that cannot be written

def test_unwritable_store_exits_2_before_any_training(tiny_grid: Path, tmp_path: Path, monkeypatch, capsys):
    import experiments.grid.run
    import experiments.train.loop

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a regular file where the store's folder should be")  # root ignores permissions; this not
    db = blocker / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    monkeypatch.setattr(experiments.train.loop, "train", lambda *a, **k: pytest.fail("trained before the preflight"))
    monkeypatch.setattr(experiments.grid.run, "check_windows", lambda *a, **k: pytest.fail("read data first"))
    assert main(["grid", str(tiny_grid), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert f"cannot write the MLflow store at {db} (set MLFLOW_TRACKING_URI or fix permissions)" in err, err
    assert not (tmp_path / "runs").exists()


def test_sqlite_unable_to_open_becomes_the_store_message(tmp_path: Path, monkeypatch):
    from experiments.config.run import InputError
    from experiments.tracking import store

    db = tmp_path / "mlflow.db"
    db.mkdir()  # sqlite: "unable to open database file"
    monkeypatch.setattr(store, "check_store_writable", lambda uri=None: None)  # reach sqlalchemy's own error
    with pytest.raises(InputError, match=r"cannot write the MLflow store at .*mlflow\.db \(set MLFLOW_TRACKING_URI"):
        store.ensure_store(f"sqlite:///{db}")
    monkeypatch.undo()
    with pytest.raises(InputError, match="cannot write the MLflow store at"):
        store.check_store_writable(f"sqlite:///{db}")


def _open_store(uri: str, start: float) -> str:
    import time

    from experiments.tracking import store

    time.sleep(max(0.0, start - time.time()))  # all at once
    try:
        store.ensure_store(uri)
    except Exception as err:  # noqa: BLE001 - reported to the test
        return f"{type(err).__name__}: {str(err).splitlines()[0]}"
    return "ok"


def test_commands_opening_one_new_sqlite_store_together_all_succeed(tmp_path: Path):
    """Separate commands (here: processes) creating one new MLflow SQLite store at the same moment: the
    migrations run once, under a lock beside the database, instead of racing ('table already exists')."""
    import multiprocessing
    import time

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        start = time.time() + 8  # after the spawned interpreters have imported mlflow
        results = pool.starmap(_open_store, [(uri, start)] * 3)
    assert results == ["ok"] * 3, results



def test_two_cells_recording_one_corpus_at_once_both_get_it_as_their_input(tmp_path: Path):
    """Two cells of a new experiment log the corpus at the same moment: both see no dataset row, one insert
    wins and the other hits MLflow's UNIQUE constraint (seen with `wg2 grid --workers 2` on a fresh store: a
    cell failed). Here the race is replayed in order: the other cell's insert lands between this one's
    lookup and insert. The loser links the row that exists; the plain call (the code before) fails."""
    from mlflow.exceptions import MlflowException

    from experiments.tracking import records, store

    uri = store.ensure_store(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = store.get_or_create_experiment("race", uri=uri)
    mlf = store.client(uri)
    real, corpus = mlf.log_inputs, str(tmp_path / "harvard")

    def race(winner: str, loser: str):
        state = {"raced": False}

        def log_inputs(run_id, datasets=None, **kwargs):
            if run_id == loser and not state["raced"]:  # the winner's insert lands first; this one collides
                state["raced"] = True
                mlf.log_inputs = real
                records.log_corpus_input(mlf, winner, corpus, "ab" * 32)
                mlf.log_inputs = log_inputs
                raise MlflowException("(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id, "
                                      "datasets.name, datasets.digest")
            return real(run_id, datasets=datasets, **kwargs)
        return log_inputs

    winner, loser = (mlf.create_run(exp).info.run_id for _ in range(2))
    mlf.log_inputs = race(winner, loser)
    records.log_corpus_input(mlf, loser, corpus, "ab" * 32)
    for run_id in (winner, loser):
        (given,) = mlf.get_run(run_id).inputs.dataset_inputs
        assert given.dataset.digest == ("ab" * 32)[:36]

    winner, loser = (mlf.create_run(exp).info.run_id for _ in range(2))
    mlf.log_inputs = race(winner, loser)
    with pytest.raises(MlflowException, match="UNIQUE"):  # the plain call, as before: the collision fails the cell
        mlf.log_inputs(loser, datasets=[])
