"""The offline default corpus: espeak-ng segments, LJSpeech layout, determinism, interrupted builds."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
from praatio import textgrid

from experiments.cli import main
from experiments.config.run import InputError
from experiments.corpus import build
from experiments.corpus.build import MARKER, build_corpus, corpus_content_hash, harvard_sentences
from experiments.corpus.espeak import LINK, synthesize, text_to_phonemes
from experiments.corpus.read import read_corpus
from experiments.corpus.types import SILENCE


def test_segments_cover_the_audio_exactly():
    spoken = synthesize("The birch canoe slid on the smooth planks, and a pen is near.")
    n = len(spoken.audio)
    assert spoken.audio.dtype == np.int16 and spoken.sample_rate == 22050 and n > 22050
    starts = [p.start for p in spoken.phones]
    ends = [p.end for p in spoken.phones]
    assert starts[0] == 0 and ends[-1] == n and starts[1:] == ends[:-1]  # contiguous, no gaps
    assert all(p.end > p.start for p in spoken.phones)
    labels = spoken.phonemes
    assert "" not in labels and all(not (a == b == SILENCE) for a, b in zip(labels, labels[1:]))
    assert labels.count(SILENCE) >= 2  # the comma pause and the end
    for p in spoken.phones:  # pauses are silent audio; phones are not all silent
        if p.label == SILENCE and p.end - p.start > 200:
            assert np.abs(spoken.audio[p.start + 50:p.end - 50]).max() < 100
    assert [w.label for w in spoken.words][:3] == ["The", "birch", "canoe"]
    for w in spoken.words:  # word boundaries are phone boundaries
        assert w.start in starts and w.end in ends


def test_text_to_phonemes_gives_the_corpus_tokens(corpus_dir: Path):
    report = read_corpus(corpus_dir)
    for utterance in report.utterances[:8]:
        assert text_to_phonemes(utterance.text) == utterance.phonemes
    inventory = {p for u in report.utterances for p in u.phonemes}
    assert SILENCE in inventory and "ð" in inventory and any(p.startswith("ˈ") for p in inventory)
    # espeak's voiced linking glide (no IPA name) is its own token, not a silence
    tokens = text_to_phonemes("Pass the evening.")
    i = tokens.index(LINK)
    assert tokens[i - 1:i + 2] == ["ɪ", LINK, "ˈiː"]


def test_layout_matches_ljspeech_and_mfa(corpus_dir: Path):
    sentences = harvard_sentences()
    assert len(sentences) == 720 and sentences[0][0] == "harvard-001" and sentences[-1][0] == "harvard-720"
    lines = (corpus_dir / "metadata.csv").read_text().splitlines()
    assert len(lines) == 24
    uid, text, normalized = lines[0].split("|")
    assert (uid, text, normalized) == ("harvard-001", sentences[0][1], sentences[0][1])
    for line in lines:
        uid = line.split("|")[0]
        info = soundfile.info(str(corpus_dir / "wavs" / f"{uid}.wav"))
        assert (info.samplerate, info.channels, info.subtype, info.format) == (22050, 1, "PCM_16", "WAV")
        grid = textgrid.openTextgrid(str(corpus_dir / "alignments" / f"{uid}.TextGrid"), includeEmptyIntervals=True)
        assert list(grid.tierNames) == ["words", "phones"]
        duration = info.frames / 22050
        for name in grid.tierNames:
            entries = grid.getTier(name).entries
            assert entries[0].start == 0 and abs(entries[-1].end - duration) < 1e-9
            assert all(a.end == b.start for a, b in zip(entries, entries[1:]))  # covers the whole file
        assert "" in [e.label for e in grid.getTier("phones").entries]  # MFA style: silence = empty
    marker = json.loads((corpus_dir / MARKER).read_text())
    assert marker["count"] == 24 and marker["voice"] == "en-us" and marker["phoneme_set"] == "espeak-ng-ipa"
    assert marker["content_hash"] == corpus_content_hash(corpus_dir)
    assert sorted(p.name for p in corpus_dir.iterdir()) == ["alignments", "metadata.csv", "wavs", MARKER]


def test_rebuild_is_byte_identical(corpus_dir: Path, tmp_path: Path):
    """One worker here, two for the fixture: other orders, same bytes for the same utterances."""
    out = build_corpus(tmp_path / "five", limit=5, workers=1, progress=False)
    for sub in ("wavs", "alignments"):
        for path in sorted((out / sub).iterdir()):
            assert path.read_bytes() == (corpus_dir / sub / path.name).read_bytes(), path.name
    again = build_corpus(tmp_path / "five-again", limit=5, workers=2, progress=False)
    assert corpus_content_hash(out) == corpus_content_hash(again)
    assert (out / MARKER).read_bytes() == (again / MARKER).read_bytes()


def test_complete_corpus_is_left_alone(corpus_dir: Path, capsys):
    stamp = (corpus_dir / MARKER).stat().st_mtime_ns
    started = time.perf_counter()
    assert main(["corpus", "build", "--out", str(corpus_dir), "--limit", "24"]) == 0
    assert time.perf_counter() - started < 5
    assert "complete" in capsys.readouterr().err  # a status message: logged on stderr, stdout stays for results
    assert (corpus_dir / MARKER).stat().st_mtime_ns == stamp


def test_quiet_silences_info_messages(corpus_dir: Path, capsys):
    assert main(["corpus", "build", "--out", str(corpus_dir), "--limit", "24", "-q"]) == 0
    captured = capsys.readouterr()
    assert "complete" not in captured.err and "complete" not in captured.out
    assert main(["corpus", "build", "--out", str(corpus_dir), "--limit", "24", "-v"]) == 0
    assert "complete" in capsys.readouterr().err


def test_interrupted_rebuild_never_looks_complete_and_resumes(tmp_path: Path, monkeypatch):
    out = build_corpus(tmp_path / "c", limit=2, workers=1, progress=False)
    real = build._synthesize

    def interrupted(jobs, voice, workers, progress):
        real(jobs[:2], voice, workers, progress)
        raise KeyboardInterrupt  # as if Ctrl-C arrived after two utterances

    monkeypatch.setattr(build, "_synthesize", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_corpus(out, limit=5, workers=1, progress=False)
    # the old corpus is untouched and complete; the new one is only a .partial without a marker
    assert json.loads((out / MARKER).read_text())["count"] == 2
    partial = tmp_path / "c.partial"
    assert not (partial / MARKER).exists() and len(list((partial / "wavs").glob("*.wav"))) == 2

    done: list[int] = []

    def counting(jobs, voice, workers, progress):
        done.append(len(jobs))
        real(jobs, voice, workers, progress)

    monkeypatch.setattr(build, "_synthesize", counting)
    build_corpus(out, limit=5, workers=1, progress=False)
    assert done == [3]  # only what the interrupted run had not finished
    marker = json.loads((out / MARKER).read_text())
    assert marker["count"] == 5 and marker["content_hash"] == corpus_content_hash(out)
    assert not partial.exists() and len(list((out / "wavs").glob("*.wav"))) == 5


def test_refuses_a_folder_it_did_not_make(tmp_path: Path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="not a corpus made by"):
        build_corpus(tmp_path / "mine", limit=1, progress=False)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_unknown_voice_is_an_input_error(tmp_path: Path, capsys):
    assert main(["corpus", "build", "--out", str(tmp_path / "x"), "--voice", "no-such-voice", "--limit", "1"]) == 2
    assert "no-such-voice" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_builds_into_a_folder_whose_parent_does_not_exist_yet(tmp_path: Path):
    """`make quickstart` on a fresh clone: `wg2 corpus build --out corpora/harvard` with no corpora/ folder."""
    out = tmp_path / "corpora" / "harvard"
    assert not out.parent.exists()
    assert main(["corpus", "build", "--out", str(out), "--limit", "1", "-q"]) == 0
    assert (out / MARKER).is_file() and len(list((out / "wavs").glob("*.wav"))) == 1
