"""Issue 24, corpora: `corpus check` on audio clipping would ruin, an empty phones tier and malformed other tiers;
`corpus build` with a bad --out, two builds at once, Ctrl-C; a corpus changed after training (eval, search); two
`wg2 train` on one run folder. Each names the file, utterance or folder."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
from test_corpus import copy_corpus

from experiments.cli import main
from experiments.corpus.textgrid import read_phone_tier

REPO = Path(__file__).resolve().parents[1]


def _check(root: Path, capsys, *extra: str) -> tuple[int, str, str]:
    code = main(["corpus", "check", str(root), *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _first(root: Path) -> str:
    return (root / "metadata.csv").read_text().split("|", 1)[0]


def test_an_empty_phones_tier_ending_at_zero_is_named_not_an_index_error(corpus_dir: Path, tmp_path: Path, capsys):
    root = copy_corpus(corpus_dir, tmp_path / "c", n=2)
    grid = root / "alignments" / f"{_first(root)}.TextGrid"
    grid.write_text('File type = "ooTextFile"\nObject class = "TextGrid"\n\nxmin = 0\nxmax = 0\ntiers? <exists>\n'
                    'size = 1\nitem []:\n    item [1]:\n        class = "IntervalTier"\n        name = "phones"\n'
                    '        xmin = 0\n        xmax = 0\n        intervals: size = 0\n')
    code, _, err = _check(root, capsys)
    assert code == 2 and f"{grid}: its phones tier is empty" in err and "Traceback" not in err, err
    code, out, _ = _check(root, capsys, "--skip-bad")
    assert code == 0 and "1 usable of 2" in out


@pytest.mark.parametrize("kind", ["int16 units", "digital silence"])
def test_audio_that_clipping_would_ruin_is_named(kind: str, corpus_dir: Path, tmp_path: Path, capsys):
    root = copy_corpus(corpus_dir, tmp_path / "c", n=2)
    wav = root / "wavs" / f"{_first(root)}.wav"
    x, rate = soundfile.read(str(wav), dtype="float32")
    bad = x * 32768.0 if kind == "int16 units" else np.zeros_like(x)
    soundfile.write(str(wav), bad, rate, subtype="FLOAT")
    code, _, err = _check(root, capsys)
    expected = "int16 units written as float?" if kind == "int16 units" else "digital silence"
    assert code == 2 and f"{wav}: " in err and expected in err, err
    if kind == "int16 units":  # what reading it used to give: nearly every sample clipped to +-1
        assert np.mean(np.abs(np.clip(bad, -1, 1)) == 1.0) > 0.5


def test_a_malformed_words_tier_is_a_warning_naming_file_and_tier(corpus_dir: Path, tmp_path: Path, capsys):
    root = copy_corpus(corpus_dir, tmp_path / "c", n=2)
    grid = root / "alignments" / f"{_first(root)}.TextGrid"
    text = grid.read_text()
    start = text.index('name = "words"')
    at = text.index("xmin = ", text.index("intervals [1]:", start))
    grid.write_text(text[:at] + "xmin = -0.5" + text[text.index("\n", at):])
    read_phone_tier(grid)  # the phones tier itself is fine
    code, _, err = _check(root, capsys)
    assert code == 0 and str(grid) in err and "tier 'words'" in err and "negative time" in err, err


def test_corpus_check_writes_nothing_where_it_runs(corpus_dir: Path, tmp_path: Path, monkeypatch, capsys):
    from experiments.config.run import DataConfig
    from experiments.corpus.dataset import load_dataset

    root = copy_corpus(corpus_dir, tmp_path / "c", n=3)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert _check(root, capsys)[0] == 0 and _check(root, capsys, "--json")[0] == 0
    assert list(work.iterdir()) == []
    load_dataset(DataConfig(root=str(root), val_fraction=0.0, test_fraction=0.0), progress=False)
    assert (work / ".cache").is_dir()  # what reading for training does: the check must not


# ----------------------------------------------------------------------------- corpus build

def test_corpus_build_out_under_a_file_is_exit_2(tmp_path: Path, capsys):
    (tmp_path / "afile").write_text("keep me")
    assert main(["corpus", "build", "--out", str(tmp_path / "afile" / "c"), "--limit", "1"]) == 2
    err = capsys.readouterr().err
    assert f"--out {tmp_path / 'afile' / 'c'}" in err and "not a folder" in err, err
    assert (tmp_path / "afile").read_text() == "keep me"


def _build(out: Path, limit: int, workers: int = 1) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1"}
    return subprocess.Popen([sys.executable, "-m", "experiments.cli", "corpus", "build", "--out", str(out),
                             "--limit", str(limit), "--workers", str(workers)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, preexec_fn=_default_sigint)


def _default_sigint() -> None:
    """Ctrl-C as in a terminal: a pytest-xdist worker may ignore SIGINT, and an ignored signal stays ignored across
    exec, so Python would not install its KeyboardInterrupt handler in the build and would finish it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_two_corpus_builds_of_one_folder_run_one_after_the_other(tmp_path: Path):
    from experiments.corpus.build import MARKER, corpus_content_hash

    out = tmp_path / "harvard"
    first, second = _build(out, 6), _build(out, 6)
    results = [p.communicate(timeout=240) for p in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], results
    assert all("Traceback" not in err for _, err in results), results
    assert (out / MARKER).is_file() and len(list((out / "wavs").iterdir())) == 6
    assert corpus_content_hash(out)  # complete and readable
    assert any("nothing to do" in err or "waiting" in err for _, err in results), results


def test_ctrl_c_during_corpus_build_prints_no_worker_traceback(tmp_path: Path):
    out = tmp_path / "harvard"
    build = _build(out, 200, workers=2)
    wavs = out.with_name("harvard.partial") / "wavs"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (wavs.is_dir() and len(list(wavs.glob("*.wav"))) >= 4):
        time.sleep(0.05)
    os.killpg(build.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole process group
    _, err = build.communicate(timeout=60)
    assert build.returncode == 130, err
    assert "Traceback" not in err and err.strip().count("\n") == 0, err  # one line, from the parent
    assert "rerun the same command to resume" in err


# ----------------------------------------------------------------------------- a corpus changed after training

def _changed_model(tiny_checkpoint: Path, corpus_dir: Path, tmp_path: Path) -> tuple[Path, list[str]]:
    """A copy of the tiny model whose config reads a copy of its corpus in which every other utterance carries a
    phoneme the model never saw."""
    import torch

    root = copy_corpus(corpus_dir, tmp_path / "changed", n=24)
    changed = []
    for i, line in enumerate((root / "metadata.csv").read_text().splitlines()):
        uid = line.split("|", 1)[0]
        if i % 2:
            grid = root / "alignments" / f"{uid}.TextGrid"
            items, _ = read_phone_tier(grid)
            label = next(lab for *_, lab in items if lab.strip())
            grid.write_text(grid.read_text().replace(f'text = "{label}"', 'text = "ʘ"', 1))
            changed.append(uid)
    state = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    state["config"]["data"]["root"] = str(root)
    state["config"]["data"]["cache_dir"] = str(tmp_path / "cache")
    model = tmp_path / "model" / "checkpoint.pt"
    model.parent.mkdir()
    torch.save(state, model)
    return model, changed


def test_eval_and_search_name_utterances_with_unknown_phonemes_and_can_skip_them(tiny_checkpoint: Path,
                                                                                corpus_dir: Path, tmp_path: Path,
                                                                                capsys):
    model, changed = _changed_model(tiny_checkpoint, corpus_dir, tmp_path)
    eval_argv = ["eval", str(model), "--no-track", "--device", "cpu", "--limit", "1", "--schedules", "manual-6",
                 "--out", str(tmp_path / "eval")]
    assert main(eval_argv) == 2
    err = capsys.readouterr().err
    assert "differs from the one" in err and "phonemes the model never saw" in err and "ʘ" in err, err
    assert any(uid in err for uid in changed) and "--skip-unknown-phonemes" in err and "Traceback" not in err
    assert main(["search", str(model), "--trials", "1", "--steps", "2", "--device", "cpu",
                 "--storage", f"sqlite:///{tmp_path / 'optuna.db'}", "--out", str(tmp_path / "s")]) == 2
    assert "--skip-unknown-phonemes" in capsys.readouterr().err
    assert main([*eval_argv, "--skip-unknown-phonemes"]) == 0
    assert "left out" in capsys.readouterr().err


# ----------------------------------------------------------------------------- two trainings, one folder

def test_a_second_train_on_a_busy_run_folder_is_exit_2(tmp_path: Path, capsys):
    from experiments.config.disk import file_lock
    from experiments.train.command import RUN_LOCK

    run = tmp_path / "run"
    config = tmp_path / "run.toml"
    config.write_text(f'[data]\nroot = "{tmp_path / "none"}"\n')
    with file_lock(run / RUN_LOCK, "held by this test"):  # a first `wg2 train --out run` at work
        assert main(["train", str(config), "--no-track", "--out", str(run)]) == 2
        assert "another `wg2 train` is writing this run folder now" in capsys.readouterr().err
    assert [p.name for p in run.iterdir()] == [RUN_LOCK]  # the refused train wrote nothing
    fresh = tmp_path / "fresh"
    assert main(["train", str(config), "--no-track", "--out", str(fresh)]) == 2  # free: fails on the missing corpus
    assert "another `wg2 train`" not in capsys.readouterr().err
    assert not fresh.exists()  # stopped before any output: the folder it made (for its lock) is gone again
