"""Issue 24, numbers, output paths and grids: each bad value is exit 2 naming the option (or file) and what was
expected, before the expensive work (synthesis, timing, a product of axes) starts, and nothing is written."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from experiments.cli import main

MISSING_MODEL = "no-such-model.pt"  # the checks below come before the checkpoint is read


def _exit_2(argv: list[str], capsys, *names: str) -> str:
    assert main(argv) == 2, argv
    err = capsys.readouterr().err
    assert all(n in err for n in names), (argv, err)
    assert "Traceback" not in err
    return err


# ----------------------------------------------------------------------------- synth

@pytest.mark.parametrize("out,expected", [("afile/x.wav", "not writable"), ("existing_dir", "a folder"),
                                          ("out.mp3", "expected a name ending in .wav")])
def test_synth_output_path_is_checked_before_anything(out: str, expected: str, tmp_path: Path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("keep me")
    (tmp_path / "existing_dir").mkdir()
    _exit_2(["synth", MISSING_MODEL, "hello", "-o", out], capsys, out, expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "existing_dir"]  # no temporary wav left


@pytest.mark.parametrize("argv,names", [
    (["--pace", "1e-7"], ["--pace 1e-07", "from 0.1 to 10"]),
    (["--pace", "nan"], ["--pace nan"]),
    (["--phonemes", "<pad> <pad>"], ["<pad> is the model's internal padding"]),
    (["--schedule", "linear-5000000000"], ["linear-5000000000", "at most 10000"]),
])
def test_synth_numbers_and_tokens_are_checked_before_the_model_is_read(argv, names, tmp_path: Path, capsys):
    text = [] if "--phonemes" in argv else ["hello"]
    _exit_2(["synth", MISSING_MODEL, *text, "-o", str(tmp_path / "x.wav"), *argv], capsys, *names)
    assert not (tmp_path / "x.wav").exists()


@pytest.mark.parametrize("content,expected", [
    ("[1" + "0" * 400 + ", 0.1]", "too large for a number"),
    (None, "not text (a binary file?); expected JSON or TOML text"),
    ("[" + ", ".join(["0.001"] * 10001) + "]", "10001 betas; at most 10000"),
])
def test_bad_schedule_files_are_named(content, expected: str, tmp_path: Path, capsys):
    path = tmp_path / "s.json"
    if content is None:
        path.write_bytes(bytes(range(256)) * 4)
    else:
        path.write_text(content)
    _exit_2(["synth", MISSING_MODEL, "hello", "-o", str(tmp_path / "x.wav"), "--schedule", str(path)], capsys,
            str(path), expected)


def test_synth_refuses_text_with_nothing_to_say_and_texts_over_the_limit(tiny_checkpoint: Path, tmp_path: Path,
                                                                          capsys):
    from experiments.infer.synth import MAX_PHONEMES

    out = tmp_path / "x.wav"
    _exit_2(["synth", str(tiny_checkpoint), "... ?!", "-o", str(out), "--device", "cpu"], capsys,
            "nothing to say in it")
    long_text = " ".join(["the birch canoe slid on the smooth planks"] * 60)  # ~2000 phonemes
    start = time.monotonic()
    _exit_2(["synth", str(tiny_checkpoint), long_text, "-o", str(out), "--device", "cpu"], capsys,
            f"at most {MAX_PHONEMES}", "split the text")
    assert time.monotonic() - start < 15 and not out.exists()
    # a slow pace over a normal text: the length limit, stated, before sampling
    _exit_2(["synth", str(tiny_checkpoint), "the birch canoe slid on the smooth planks " * 8, "-o", str(out),
             "--device", "cpu", "--pace", "0.1"], capsys, "at most 120 s are synthesized at once")


# ----------------------------------------------------------------------------- bench

@pytest.mark.parametrize("argv,names", [
    (["--seconds", "nan"], ["--seconds nan"]), (["--seconds", "0"], ["--seconds 0.0", "> 0"]),
    (["--batch-size", "0"], ["--batch-size 0", ">= 1"]), (["--window-frames", "-4"], ["--window-frames -4"]),
    (["--presets", ","], ["--presets ','", "no preset named"]),
])
def test_bench_numbers_are_checked_before_timing(argv, names, capsys):
    _exit_2(["bench", "--device", "cpu", *argv], capsys, *names)


@pytest.mark.parametrize("command", ["bench", "search"])
def test_bench_and_search_check_their_out_folder_first(command: str, tmp_path: Path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("keep me")
    argv = ["bench", "--device", "cpu", "--out", "afile/b"] if command == "bench" else \
        ["search", MISSING_MODEL, "--out", "afile/s"]
    _exit_2(argv, capsys, "afile/")
    assert (tmp_path / "afile").read_text() == "keep me" and not (tmp_path / "optuna.db").exists()


# ----------------------------------------------------------------------------- corpus check, environment

@pytest.mark.parametrize("option,value", [("--hop-length", "0"), ("--sample-rate", "0"), ("--sample-rate", "-22050")])
def test_corpus_check_numbers(option: str, value: str, tmp_path: Path, capsys):
    _exit_2(["corpus", "check", str(tmp_path), option, value], capsys, f"{option} {value}", "expected an integer >= 1")


def test_a_bad_stale_seconds_variable_is_exit_2_naming_it(tmp_path: Path, monkeypatch, capsys):
    import experiments.tracking.claims  # importing it with the bad value set used to raise ValueError

    monkeypatch.setenv("WG2_STALE_SECONDS", "abc")
    config = tmp_path / "run.toml"
    config.write_text(f'[data]\nroot = "{tmp_path / "none"}"\n')
    _exit_2(["train", str(config), "--out", str(tmp_path / "run")], capsys, "WG2_STALE_SECONDS='abc'")
    assert experiments.tracking.claims.STALE_SECONDS == 600.0


# ----------------------------------------------------------------------------- grids

def _grid(tmp_path: Path, axes: str) -> Path:
    path = tmp_path / "g.toml"
    path.write_text(f'name = "g"\ndescription = "q?"\n[axes]\n{axes}\n')
    return path


def test_a_huge_grid_is_refused_from_its_axis_counts_within_seconds(tmp_path: Path, capsys):
    values = "[" + ", ".join(str(i) for i in range(1, 101)) + "]"
    grid = _grid(tmp_path, f'"train.steps" = {values}\n"train.warmup_steps" = {values}\n"train.log_every" = {values}')
    start = time.monotonic()
    err = _exit_2(["grid", str(grid), "--dry-run"], capsys, "1000000 cells (100 x 100 x 100 x 1 seed(s))",
                  "over the limit of 1000", "--max-cells 1000000")
    assert time.monotonic() - start < 15 and "rerun" not in err
    _exit_2(["compare", str(grid), "--out", str(tmp_path / "r")], capsys, "over the limit of 1000")
    # the limit is overridable: a 2 x 2 grid with --max-cells 3 is refused, with 4 listed
    small = _grid(tmp_path, '"train.steps" = [1, 2]\n"train.warmup_steps" = [0, 1]')
    _exit_2(["grid", str(small), "--dry-run", "--max-cells", "3"], capsys, "4 cells")
    assert main(["grid", str(small), "--dry-run", "--max-cells", "4"]) == 0


def test_an_axis_given_quoted_and_unquoted_is_refused(tmp_path: Path, capsys):
    from experiments.grid.file import load_grid

    grid = _grid(tmp_path, '"model.upsampler" = ["gaussian", "repeat"]\nmodel.upsampler = ["repeat"]')
    _exit_2(["grid", str(grid), "--dry-run"], capsys, "axes.model.upsampler is given twice")
    single = _grid(tmp_path, '"model.upsampler" = ["gaussian", "repeat"]')
    assert len(load_grid(single).cells) == 2  # what one axis gives; the old reader silently gave 1 for the above


def test_ctrl_c_during_a_dry_run_does_not_say_rerun_to_resume(tmp_path: Path, monkeypatch, capsys):
    import experiments.grid.run as grid_module

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(grid_module, "load_grid", interrupted)
    grid = _grid(tmp_path, '"model.upsampler" = ["gaussian"]')
    assert main(["grid", str(grid), "--dry-run"]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err.lower() and "rerun" not in err, err
    assert main(["grid", str(grid)]) == 130  # a real run: resuming is what the user wants to know
    assert "rerun the same command to resume" in capsys.readouterr().err
