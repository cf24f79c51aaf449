"""Nothing lost, nothing silently wrong: bad input, folders in the way, full disks, dead processes' leftovers.
Each case feeds the fault through the real CLI where practical and checks the exit code (2), that the message
names the file, key or value and what was expected, and that nothing of the user's was deleted."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from experiments.cli import main
from experiments.corpus import build
from experiments.corpus.build import IN_PROGRESS, MARKER

# ----------------------------------------------------------------------------- `wg2 corpus build`: folders in the way

def _no_synthesis(monkeypatch) -> list:
    """Replace synthesis with a recorder: a refused build must stop before any of it."""
    calls: list = []
    monkeypatch.setattr(build, "_synthesize", lambda jobs, *a: calls.append(len(jobs)))
    return calls


def test_foreign_partial_folder_is_refused_before_synthesis_and_kept(tmp_path: Path, monkeypatch, capsys):
    out, partial = tmp_path / "harvard", tmp_path / "harvard.partial"
    partial.mkdir()
    (partial / "notes.txt").write_text("keep me")
    calls = _no_synthesis(monkeypatch)
    assert main(["corpus", "build", "--out", str(out), "--limit", "1", "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert str(partial) in err and IN_PROGRESS in err and "remove or rename it" in err, err
    assert calls == []
    assert (partial / "notes.txt").read_text() == "keep me" and not out.exists()


def test_old_folder_in_the_way_is_refused_before_synthesis_and_kept(tmp_path: Path, monkeypatch, capsys):
    out, old = tmp_path / "harvard", tmp_path / "harvard.old"
    old.mkdir()
    (old / "notes.txt").write_text("keep me")
    calls = _no_synthesis(monkeypatch)
    assert main(["corpus", "build", "--out", str(out), "--limit", "1", "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert str(old) in err and MARKER in err, err
    assert calls == [] and (old / "notes.txt").read_text() == "keep me"
    assert not out.exists() and not (tmp_path / "harvard.partial").exists()


def test_our_partial_folder_is_marked_from_its_creation_and_replaced_for_other_settings(tmp_path: Path,
                                                                                         monkeypatch):
    out, partial = tmp_path / "harvard", tmp_path / "harvard.partial"
    seen: list = []

    def interrupted(jobs, *args):
        seen.append(sorted(p.name for p in partial.iterdir()))  # what a crash here would leave
        raise KeyboardInterrupt

    monkeypatch.setattr(build, "_synthesize", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build.build_corpus(out, limit=2, workers=1, progress=False)
    assert seen == [sorted([IN_PROGRESS, "wavs", "alignments"])]
    assert json.loads((partial / IN_PROGRESS).read_text())["count"] == 2
    (partial / "wavs" / "harvard-001.wav").write_bytes(b"half")  # a leftover of the interrupted build
    calls = _no_synthesis(monkeypatch)
    build.build_corpus(out, limit=1, workers=1, progress=False)  # other settings: the partial is ours
    assert calls == [1] and not partial.exists()
    marker = json.loads((out / MARKER).read_text())
    assert marker["count"] == 1 and marker["content_hash"] == build.corpus_content_hash(out)
    assert not (out / IN_PROGRESS).exists() and not (out / "wavs" / "harvard-001.wav").exists()


# ----------------------------------------------------------------------------- a tiny trained run, shared

def run_toml(data_root: str, cache: str, steps: int = 2, **extra: str) -> str:
    text = f"""
[data]
root = "{data_root}"
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
log_every = 1
checkpoint_every = {steps}
gain_utterances = 0
[eval]
schedules = ["manual-6"]
limit = 1
metric_workers = 1
"""
    return text + "".join(f"{line}\n" for line in extra.values())


@pytest.fixture(scope="module")
def trained(corpus_dir: Path, tmp_path_factory) -> tuple[Path, Path]:
    """(config file, checkpoint) of a two-step tiny run on the session corpus."""
    folder = tmp_path_factory.mktemp("trained")
    config = folder / "run.toml"
    config.write_text(run_toml(str(corpus_dir), str(folder / "cache")))
    assert main(["train", str(config), "--device", "cpu", "--out", str(folder / "run")]) == 0
    return config, folder / "run" / "checkpoint.pt"


def _one_line_naming(err: str, path: Path) -> str:
    lines = [line[line.index("wg2: error:"):] for line in re.split(r"[\r\n]", err) if "wg2: error:" in line]
    assert len(lines) == 1 and str(path) in lines[0], err
    assert "weights_only" not in err and "safe_globals" not in err, err  # torch's unsafe advice is dropped
    return lines[0]


# ----------------------------------------------------------------------------- preflight: train, eval, grid

def _no_data(monkeypatch) -> None:
    """Reading the corpus is the first expensive step: a preflight failure must come before it."""
    import experiments.corpus.dataset
    import experiments.infer.command
    import experiments.train.command

    def refuse(*args, **kwargs):
        raise AssertionError("the corpus was read before the preflight checks")

    for module in (experiments.corpus.dataset, experiments.infer.command, experiments.train.command):  # imported by name
        monkeypatch.setattr(module, "load_dataset", refuse)


def test_train_refuses_an_unwritable_run_folder_before_reading_data(trained, tmp_path: Path, monkeypatch, capsys):
    config, _ = trained
    blocker = tmp_path / "a-file"
    blocker.write_text("keep me")
    out = blocker / "run"  # cannot be created: its parent is a file (root ignores permission bits)
    _no_data(monkeypatch)
    assert main(["train", str(config), "--device", "cpu", "--out", str(out)]) == 2
    line = _one_line_naming(capsys.readouterr().err, out)
    assert "run folder is not writable" in line
    assert blocker.read_text() == "keep me"


def test_eval_refuses_an_unwritable_out_folder_before_loading(trained, tmp_path: Path, monkeypatch, capsys):
    import experiments.infer.synth

    _, checkpoint = trained
    blocker = tmp_path / "a-file"
    blocker.write_text("keep me")
    monkeypatch.setattr(experiments.infer.synth, "load_checkpoint", lambda *a, **k: pytest.fail("loaded first"))
    assert main(["eval", str(checkpoint), "--device", "cpu", "--out", str(blocker / "eval")]) == 2
    line = _one_line_naming(capsys.readouterr().err, blocker / "eval")
    assert "--out folder is not writable" in line and blocker.read_text() == "keep me"


def test_check_writable_leaves_no_trace(tmp_path: Path):
    from experiments.train.runtime import check_writable

    check_writable(tmp_path / "a" / "b" / "c")
    check_writable(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_grid_refuses_a_cell_with_an_empty_eval_split_before_any_training(corpus_dir: Path, tmp_path: Path,
                                                                          monkeypatch, capsys):
    import experiments.train.loop

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("WG2_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setattr(experiments.train.loop, "train", lambda *a, **k: pytest.fail("trained before the check"))
    base = run_toml(str(corpus_dir), str(tmp_path / "cache")).replace("test_fraction = 0.1", "test_fraction = 0.0")
    base = base.replace("[data]", "[base.data]").replace("[model]", "[base.model]").replace(
        "[train]", "[base.train]").replace("[eval]", "[base.eval]")
    grid = tmp_path / "g.toml"
    grid.write_text('name = "g"\ndescription = "empty split?"\nseeds = [0]\n' + base
                    + '[axes]\n"eval.split" = ["val", "test"]\n')
    assert main(["grid", str(grid), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert str(grid) in err and "cell [eval.split=test seed=0]: eval.split = 'test' has no utterances" in err, err
    assert "data.test_fraction = 0.0" in err and "cell [eval.split=val" not in err, err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()


# ----------------------------------------------------------------------------- dead processes' temporaries, full disk

def _dead_pid() -> int:
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_orphaned_checkpoint_temporaries_of_dead_processes_are_removed_on_start(trained, tmp_path: Path,
                                                                                monkeypatch, capsys):
    import os

    config, _ = trained
    run = tmp_path / "run"
    run.mkdir()
    dead = run / f"checkpoint.pt.wg2-tmp{_dead_pid()}"
    live = run / f"checkpoint.pt.wg2-tmp{os.getppid()}"  # a live process's save in progress
    other = run / "notes.tmp"  # not one of ours
    for path in (dead, live, other):
        path.write_bytes(b"partial")
    _no_data(monkeypatch)  # stop right after the start: the cleanup comes before the data is read
    with pytest.raises(AssertionError, match="corpus was read"):
        main(["train", str(config), "--device", "cpu", "--out", str(run)])
    assert not dead.exists() and live.exists() and other.exists()
    assert f"removed {dead}" in capsys.readouterr().err


def test_full_disk_while_saving_a_checkpoint_names_the_path_and_removes_the_temporary(trained, tmp_path: Path,
                                                                                      monkeypatch, capsys):
    import errno

    import torch

    config, _ = trained
    run = tmp_path / "run"

    def full(obj, path, *args, **kwargs):
        Path(path).write_bytes(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    assert main(["train", str(config), "--device", "cpu", "--out", str(run)]) == 2
    line = _one_line_naming(capsys.readouterr().err, run / "checkpoint.pt")
    assert re.search(rf"no space left on \S+ writing {re.escape(str(run / 'checkpoint.pt'))}", line), line
    left = sorted(p.name for p in run.iterdir() if not p.name.startswith("."))
    assert left in ([], ["mlflow_run.json"]), left  # no temporary, no checkpoint (the tracked run's note may stay)


# ----------------------------------------------------------------------------- checkpoints that do not fit

def _tampered(checkpoint: Path, folder: Path, change) -> Path:
    import torch

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    change(state)
    out = folder / "run" / "checkpoint.pt"
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, out)
    return out


def _other_width(state: dict) -> None:
    state["config"]["model"]["encoder_channels"] = 32  # the weights are 16 wide


def _wrong_weight(state: dict) -> None:
    import torch

    key = next(k for k, v in state["model"].items() if v.ndim == 2)
    state["model"][key] = torch.zeros(3, 3)
    if state.get("ema") is not None:
        state["ema"][key] = torch.zeros(3, 3)


def test_synth_and_eval_refuse_weights_that_do_not_match_the_config(trained, tmp_path: Path, capsys):
    _, checkpoint = trained
    bad = _tampered(checkpoint, tmp_path, _other_width)
    wav = tmp_path / "out.wav"
    assert main(["synth", str(bad), "hello", "-o", str(wav), "--device", "cpu"]) == 2
    line = _one_line_naming(capsys.readouterr().err, bad)
    assert "do not match the model its config describes" in line and "size mismatch for" in line, line
    assert not wav.exists()
    assert main(["eval", str(bad), "--device", "cpu", "--out", str(tmp_path / "eval")]) == 2
    assert "do not match" in _one_line_naming(capsys.readouterr().err, bad)
    assert bad.is_file()  # nothing deleted


def test_checkpoint_without_a_vocabulary_is_refused(trained, tmp_path: Path, capsys):
    _, checkpoint = trained
    bad = _tampered(checkpoint, tmp_path, lambda state: state.pop("vocab"))
    assert main(["synth", str(bad), "hello", "-o", str(tmp_path / "out.wav"), "--device", "cpu"]) == 2
    line = _one_line_naming(capsys.readouterr().err, bad)
    assert "not a complete wg2 checkpoint: no vocab" in line


def test_truncated_checkpoint_found_by_resume_is_refused_and_kept(trained, tmp_path: Path, monkeypatch, capsys):
    config, checkpoint = trained
    run = tmp_path / "run"
    run.mkdir()
    data = checkpoint.read_bytes()
    (run / "checkpoint.pt").write_bytes(data[:len(data) // 2])
    _no_data(monkeypatch)
    assert main(["train", str(config), "--device", "cpu", "--out", str(run), "--resume"]) == 2
    line = _one_line_naming(capsys.readouterr().err, run / "checkpoint.pt")
    assert "not a readable checkpoint, truncated" in line, line
    assert (run / "checkpoint.pt").read_bytes() == data[:len(data) // 2]
    assert main(["synth", str(run / "checkpoint.pt"), "hello", "-o", str(tmp_path / "o.wav")]) == 2
    assert "truncated" in _one_line_naming(capsys.readouterr().err, run / "checkpoint.pt")


def test_resume_refuses_saved_weights_that_do_not_fit(corpus_dir: Path, tmp_path: Path, capsys):
    config = tmp_path / "run.toml"
    config.write_text(run_toml(str(corpus_dir), str(tmp_path / "cache"), steps=4).replace(
        "checkpoint_every = 4", "checkpoint_every = 2"))
    run = tmp_path / "run"
    assert main(["train", str(config), "--device", "cpu", "--out", str(run)]) == 0
    # as if interrupted at step 2 (same run, same config hash), with its weights damaged
    import torch

    state = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
    state["step"] = 2
    _wrong_weight(state)
    torch.save(state, run / "checkpoint.pt")
    capsys.readouterr()
    code = main(["train", str(config), "--device", "cpu", "--out", str(run), "--resume"])
    err = capsys.readouterr().err
    assert code == 2, err
    line = _one_line_naming(err, run / "checkpoint.pt")
    assert "saved weights or optimizer state do not match" in line and "size mismatch for" in line, line
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 2  # kept as it was


def test_foreign_pickle_message_drops_the_weights_only_advice(tmp_path: Path, capsys):
    import torch

    path = tmp_path / "foreign.pt"
    torch.save({"format": 2, "odd": Foreign()}, path)
    assert main(["synth", str(path), "hello", "-o", str(tmp_path / "o.wav")]) == 2
    line = _one_line_naming(capsys.readouterr().err, path)
    assert "objects other than tensors" in line, line


class Foreign:
    """Pickled into a checkpoint: not something weights_only loading accepts."""


# ----------------------------------------------------------------------------- every checkpoint reader: one line

def _truncated(checkpoint: Path, path: Path) -> Path:
    data = checkpoint.read_bytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[:len(data) // 2])
    return path


def test_search_refuses_a_truncated_checkpoint_in_one_line(trained, tmp_path: Path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    bad = _truncated(trained[1], tmp_path / "cut" / "checkpoint.pt").resolve()
    assert main(["search", str(bad), "--trials", "1", "--device", "cpu"]) == 2
    assert "truncated" in _one_line_naming(capsys.readouterr().err, bad)


def test_search_download_killed_midway_leaves_no_truncated_cached_checkpoint(tmp_path: Path, monkeypatch):
    """The MLflow download goes to a temporary folder and is renamed: a later run must not find half a file
    under the cached name and take it for the model."""
    import mlflow.artifacts

    from experiments.train.store_checkpoints import resolve_checkpoint as resolve_model

    monkeypatch.chdir(tmp_path)

    def half_then_killed(run_id, artifact_path, dst_path, tracking_uri):
        (Path(dst_path) / artifact_path).write_bytes(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt

    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", half_then_killed)
    run_id = "a" * 32
    with pytest.raises(KeyboardInterrupt):
        resolve_model(run_id, f"sqlite:///{tmp_path / 'mlflow.db'}")
    cached = tmp_path / ".cache/wg2/checkpoints" / run_id
    assert not (cached / "checkpoint.pt").exists() and list(cached.iterdir()) == []

    def whole(run_id, artifact_path, dst_path, tracking_uri):
        (Path(dst_path) / artifact_path).write_bytes(b"whole")
        return str(Path(dst_path) / artifact_path)

    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", whole)
    path, _ = resolve_model(run_id, "sqlite:///unused.db")
    assert path.read_bytes() == b"whole" and path == (cached / "checkpoint.pt").resolve()


def test_grid_reading_a_truncated_checkpoint_for_its_autoencoder_run_names_the_file(trained, tmp_path: Path):
    from types import SimpleNamespace

    from experiments.config.run import InputError
    from experiments.grid.cell import _autoencoder_run

    bad = _truncated(trained[1], tmp_path / "run" / "checkpoint.pt")
    with pytest.raises(InputError) as caught:
        _autoencoder_run(SimpleNamespace(autoencoder_run=None, checkpoint=bad))
    text = str(caught.value)
    assert str(bad) in text and "truncated" in text and "weights_only" not in text and "\n" not in text, text
    assert _autoencoder_run(SimpleNamespace(autoencoder_run=None, checkpoint=trained[1])) is None  # a waveform run


@pytest.mark.parametrize("damage", ["truncated", "no model", "wrong weights"])
def test_cached_autoencoder_that_is_damaged_is_refused_in_one_line_naming_it(damage, tmp_path: Path):
    import dataclasses
    from types import SimpleNamespace

    import torch

    from components.autoencoder import AUTOENCODERS
    from components.configs import AutoencoderConfig
    from experiments.config.run import InputError, RunConfig, load_config
    from experiments.train.autoencoder import autoencoder_key, ensure_autoencoder

    base = load_config(None, [])
    config = dataclasses.replace(base, data=dataclasses.replace(base.data, cache_dir=str(tmp_path / "cache")),
                                 autoencoder=AutoencoderConfig(kind="continuous", stride=16, latent_channels=4,
                                                               hidden_channels=8))
    assert isinstance(config, RunConfig)
    dataset = SimpleNamespace(corpus_hash="c0ffee")
    path = tmp_path / "cache" / "autoencoders" / autoencoder_key(config, "c0ffee") / "autoencoder.pt"
    path.parent.mkdir(parents=True)
    weights = AUTOENCODERS.get("continuous")(config.autoencoder).state_dict()
    if damage == "wrong weights":
        weights[next(k for k, v in weights.items() if v.ndim >= 2)] = torch.zeros(3, 3)
    torch.save({"model": weights, "info": {}} if damage != "no model" else {"info": {}}, path)
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(InputError) as caught:
        ensure_autoencoder(config, dataset, torch.device("cpu"), progress=False)
    text = str(caught.value)
    assert text.startswith(str(path)) and "\n" not in text and "weights_only" not in text, text
    assert {"truncated": "truncated", "no model": "no model", "wrong weights": "size mismatch"}[damage] in text, text
    assert path.is_file()  # the user decides; nothing deleted
