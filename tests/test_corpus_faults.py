"""Nothing lost, nothing silently wrong: corpus faults that used to pass `wg2 corpus check` (NaN/Inf audio,
broken TextGrid intervals, labels with spaces, silence-only utterances) and MLflow runs left RUNNING or a store
that cannot be written. Each test feeds the bad input and checks the message names the file (and interval) and
what was expected."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile

from experiments.cli import main
from experiments.corpus import read_corpus
from experiments.textgrid import read_phone_tier

SR = 22050


def uid(n: int) -> str:
    return f"harvard-{n:03d}"


def copy_corpus(src: Path, dst: Path, n: int = 3) -> Path:
    """The first n utterances of the built corpus, as a corpus of their own (safe to damage)."""
    (dst / "wavs").mkdir(parents=True)
    (dst / "alignments").mkdir(parents=True)
    lines = (src / "metadata.csv").read_text().splitlines()[:n]
    (dst / "metadata.csv").write_text("\n".join(lines) + "\n")
    for line in lines:
        name = line.split("|")[0]
        shutil.copy(src / "wavs" / f"{name}.wav", dst / "wavs")
        shutil.copy(src / "alignments" / f"{name}.TextGrid", dst / "alignments")
    return dst


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
