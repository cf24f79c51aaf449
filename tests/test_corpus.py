"""Reading corpora: durations on the frame grid, silences, resampling, every bad input, splits, the cache."""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile
from praatio import textgrid
from scipy.signal import resample_poly

from experiments.cli import main
from experiments.config.run import DataConfig, InputError
from experiments.corpus import read
from experiments.corpus.dataset import load_dataset
from experiments.corpus.read import read_corpus
from experiments.corpus.textgrid import read_phone_intervals
from experiments.corpus.types import PAD, SILENCE, Dataset, PhonemeVocab, split_of

SR, HOP = 22050, 300


def copy_corpus(src: Path, dst: Path, n: int = 6) -> Path:
    """The first n utterances of a built corpus, as a corpus of their own (safe to damage)."""
    (dst / "wavs").mkdir(parents=True)
    (dst / "alignments").mkdir(parents=True)
    lines = (src / "metadata.csv").read_text().splitlines()[:n]
    (dst / "metadata.csv").write_text("\n".join(lines) + "\n")
    for line in lines:
        uid = line.split("|")[0]
        shutil.copy(src / "wavs" / f"{uid}.wav", dst / "wavs")
        shutil.copy(src / "alignments" / f"{uid}.TextGrid", dst / "alignments")
    return dst


def phone_entries(path: Path) -> list[tuple[float, float, str]]:
    grid = textgrid.openTextgrid(str(path), includeEmptyIntervals=True)
    return [(e.start, e.end, e.label) for e in grid.getTier("phones").entries]


def write_grid(path: Path, phones: list[tuple[float, float, str]], end: float, tier: str = "phones",
               blanks: bool = True) -> None:
    """A TextGrid written by praatio (another writer than ours), in Praat's short format."""
    grid = textgrid.Textgrid()
    grid.addTier(textgrid.IntervalTier(tier, [p for p in phones if p[2] or blanks], 0, end))
    grid.save(str(path), format="short_textgrid", includeBlankSpaces=blanks, reportingMode="silence")


def uid(n: int) -> str:
    return f"harvard-{n:03d}"


# ----------------------------------------------------------------------------- reading the default corpus

def test_check_accepts_the_built_corpus(corpus_dir: Path, capsys):
    assert main(["corpus", "check", str(corpus_dir)]) == 0
    out = capsys.readouterr().out
    assert "utterances: 24 usable of 24 listed" in out and "rejected: 0" in out
    assert "frames per phoneme: min" in out and "zero-length tokens:" in out and SILENCE in out


def test_durations_follow_the_textgrid_on_the_frame_grid(corpus_dir: Path):
    report = read_corpus(corpus_dir)
    assert len(report.utterances) == 24 and not report.problems and not report.warnings
    for u in report.utterances:
        assert u.durations.dtype == np.int64 and (u.durations >= 0).all()
        assert u.audio.dtype == np.float32 and len(u.audio) == u.n_frames * HOP
        assert np.abs(u.audio).max() <= 1.0
        original, rate = soundfile.read(str(corpus_dir / "wavs" / f"{u.id}.wav"), dtype="float32")
        assert u.n_frames == int(np.floor(len(original) / HOP + 0.5))  # the audio settles the last frame
        k = min(len(original), len(u.audio))
        assert np.array_equal(u.audio[:k], original[:k]) and not u.audio[k:].any()  # trimmed or zero-padded
        # every boundary but the last is the TextGrid end time rounded to the grid: no drift
        ends = [e for s, e, label in phone_entries(corpus_dir / "alignments" / f"{u.id}.TextGrid")]
        expected = {int(np.floor(e * SR / HOP + 0.5)) for e in ends}
        assert set(np.cumsum(u.durations)[:-1].tolist()) <= expected


def test_zero_length_tokens_are_kept(corpus_dir: Path, tmp_path: Path):
    root = copy_corpus(corpus_dir, tmp_path / "c", n=1)
    path = root / "alignments" / f"{uid(1)}.TextGrid"
    entries = phone_entries(path)
    # a phone whose end lies well inside a frame: a 1 ms piece cut off its end rounds to nothing
    i = next(i for i, (s, e, lab) in enumerate(entries) if lab and e - s > 0.01 and 0.6 < (e * SR / HOP) % 1 < 0.9)
    s, e, lab = entries[i]
    entries[i:i + 1] = [(s, e - 0.001, lab), (e - 0.001, e, "ZZ0")]
    write_grid(path, entries, entries[-1][1])
    report = read_corpus(root)
    u = report.utterances[0]
    assert u.durations[u.phonemes.index("ZZ0")] == 0 and report.zero_length_tokens >= 1
    assert "kept with duration 0" in report.summary()


def test_silence_labels_gaps_and_tier_name_case(corpus_dir: Path, tmp_path: Path):
    """Empty, `sil`, `sp`, `spn` and plain gaps all read as one merged silence token."""
    root = copy_corpus(corpus_dir, tmp_path / "c", n=4)
    reference = {u.id: u for u in read_corpus(root).utterances}
    for n, style in zip((2, 3, 4), ("sil", "sp+spn", "gaps")):
        path = root / "alignments" / f"{uid(n)}.TextGrid"
        entries = phone_entries(path)
        relabelled = []
        for s, e, lab in entries:
            if lab:
                relabelled.append((s, e, lab))
            elif style == "sil":
                relabelled.append((s, e, "sil"))
            elif style == "sp+spn":  # two adjacent silence labels: merged into one token
                relabelled += [(s, (s + e) / 2, "sp"), ((s + e) / 2, e, "SPN")]
        write_grid(path, relabelled, entries[-1][1], tier="PHONES", blanks=style != "gaps")
        assert any(lab in ("sil", "sp") for *_, lab in relabelled) or style == "gaps"
    for u in read_corpus(root).utterances:
        assert u == reference[u.id], u.id


def test_resampled_and_stereo_audio_warn_once(corpus_dir: Path, tmp_path: Path, capsys):
    root = copy_corpus(corpus_dir, tmp_path / "c", n=4)
    reference = {u.id: u for u in read_corpus(root).utterances}
    x, _ = soundfile.read(str(root / "wavs" / f"{uid(1)}.wav"), dtype="float32")
    soundfile.write(str(root / "wavs" / f"{uid(1)}.wav"), resample_poly(x, 640, 441), 32000, subtype="PCM_16")
    y, _ = soundfile.read(str(root / "wavs" / f"{uid(2)}.wav"), dtype="float32")
    soundfile.write(str(root / "wavs" / f"{uid(2)}.wav"), np.stack([y, 0.5 * y], axis=1), SR, subtype="PCM_16")
    report = read_corpus(root)
    assert len(report.warnings) == 2
    assert "1 of 4 wav files not at 22050 Hz (32000 Hz: 1)" in report.warnings[0]
    assert "1 of 4 wav files not mono (2 channels: 1)" in report.warnings[1]
    got = {u.id: u for u in report.utterances}
    resampled, ref = got[uid(1)], reference[uid(1)]
    assert np.array_equal(resampled.durations[:-1], ref.durations[:-1]) and abs(resampled.n_frames - ref.n_frames) <= 1
    k = min(len(resampled.audio), len(ref.audio))
    assert np.corrcoef(resampled.audio[:k], ref.audio[:k])[0, 1] > 0.99
    assert np.allclose(got[uid(2)].audio, 0.75 * reference[uid(2)].audio, atol=2 / 32768)
    assert main(["corpus", "check", str(root)]) == 0
    err = capsys.readouterr().err
    assert err.count("resampled") == 1 and err.count("downmixed") == 1


def test_mfa_corpus_from_another_voice_passes_check(corpus_dir: Path, tmp_path: Path, capsys):
    """ARPAbet-style labels with stress digits, empty-string silences, 32 kHz audio, 2-field metadata,
    TextGrids in a speaker subfolder of an MFA output folder outside the corpus (--alignments)."""
    root = copy_corpus(corpus_dir, tmp_path / "c", n=5)
    grids = tmp_path / "mfa_output" / "speaker1"
    shutil.move(root / "alignments", grids)
    lines = (root / "metadata.csv").read_text().splitlines()
    (root / "metadata.csv").write_text("".join("|".join(line.split("|")[:2]) + "\n" for line in lines))
    reference = read_corpus(corpus_dir, limit=5).utterances
    inventory = sorted({p for u in reference for p in u.phonemes} - {SILENCE})
    arpa = ["AA", "AE", "AH", "AO", "AW", "AY", "B", "CH", "D", "DH", "EH", "ER", "EY", "F", "G", "HH", "IH"]
    to_arpa = {p: f"{arpa[i % len(arpa)]}{i // len(arpa)}" for i, p in enumerate(inventory)}
    for u in reference:
        path = grids / f"{u.id}.TextGrid"
        entries = [(s, e, to_arpa[lab] if lab else "") for s, e, lab in phone_entries(path)]
        write_grid(path, entries, entries[-1][1])
        x, _ = soundfile.read(str(root / "wavs" / f"{u.id}.wav"), dtype="float32")
        soundfile.write(str(root / "wavs" / f"{u.id}.wav"), resample_poly(x, 640, 441), 32000, subtype="PCM_16")
    assert main(["corpus", "check", str(root), "--alignments", str(tmp_path / "mfa_output")]) == 0
    captured = capsys.readouterr()
    assert "utterances: 5 usable of 5 listed" in captured.out and "AH0" in captured.out
    assert "rejected: 0" in captured.out
    assert "5 of 5 wav files not at 22050 Hz (32000 Hz: 5)" in captured.err
    for got, ref in zip(read_corpus(root, tmp_path / "mfa_output").utterances, reference):
        assert got.phonemes == [to_arpa.get(p, p) for p in ref.phonemes]
        assert got.text == ref.text and abs(got.n_frames - ref.n_frames) <= 1


def test_textgrid_reader_takes_praat_long_short_and_utf16(corpus_dir: Path, tmp_path: Path):
    source = corpus_dir / "alignments" / f"{uid(1)}.TextGrid"
    entries, end = read_phone_intervals(source)
    assert entries == phone_entries(source) and entries[0][0] == 0 and entries[-1][1] == end  # praatio agrees
    short = tmp_path / "short.TextGrid"
    write_grid(short, entries, end)
    assert "intervals [" not in short.read_text() and read_phone_intervals(short) == (entries, end)
    utf16 = tmp_path / "utf16.TextGrid"
    utf16.write_bytes(source.read_text().replace('text = "ð"', 'text = "say ""2"""', 1).encode("utf-16"))
    labels = [label for *_, label in read_phone_intervals(utf16)[0]]
    assert 'say "2"' in labels and len(labels) == len(entries)
    truncated = tmp_path / "truncated.TextGrid"
    truncated.write_text(source.read_text()[: len(source.read_text()) // 2])
    with pytest.raises(ValueError, match="unreadable TextGrid"):
        read_phone_intervals(truncated)


# ----------------------------------------------------------------------------- bad input

def test_every_problem_is_listed_with_its_file(corpus_dir: Path, tmp_path: Path, capsys):
    root = copy_corpus(corpus_dir, tmp_path / "c", n=6)
    (root / "wavs" / f"{uid(2)}.wav").unlink()
    (root / "alignments" / f"{uid(3)}.TextGrid").unlink()
    x, _ = soundfile.read(str(root / "wavs" / f"{uid(4)}.wav"), dtype="int16")
    soundfile.write(str(root / "wavs" / f"{uid(4)}.wav"), x[:-2 * HOP], SR, subtype="PCM_16")  # 2 frames short
    (root / "wavs" / f"{uid(5)}.wav").write_bytes(b"this is not audio")
    (root / "alignments" / f"{uid(6)}.TextGrid").write_text("garbage\n")
    with open(root / "metadata.csv", "a") as handle:
        handle.write("harvard-999|one|two|three\n")
    report = read_corpus(root)
    assert not report.usable and [u.id for u in report.utterances] == [uid(1)]
    assert len(report.problems) == 6

    assert main(["corpus", "check", str(root)]) == 2
    err = capsys.readouterr().err
    expected = [f"{uid(2)}.wav: missing (listed on metadata.csv line 2)",
                f"{uid(3)}.TextGrid: missing: no {uid(3)}.TextGrid anywhere under",
                f"{uid(4)}.TextGrid: ends at", "2.0 frames apart; expected within one frame (300 samples at 22050 Hz)",
                f"{uid(5)}.wav: unreadable audio", f"{uid(6)}.TextGrid: unreadable TextGrid",
                "metadata.csv:7: 4 fields; expected 2 or 3 separated by '|'", "6 problem(s)", "--skip-bad"]
    for text in expected:
        assert text in err, text

    assert main(["corpus", "check", str(root), "--skip-bad"]) == 0
    out = capsys.readouterr().out
    assert "utterances: 1 usable of 7 listed" in out
    assert "rejected: 6 problem(s), skipped (--skip-bad)" in out and "missing wav: 1" in out


def test_within_one_frame_is_settled_by_the_audio(corpus_dir: Path, tmp_path: Path):
    root = copy_corpus(corpus_dir, tmp_path / "c", n=1)
    x, _ = soundfile.read(str(root / "wavs" / f"{uid(1)}.wav"), dtype="int16")
    soundfile.write(str(root / "wavs" / f"{uid(1)}.wav"), x[:-250], SR, subtype="PCM_16")
    u = read_corpus(root).utterances[0]
    assert u.n_frames == int(np.floor((len(x) - 250) / HOP + 0.5)) and len(u.audio) == u.n_frames * HOP


@pytest.mark.parametrize("content, message", [("", "empty: no utterance lines"), ("\n\n", "empty: no utterance")])
def test_empty_metadata_is_unusable(corpus_dir: Path, tmp_path: Path, capsys, content: str, message: str):
    root = copy_corpus(corpus_dir, tmp_path / "c", n=1)
    (root / "metadata.csv").write_text(content)
    assert main(["corpus", "check", str(root), "--skip-bad"]) == 2
    assert message in capsys.readouterr().err


def test_missing_folders_name_what_was_expected(tmp_path: Path):
    with pytest.raises(InputError, match="no such corpus folder"):
        read_corpus(tmp_path / "nowhere")
    (tmp_path / "c").mkdir()
    with pytest.raises(InputError, match="metadata.csv: missing"):
        read_corpus(tmp_path / "c")
    (tmp_path / "c" / "metadata.csv").write_text("a|b\n")
    with pytest.raises(InputError, match="no such alignments folder"):
        read_corpus(tmp_path / "c")


def test_missing_phones_tier(corpus_dir: Path, tmp_path: Path):
    root = copy_corpus(corpus_dir, tmp_path / "c", n=1)
    path = root / "alignments" / f"{uid(1)}.TextGrid"
    entries = phone_entries(path)
    write_grid(path, entries, entries[-1][1], tier="segments")
    (problem,) = read_corpus(root).problems
    assert str(problem).endswith("no tier named 'phones' (tiers: segments)")


# ----------------------------------------------------------------------------- datasets, splits, cache

def test_load_dataset_splits_and_vocabulary(data_config: DataConfig, capsys):
    data = load_dataset(data_config, progress=False)
    everyone = read_corpus(data_config.root).utterances
    planned = {u.id: split_of(u.id, data_config.val_fraction, data_config.test_fraction) for u in everyone}
    assert [u.id for u in data.train] == [i for i, name in planned.items() if name == "train"]
    assert len(data.val) >= 2  # the fixture promises a few
    assert data.vocab.symbols[:2] == [PAD, SILENCE] and data.vocab.symbols[2:] == sorted(data.vocab.symbols[2:])
    assert set(data.vocab.symbols[2:]) == {p for u in data.train for p in u.phonemes} - {SILENCE}
    kept = {u.id for u in data.val + data.test}
    for u in everyone:  # val/test: kept exactly when every phoneme was seen in training
        if planned[u.id] != "train":
            assert (u.id in kept) == all(p in data.vocab for p in u.phonemes), u.id
            assert u.id not in kept or planned[u.id] == ("val" if u in data.val else "test")
    dropped = 24 - len(data.train) - len(kept)
    assert dropped > 0 and "holding phonemes never seen in the training split" in capsys.readouterr().err
    assert (data.sample_rate, data.hop_length, len(data.corpus_hash)) == (SR, HOP, 64)
    ids_of = data.vocab.encode(data.train[0].phonemes)
    assert ids_of.dtype == np.int64 and data.vocab.decode(ids_of) == data.train[0].phonemes
    assert PhonemeVocab.from_list(data.vocab.to_list()) == data.vocab
    with pytest.raises(ValueError, match="unknown phoneme 'QQ9'"):
        data.vocab.encode(["ð", "QQ9"])
    with pytest.raises(ValueError, match="unknown split"):
        data.split("dev")


def test_split_is_stable_when_utterances_are_added(data_config: DataConfig):
    small = load_dataset(dataclasses.replace(data_config, max_utterances=12), progress=False)
    full = load_dataset(data_config, progress=False)
    where = {u.id: name for name in ("train", "val", "test") for u in full.split(name)}
    assert [u.id for u in small.train] == [u.id for u in full.train if u.id <= uid(12)]
    for name in ("train", "val", "test"):
        for u in small.split(name):  # a bigger training split only keeps more of val/test
            assert where[u.id] == name
    counts = {name: 0 for name in ("train", "val", "test")}
    for i in range(4000):
        counts[split_of(f"utt-{i}", 0.1, 0.05)] += 1
    assert 300 < counts["val"] < 500 and 120 < counts["test"] < 280
    assert all(split_of(f"utt-{i}", 0.1, 0.05) == split_of(f"utt-{i}", 0.1, 0.05) for i in range(100))


def test_cache_is_reused_and_invalidated(corpus_dir: Path, tmp_path: Path, monkeypatch):
    root = copy_corpus(corpus_dir, tmp_path / "c", n=8)
    cfg = DataConfig(root=str(root), cache_dir=str(tmp_path / "cache"), val_fraction=0.2, test_fraction=0.1)
    first = load_dataset(cfg, progress=False)
    entries = list((tmp_path / "cache" / "corpus").iterdir())
    assert len(entries) == 1

    uncached = load_dataset(dataclasses.replace(cfg, cache_dir=""), progress=False)
    assert isinstance(first, Dataset) and uncached == first  # from cache == from scratch

    reads = []
    real = read._read_one
    monkeypatch.setattr(read, "_read_one", lambda *a: reads.append(a) or real(*a))
    assert load_dataset(cfg, progress=False) == first and reads == []  # served from the cache

    path = root / "wavs" / f"{uid(1)}.wav"
    x, _ = soundfile.read(str(path), dtype="int16")
    soundfile.write(str(path), (x // 2).astype(np.int16), SR, subtype="PCM_16")  # same length, new content
    changed = load_dataset(cfg, progress=False)
    assert len(reads) == 8 and len(list((tmp_path / "cache" / "corpus").iterdir())) == 2
    assert changed.corpus_hash != first.corpus_hash
    old = next(u for u in first.train + first.val + first.test if u.id == uid(1))
    new = next(u for u in changed.train + changed.val + changed.test if u.id == uid(1))
    assert np.allclose(new.audio, np.floor(old.audio * 32768 / 2) / 32768)


def test_val_utterances_with_unseen_phonemes_are_dropped(corpus_dir: Path, tmp_path: Path, data_config):
    root = copy_corpus(corpus_dir, tmp_path / "c", n=24)
    cfg = dataclasses.replace(data_config, root=str(root))
    before = load_dataset(cfg, progress=False)
    victim = before.val[0]
    path = root / "alignments" / f"{victim.id}.TextGrid"
    entries = phone_entries(path)
    entries = [(s, e, "QQ1" if i == 3 else lab) for i, (s, e, lab) in enumerate(entries)]
    write_grid(path, entries, entries[-1][1])
    after = load_dataset(cfg, progress=False)
    assert [u.id for u in after.val] == [u.id for u in before.val[1:]]
    assert "QQ1" not in after.vocab


def test_bad_corpus_fails_load_unless_skip_bad(corpus_dir: Path, tmp_path: Path, capsys):
    root = copy_corpus(corpus_dir, tmp_path / "c", n=6)
    (root / "wavs" / f"{uid(6)}.wav").unlink()
    cfg = DataConfig(root=str(root), cache_dir=str(tmp_path / "cache"), val_fraction=0.0, test_fraction=0.0)
    with pytest.raises(InputError, match=f"{uid(6)}.wav: missing"):
        load_dataset(cfg, progress=False)
    data = load_dataset(dataclasses.replace(cfg, skip_bad=True), progress=False)
    assert [u.id for u in data.train] == [uid(n) for n in range(1, 6)]
    assert "skipped 1 unusable utterance(s)" in capsys.readouterr().err


def test_missing_default_corpus_says_how_to_build_it(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match="wg2 corpus build"):
        load_dataset(DataConfig(cache_dir=str(tmp_path / "cache")))
