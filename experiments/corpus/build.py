"""`wg2 corpus build`: the default corpus, synthesized offline from the 720 Harvard sentences with espeak-ng.

The output is laid out exactly like user data, so one loader reads both: `metadata.csv`
(`id|text|normalized text`; espeak normalizes text itself, so both text fields are the sentence),
`wavs/ID.wav` (mono, 16-bit PCM, 22050 Hz) and `alignments/ID.TextGrid` (long-format TextGrid in
MFA's style: tiers `words` and `phones` covering the whole file, silences as empty intervals).
IDs are `harvard-001` ... `harvard-720`, the sentence's line in the shipped text file.

Deterministic: every utterance is synthesized by `espeak.synthesize_isolated` in a forked child
of a fresh, never-spoken worker, so no utterance depends on which ran before it in the same
worker; the same command gives byte-identical files (`corpus_content_hash` proves it).

Safe to interrupt: work happens in `<out>.partial` (files written to temporary names, then
renamed); a rerun with the same settings keeps the finished utterances and does the rest. The
marker `wg2_corpus.json` (settings, espeak version, count, content hash) is written last and the
folder renamed to `<out>` only then, so `<out>` is either absent or complete.

Nothing of anyone else's is deleted: `<out>.partial` is created with `wg2_build.json` in it as its first
file (and that file is removed only after `wg2_corpus.json` is written), so a `<out>.partial` holding
neither, and not empty, is not ours and stops the build before any synthesis; so does a `<out>.old`
without `wg2_corpus.json`.
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import time
from pathlib import Path

from experiments.config.disk import device_full, file_lock, no_space_error
from experiments.config.run import InputError

log = logging.getLogger(__name__)

SENTENCES = Path(__file__).parent / "data" / "harvard_sentences.txt"
MARKER = "wg2_corpus.json"
IN_PROGRESS = "wg2_build.json"  # settings of an unfinished build, inside <out>.partial
BUILD_FORMAT = 1  # bump when the files written change for the same settings
SAMPLE_RATE = 22050


def harvard_sentences() -> list[tuple[str, str]]:
    """(ID, sentence) in file order: `harvard-001` is line 1."""
    lines = [line.strip() for line in SENTENCES.read_text(encoding="utf-8").splitlines()]
    return [(f"harvard-{i:03d}", line) for i, line in enumerate(lines, start=1) if line]


def corpus_content_hash(folder: str | Path) -> str:
    """sha256 over every file's relative path and bytes, in sorted order (the markers excluded)."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name not in (MARKER, IN_PROGRESS)):
        data = path.read_bytes()
        digest.update(f"{path.relative_to(folder).as_posix()}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


# ----------------------------------------------------------------------------- one utterance's files

def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _intervals(segments, n_samples: int, silence: str | None) -> list[tuple[int, int, str]]:
    """Segments as (start, end, text) covering [0, n_samples): gaps filled and `silence` written as ""."""
    out, position = [], 0
    for label, start, end in segments:
        if start > position:
            out.append((position, start, ""))
        out.append((start, end, "" if label == silence else label))
        position = end
    if position < n_samples:
        out.append((position, n_samples, ""))
    return out


def textgrid_text(n_samples: int, sample_rate: int, tiers: list[tuple[str, list[tuple[int, int, str]]]]) -> str:
    """A long-format Praat TextGrid of interval tiers given in samples (times written exactly, repr of floats)."""
    def t(sample: int) -> str:
        return repr(sample / sample_rate)

    def quoted(text: str) -> str:
        return '"' + text.replace('"', '""') + '"'

    lines = ['File type = "ooTextFile"', 'Object class = "TextGrid"', "", "xmin = 0.0",
             f"xmax = {t(n_samples)}", "tiers? <exists>", f"size = {len(tiers)}", "item []:"]
    for number, (name, intervals) in enumerate(tiers, start=1):
        lines += [f"    item [{number}]:", '        class = "IntervalTier"', f"        name = {quoted(name)}",
                  "        xmin = 0.0", f"        xmax = {t(n_samples)}", f"        intervals: size = {len(intervals)}"]
        for i, (start, end, text) in enumerate(intervals, start=1):
            lines += [f"        intervals [{i}]:", f"            xmin = {t(start)}", f"            xmax = {t(end)}",
                      f"            text = {quoted(text)}"]
    return "\n".join(lines) + "\n"


def _init_worker(voice: str) -> None:
    import signal

    from experiments.corpus import espeak

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent alone reports it

    espeak.prepare(voice)  # initialised and warmed up once: the template every utterance forks from


def _make_one(job: tuple[str, str, str, str]) -> tuple[str, int]:
    import soundfile

    from experiments.corpus import espeak
    from experiments.corpus.types import SILENCE

    uid, text, folder, voice = job
    spoken = espeak.synthesize_isolated(text, voice)
    n = len(spoken.audio)
    grid = textgrid_text(n, spoken.sample_rate, [("words", _intervals(spoken.words, n, None)),
                                                  ("phones", _intervals(spoken.phones, n, SILENCE))])
    _write_atomic(Path(folder) / "alignments" / f"{uid}.TextGrid", grid.encode("utf-8"))
    wav = Path(folder) / "wavs" / f"{uid}.wav"
    tmp = wav.with_name(wav.name + ".tmp")
    try:
        soundfile.write(str(tmp), spoken.audio, spoken.sample_rate, subtype="PCM_16", format="WAV")
        os.replace(tmp, wav)
    except Exception as err:
        full = device_full(tmp)  # libsndfile's error carries no errno
        tmp.unlink(missing_ok=True)
        if full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(wav)) from err
        raise
    return uid, n


# ----------------------------------------------------------------------------- the corpus

def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _matches(path: Path, settings: dict) -> bool:
    found = _read_json(path)
    return found is not None and all(found.get(k) == v for k, v in settings.items())


def _ours(partial: Path) -> bool:
    """A `<out>.partial` this command made: it carries one of our markers, or holds no file (nothing to lose)."""
    if not partial.is_dir():
        return False
    return ((partial / IN_PROGRESS).is_file() or (partial / MARKER).is_file()
            or not any(p.is_file() or p.is_symlink() for p in partial.rglob("*")))


def _synthesize(jobs: list[tuple[str, str, str, str]], voice: str, workers: int, progress: bool) -> None:
    from tqdm import tqdm

    from evaluation.progress import progress_enabled

    if not jobs:
        return
    n = max(1, min(workers or len(os.sched_getaffinity(0)), len(jobs)))
    # spawn, not fork: a worker must start with an espeak that has never spoken, whatever this process did
    context = multiprocessing.get_context("spawn")
    with context.Pool(n, initializer=_init_worker, initargs=(voice,)) as pool:
        results = pool.imap_unordered(_make_one, jobs, chunksize=4)
        for _ in tqdm(results, total=len(jobs), desc="synthesizing", unit="utt",
                      disable=not progress_enabled(progress)):
            pass


def build_corpus(out: str | Path, voice: str = "en-us", limit: int = 0, workers: int = 0,
                 progress: bool = True) -> Path:
    """Build (or finish, or confirm) the Harvard-sentence corpus at `out`; returns `out`. Two builds of one
    `out` run one after the other (a lock file `<out>.wg2-lock` beside it); a full disk is an InputError naming
    the device and the file, with the partial build's temporaries removed (a rerun continues it)."""
    out = Path(out)
    if limit < 0 or workers < 0:
        raise InputError(f"--limit {limit} / --workers {workers}: expected 0 (all / one per core) or more")
    above = out.parent
    while not above.exists() and above != above.parent:
        above = above.parent
    if not above.is_dir() or not os.access(above, os.W_OK | os.X_OK):
        why = "not a folder" if not above.is_dir() else "not writable"
        raise InputError(f"--out {out}: cannot be created there ({above} is {why})")
    lock = out.with_name(out.name + ".wg2-lock")
    with file_lock(lock, f"another `wg2 corpus build` is building {out}", wait=True):
        try:
            return _build(out, voice, limit, workers, progress)
        except OSError as err:
            partial = out.with_name(out.name + ".partial")
            for stale in partial.rglob("*.tmp") if partial.is_dir() else ():
                stale.unlink(missing_ok=True)
            full = no_space_error(err, err.filename or partial, "free space and rerun: finished utterances are kept")
            if full is not None:
                raise full from None
            raise


def _build(out: Path, voice: str, limit: int, workers: int, progress: bool) -> Path:
    from experiments.corpus import espeak

    sentences = harvard_sentences()
    sentences = sentences[:limit] if limit else sentences
    try:
        version = espeak.check_voice(voice)
    except ValueError as err:
        raise InputError(f"--voice {voice!r}: {err}") from err
    text_hash = hashlib.sha256("\n".join(f"{u}|{t}" for u, t in sentences).encode()).hexdigest()
    settings = {"format": BUILD_FORMAT, "voice": voice, "phoneme_set": espeak.PHONEME_SET,
                "espeak_version": version, "sample_rate": SAMPLE_RATE, "count": len(sentences),
                "sentences_sha256": text_hash}
    if _matches(out / MARKER, settings):
        log.info("%s: complete (%d utterances, voice %s, espeak-ng %s); nothing to do", out, len(sentences), voice,
                 version)
        return out
    if out.exists() and (not out.is_dir() or (not (out / MARKER).is_file() and any(out.iterdir()))):
        raise InputError(f"--out {out}: exists and is not a corpus made by `wg2 corpus build` (no {MARKER}); "
                         "choose another folder or remove it")
    partial = out.with_name(out.name + ".partial")
    old = out.with_name(out.name + ".old")
    # checked before any synthesis: a folder in the way that is not ours stops the build, and is never deleted
    if partial.exists() and not _ours(partial):
        raise InputError(f"{partial}: in the way of building {out} and not a partial build of `wg2 corpus build` "
                         f"(no {IN_PROGRESS} or {MARKER} in it); remove or rename it")
    if old.exists() and not (old.is_dir() and (old / MARKER).is_file()):
        raise InputError(f"{old}: in the way of replacing {out} and not a corpus made by `wg2 corpus build` "
                         f"(no {MARKER} in it); remove or rename it")

    started = time.perf_counter()
    if not _matches(partial / MARKER, settings):  # else: finished, only the final rename was missed
        if partial.exists() and not _matches(partial / IN_PROGRESS, settings):
            shutil.rmtree(partial)  # ours (checked above), for other settings
        if not partial.exists():
            partial.mkdir(parents=True)  # a fresh clone has no corpora/ yet
            _write_atomic(partial / IN_PROGRESS, json.dumps(settings, indent=1).encode())  # first: marks it ours
        for sub in ("wavs", "alignments"):
            (partial / sub).mkdir(parents=True, exist_ok=True)
        for stale in partial.rglob("*.tmp"):
            stale.unlink()
        jobs = [(uid, text, str(partial), voice) for uid, text in sentences
                if not ((partial / "wavs" / f"{uid}.wav").is_file()
                        and (partial / "alignments" / f"{uid}.TextGrid").is_file())]
        _synthesize(jobs, voice, workers, progress)
        metadata = "".join(f"{uid}|{text}|{text}\n" for uid, text in sentences)
        _write_atomic(partial / "metadata.csv", metadata.encode("utf-8"))
        marker = {**settings, "content_hash": corpus_content_hash(partial)}
        _write_atomic(partial / MARKER, (json.dumps(marker, indent=1) + "\n").encode())  # last file written
        (partial / IN_PROGRESS).unlink()  # after the marker: the folder always carries one of them

    if old.exists():
        shutil.rmtree(old)  # ours (checked above): left by a replacement that was interrupted
    replacing = out.exists() and any(out.iterdir())  # an older corpus of ours: it has a marker
    if replacing:
        out.rename(old)
    elif out.exists():
        out.rmdir()
    partial.rename(out)
    if replacing:
        shutil.rmtree(old)
    seconds = time.perf_counter() - started
    log.info("%s: built %d utterances (voice %s, espeak-ng %s) in %.1f s", out, len(sentences), voice, version, seconds)
    return out
