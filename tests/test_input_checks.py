"""Every numeric config key and command-line number is checked before any work: the CLI exits 2 with a
message naming the file or option, the key, the value and what was expected, and creates nothing."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from experiments.cli import main

# key, bad value (TOML), the expectation the message states
BAD_KEYS = [
    ("train.learning_rate", "nan", "a finite number > 0"),
    ("train.learning_rate", "0.0", "a finite number > 0"),
    ("train.learning_rate", "-1e-3", "a finite number > 0"),
    ("train.grad_clip", "0.0", "a finite number > 0"),
    ("train.grad_clip", "inf", "a finite number > 0"),
    ("train.weight_decay", "-0.01", "a finite number >= 0"),
    ("train.weight_decay", "nan", "a finite number >= 0"),
    ("model.sigma_floor", "nan", "a finite number > 0"),
    ("model.sigma_floor", "inf", "a finite number > 0"),
    ("model.sigma_floor", "0.0", "a finite number > 0"),
    ("train.duration_loss_weight", "-1.0", "a finite number >= 0"),
    ("train.duration_loss_weight", "nan", "a finite number >= 0"),
    ("train.seed", "-1", "an integer >= 0"),
    ("eval.seed", "-1", "an integer >= 0"),
    ("train.warmup_steps", "-5", "an integer >= 0"),
    ("eval.limit", "-54", "an integer >= 0"),
    ("eval.audio_artifacts", "-1", "an integer >= 0"),
    ("eval.metric_workers", "0", "an integer >= 1"),
    ("eval.pace", "nan", "a finite number > 0"),
    ("model.encoder_dropout", "1.0", "a finite number >= 0 and < 1"),
    ("autoencoder.learning_rate", "nan", "a finite number > 0"),
]


@pytest.mark.parametrize("key,value,expected", BAD_KEYS, ids=[f"{k}={v}" for k, v, _ in BAD_KEYS])
def test_bad_numeric_key_in_a_file_or_override_exits_2_naming_file_key_value(key, value, expected, tmp_path: Path,
                                                                              monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    section, name = key.split(".")
    config = tmp_path / "run.toml"
    config.write_text(f"[{section}]\n{name} = {value}\n")
    assert main(["train", str(config), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert re.search(rf"{re.escape(str(config))}: {re.escape(key)} = \S+; expected {re.escape(expected)}", err), err
    good = tmp_path / "good.toml"
    good.write_text("")
    assert main(["train", str(good), "--set", f"{key}={value}", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert f"{key} = " in err and f"expected {expected}" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.toml", "run.toml"]  # nothing created


def test_empty_schedule_list_is_refused(tmp_path: Path, capsys):
    config = tmp_path / "run.toml"
    config.write_text("[eval]\nschedules = []\n")
    assert main(["train", str(config), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert str(config) in err and "eval.schedules is empty; expected at least one schedule name" in err
    assert not (tmp_path / "run").exists()


def test_shipped_configs_pass_the_numeric_checks():
    from experiments.config.run import load_config

    paths = sorted((Path(__file__).resolve().parents[1] / "experiments" / "configs").glob("*.toml"))
    assert paths, "no shipped run configs found"
    for path in paths:
        load_config(path)


def test_a_retired_key_is_read_and_dropped(tmp_path: Path):
    from experiments.config.identity import config_hash
    from experiments.config.run import load_config

    old = tmp_path / "old.toml"  # a config (or checkpoint) from when train.num_workers existed
    old.write_text("[train]\nsteps = 7\nnum_workers = 2\n")
    config = load_config(old)
    assert config.train.steps == 7 and not hasattr(config.train, "num_workers")
    assert config_hash(config) == config_hash(load_config(None, ["train.steps=7", "train.num_workers=0"]))


# ----------------------------------------------------------------------------- command-line numbers

@pytest.mark.parametrize("argv,names", [
    (["--limit", "-54"], "--limit -54: expected 0 (the whole split) or a positive number"),
    (["--workers", "0"], "--workers 0: expected at least 1"),
])
def test_eval_refuses_bad_numbers_before_reading_the_checkpoint(argv, names, tmp_path: Path, capsys):
    # the checkpoint does not even exist: the number is refused first
    assert main(["eval", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "eval"), *argv]) == 2
    err = capsys.readouterr().err
    assert names in err and "missing.pt" not in err, err
    assert not (tmp_path / "eval").exists()


@pytest.mark.parametrize("argv,names", [
    (["hello", "--pace", "0"], "--pace 0.0: expected a finite number > 0"),
    (["hello", "--pace", "-1"], "--pace -1.0: expected a finite number > 0"),
    (["hello", "--pace", "nan"], "--pace nan: expected a finite number > 0"),
    (["hello", "--pace", "inf"], "--pace inf: expected a finite number > 0"),
    (["", "--pace", "1"], "TEXT '': empty; expected something to say"),
    (["   "], "TEXT '   ': empty"),
    (["--phonemes", " "], "--phonemes ' ': empty"),
])
def test_synth_refuses_bad_pace_and_empty_text(argv, names, tmp_path: Path, capsys):
    out = tmp_path / "out.wav"
    assert main(["synth", str(tmp_path / "missing.pt"), *argv, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert names in err, err
    assert not out.exists()
