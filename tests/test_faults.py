"""Nothing lost, nothing silently wrong: bad input, folders in the way, full disks, dead processes' leftovers.
Each case feeds the fault through the real CLI where practical and checks the exit code (2), that the message
names the file, key or value and what was expected, and that nothing of the user's was deleted."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiments import corpus_build
from experiments.cli import main
from experiments.corpus_build import IN_PROGRESS, MARKER


# ----------------------------------------------------------------------------- `wg2 corpus build`: folders in the way

def _no_synthesis(monkeypatch) -> list:
    """Replace synthesis with a recorder: a refused build must stop before any of it."""
    calls: list = []
    monkeypatch.setattr(corpus_build, "_synthesize", lambda jobs, *a: calls.append(len(jobs)))
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

    monkeypatch.setattr(corpus_build, "_synthesize", interrupted)
    with pytest.raises(KeyboardInterrupt):
        corpus_build.build_corpus(out, limit=2, workers=1, progress=False)
    assert seen == [sorted([IN_PROGRESS, "wavs", "alignments"])]
    assert json.loads((partial / IN_PROGRESS).read_text())["count"] == 2
    (partial / "wavs" / "harvard-001.wav").write_bytes(b"half")  # a leftover of the interrupted build
    calls = _no_synthesis(monkeypatch)
    corpus_build.build_corpus(out, limit=1, workers=1, progress=False)  # other settings: the partial is ours
    assert calls == [1] and not partial.exists()
    marker = json.loads((out / MARKER).read_text())
    assert marker["count"] == 1 and marker["content_hash"] == corpus_build.corpus_content_hash(out)
    assert not (out / IN_PROGRESS).exists() and not (out / "wavs" / "harvard-001.wav").exists()
