"""Issue 24, tracking stores: a dead tracking server, an unknown URI scheme, a corrupt or truncated SQLite file and
another application's SQLite database are each exit 2 within seconds naming the URI or the file, before MLflow
opens (and migrates) anything."""
from __future__ import annotations

import shutil
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from experiments.cli import main

DEAD = "http://127.0.0.1:9"  # the discard port: nothing listens there
RUN_ID = "0123456789abcdef0123456789abcdef"


def _commands(tmp_path: Path, checkpoint: Path | None = None) -> dict[str, list[str]]:
    config = tmp_path / "run.toml"
    config.write_text(f'[data]\nroot = "{tmp_path / "no-corpus"}"\n')
    grid = tmp_path / "g.toml"
    grid.write_text(f'name = "g"\ndescription = "q?"\n[base]\ndata.root = "{tmp_path / "no-corpus"}"\n'
                    '[axes]\n"model.upsampler" = ["gaussian"]\n')
    commands = {"train": ["train", str(config), "--device", "cpu", "--out", str(tmp_path / "run")],
                "grid": ["grid", str(grid), "--device", "cpu"],
                "compare": ["compare", "g", "--out", str(tmp_path / "report")],
                "synth RUN_ID": ["synth", RUN_ID, "hello", "-o", str(tmp_path / "x.wav")],
                "search RUN_ID": ["search", RUN_ID, "--trials", "1", "--out", str(tmp_path / "s")]}
    if checkpoint is not None:
        commands["eval"] = ["eval", str(checkpoint), "--limit", "1", "--device", "cpu", "--out", str(tmp_path / "e")]
    return commands


def _exit_2_naming(argv: list[str], names: list[str], capsys, seconds: float = 15.0) -> str:
    start = time.monotonic()
    code = main(argv)
    took = time.monotonic() - start
    err = capsys.readouterr().err
    assert code == 2, (argv, code, err)
    assert took < seconds, (argv, took)
    assert all(n in err for n in names), (argv, err)
    assert "Traceback" not in err
    return err


def test_a_dead_tracking_server_is_exit_2_within_seconds_naming_the_uri(tiny_checkpoint: Path, tmp_path: Path,
                                                                        monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", DEAD)
    monkeypatch.chdir(tmp_path)
    for what, argv in _commands(tmp_path, tiny_checkpoint).items():
        err = _exit_2_naming(argv, [DEAD], capsys)
        assert "not reachable" in err, (what, err)
    assert not (tmp_path / "run").exists() and not (tmp_path / "report").exists()

    # without the check, MLflow's own client retries for minutes: still waiting after 5 s
    from mlflow import MlflowClient

    call = threading.Thread(target=lambda: MlflowClient(DEAD).search_experiments(), daemon=True)
    call.start()
    call.join(5)
    assert call.is_alive()


def test_an_unknown_uri_scheme_is_exit_2_naming_it(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "foo://bar")
    monkeypatch.chdir(tmp_path)
    for argv in _commands(tmp_path).values():
        _exit_2_naming(argv, ["foo://bar", "unknown scheme 'foo'"], capsys)
    from mlflow import MlflowClient

    with pytest.raises(Exception) as raised:  # what the user saw before: MLflow's own error, a traceback
        MlflowClient("foo://bar").search_experiments()
    assert "foo" in str(raised.value)


def _tables(db: Path) -> set[str]:
    with sqlite3.connect(db) as con:
        return {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def test_another_applications_sqlite_database_is_left_untouched(tmp_path: Path, monkeypatch, capsys):
    db = tmp_path / "app.db"
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
        con.execute("INSERT INTO invoices (total) VALUES (12.5)")
    before = db.read_bytes()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    monkeypatch.chdir(tmp_path)
    for argv in _commands(tmp_path).values():
        _exit_2_naming(argv, [str(db), "another application's database", "invoices"], capsys)
    assert db.read_bytes() == before and _tables(db) == {"invoices"}

    # what opening it through MLflow does: its tables are added to the user's database
    copy = tmp_path / "copy.db"
    shutil.copyfile(db, copy)
    from mlflow import MlflowClient

    try:
        MlflowClient(f"sqlite:///{copy}").search_experiments()
    except Exception:  # noqa: BLE001, S110 - whether it then fails or not, the damage is done
        pass
    assert len(_tables(copy)) > 10


@pytest.mark.parametrize("damage", ["not sqlite", "truncated"])
def test_a_corrupt_or_truncated_sqlite_store_is_exit_2_naming_it(damage: str, tmp_path: Path, monkeypatch, capsys):
    from mlflow import MlflowClient

    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    if damage == "not sqlite":
        db.write_bytes(b"\x00garbage, not a database\n" * 200)
    else:
        MlflowClient(uri).create_experiment("g", artifact_location=str(tmp_path / "a"))
        data = db.read_bytes()
        db.write_bytes(data[:len(data) // 3])
    before = db.read_bytes()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    word = "not an SQLite database" if damage == "not sqlite" else "truncated"
    for what in ("train", "compare", "grid"):
        _exit_2_naming(_commands(tmp_path)[what], [str(db), word], capsys)
    assert db.read_bytes() == before
    with pytest.raises(Exception):  # noqa: B017 - the old path: MLflow's own error on the damaged file
        MlflowClient(uri).search_experiments()


def test_a_server_that_is_not_mlflow_is_named_and_one_that_answers_its_api_passes():
    """The check asks MLflow's REST API, not just for a TCP connection: a web server answering 404 there (or a
    sandbox that accepts every connection) is not a tracking store; one answering the API is."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from evaluation.runs import store_problem

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            mlflow = self.path.startswith("/mlflow/api/2.0/mlflow/experiments/search")
            self.send_response(200 if mlflow else 404)
            self.end_headers()
            self.wfile.write(b'{"experiments": []}' if mlflow else b"not here")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        assert "answers HTTP 404 to MLflow's REST API" in store_problem(base)
        assert store_problem(base + "/mlflow") is None
    finally:
        server.shutdown()
