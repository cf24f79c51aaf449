"""Reading any corpus in LJSpeech layout with Montreal-Forced-Aligner-style TextGrids.

Layout: `metadata.csv` (`id|text` or `id|text|normalized text`, no quoting), `wavs/ID.wav`, and
`ID.TextGrid` anywhere under the alignments folder (default `<root>/alignments`) with an interval
tier named `phones` (any case). The default corpus of `wg2 corpus build` and a real LJSpeech + MFA
download are read by the same code.

Tokens: the labels `""`, `sil`, `sp`, `spn` (any case), gaps between intervals and `<sil>` itself
become SILENCE, adjacent silences merged; every other label is kept as written (ARPAbet `AH0`,
IPA `ˈæ`, ...).

Durations (frames of `hop_length` samples at `sample_rate`): each token's END time is rounded to
the frame grid, round(end * sr / hop), and durations are the differences of those boundaries, so
rounding never accumulates. The last boundary is settled by the audio: n_frames =
round(n_samples / hop) (a final partial frame of at least half a hop counts), the last token
absorbs the difference (a TextGrid more than one frame longer or shorter than its audio is an
error), and the audio is trimmed or zero-padded to exactly n_frames * hop samples. Tokens whose
boundaries round to the same frame keep duration 0: the phoneme sequence then matches what the
front end produces at synthesis time, and the Gaussian upsampler gives a zero-length token no frames.

Audio at another rate is resampled (scipy.signal.resample_poly) and stereo is downmixed (channel
mean), each announced by one warning line per corpus with a count. Problems (missing or unreadable
files, a bad metadata line, a length mismatch) are all collected: by default they make the corpus
unusable and are listed together; with skip_bad those utterances are dropped and counted.

Nothing is lost and nothing is silently wrong: NaN or ±Inf samples (named with the samples and
seconds holding them), phone intervals with a negative time, a start after the end, overlapping
another interval, or a label holding a space ("ð 0" is rejected: a phone label is one symbol) are
Problems naming the file and the interval. A silence-only utterance (every label a silence) is a
warning: kept by default, dropped and counted with skip_bad.
"""
from __future__ import annotations

import hashlib
import logging
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from experiments.config.run import InputError
from experiments.corpus.textgrid import interval_problems, other_tier_problems, phone_tier, read_tiers
from experiments.corpus.types import SILENCE, Problem, Utterance

SILENCE_LABELS = {"", "sil", "sp", "spn", SILENCE}  # compared lower-cased and stripped


def warn(message: str) -> None:
    logging.getLogger(__name__).warning("warning: %s", message)


# ----------------------------------------------------------------------------- finding the files

@dataclass
class _Entry:
    id: str
    text: str
    line: int
    wav: Path
    textgrids: list[Path]


@dataclass
class _Plan:
    """What a corpus folder lists and where each utterance's files are, before any audio is read."""
    root: Path
    alignments: Path
    metadata: Path
    entries: list[_Entry]
    problems: list[Problem]
    listed: int  # utterance lines in metadata.csv, good or bad


def plan_corpus(root: str | Path, alignments: str | Path | None, limit: int = 0) -> _Plan:
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: no such corpus folder (expected metadata.csv and wavs/ inside)")
    metadata = root / "metadata.csv"
    align = Path(alignments) if alignments else root / "alignments"
    if not metadata.is_file():
        raise InputError(f"{metadata}: missing (expected lines id|text|normalized text, LJSpeech layout)")
    if not align.is_dir():
        raise InputError(f"{align}: no such alignments folder (expected ID.TextGrid files from MFA; "
                         "point --alignments / data.alignments at them)")
    problems: list[Problem] = []
    try:
        lines = metadata.read_bytes().decode("utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{metadata}: unreadable ({err}); expected UTF-8 text") from err
    rows: dict[str, tuple[str, int]] = {}
    listed = 0
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        listed += 1
        fields = line.split("|")
        where = f"{metadata}:{number}"
        if len(fields) not in (2, 3):
            problems.append(Problem(where, f"{len(fields)} fields; expected 2 or 3 separated by '|' "
                                    "(id|text|normalized text)", None, "bad metadata line"))
            continue
        uid = fields[0].strip()
        text = fields[2].strip() if len(fields) == 3 and fields[2].strip() else fields[1].strip()
        if not uid:
            problems.append(Problem(where, "empty utterance ID in the first field", None, "bad metadata line"))
        elif uid in rows:
            problems.append(Problem(where, f"duplicate ID {uid!r} (first on line {rows[uid][1]})", uid,
                                    "bad metadata line"))
        else:
            rows[uid] = (text, number)
    if listed == 0:
        problems.append(Problem(str(metadata), "empty: no utterance lines (expected id|text|normalized text)",
                                None, "empty metadata"))
    ids = sorted(rows)[:limit] if limit > 0 else sorted(rows)
    grids: dict[str, list[Path]] = {}
    wanted = set(ids)
    for path in sorted(align.rglob("*")):
        if path.suffix.lower() == ".textgrid" and path.stem in wanted and path.is_file():
            grids.setdefault(path.stem, []).append(path)
    entries = [_Entry(uid, rows[uid][0], rows[uid][1], root / "wavs" / f"{uid}.wav", grids.get(uid, []))
               for uid in ids]
    return _Plan(root, align, metadata, entries, problems, listed)


def _file_problems(entry: _Entry, plan: _Plan) -> list[Problem]:
    found = []
    if not entry.wav.is_file():
        found.append(Problem(str(entry.wav), f"missing (listed on {plan.metadata.name} line {entry.line})",
                             entry.id, "missing wav"))
    if not entry.textgrids:
        found.append(Problem(str(plan.alignments / f"{entry.id}.TextGrid"),
                             f"missing: no {entry.id}.TextGrid anywhere under {plan.alignments}",
                             entry.id, "missing TextGrid"))
    elif len(entry.textgrids) > 1:
        found.append(Problem(str(entry.textgrids[0]), "ambiguous: also " + ", ".join(map(str, entry.textgrids[1:])),
                             entry.id, "ambiguous TextGrid"))
    return found


def content_hash(plan: _Plan) -> str:
    """sha256 over the bytes of metadata.csv and of every selected utterance's wav and TextGrid."""
    digest = hashlib.sha256()
    digest.update(plan.metadata.read_bytes())
    for entry in plan.entries:
        for path in [entry.wav, *entry.textgrids]:
            digest.update(f"\0{entry.id}\0{path.suffix}\0".encode())
            try:
                with open(path, "rb") as handle:
                    while chunk := handle.read(1 << 20):
                        digest.update(chunk)
            except OSError:
                digest.update(b"<unreadable>")
    return digest.hexdigest()


# ----------------------------------------------------------------------------- reading one utterance

@dataclass
class _Read:
    utterance: Utterance | None
    problems: list[Problem]
    rate: int = 0
    channels: int = 1
    zero_length: int = 0


def _tokens(entries: list[tuple[float, float, str]], end_time: float) -> tuple[list[str], list[float]]:
    """Tokens and their end times; gaps and silence labels become one merged SILENCE."""
    tokens: list[str] = []
    ends: list[float] = []

    def add(token: str, end: float) -> None:
        if token == SILENCE and tokens and tokens[-1] == SILENCE:
            ends[-1] = end
        else:
            tokens.append(token)
            ends.append(end)

    previous = 0.0
    for start, end, label in entries:
        if start > previous + 1e-7:
            add(SILENCE, start)
        label = label.strip()
        add(SILENCE if label.lower() in SILENCE_LABELS else label, end)
        previous = max(previous, end)
    if end_time > previous + 1e-7:
        add(SILENCE, end_time)
    return tokens, ends


def _read_one(entry: _Entry, sample_rate: int, hop: int) -> _Read:
    import soundfile

    wav_path, grid_path = entry.wav, entry.textgrids[0]
    try:
        audio, rate = soundfile.read(str(wav_path), dtype="float32", always_2d=True)  # (n, channels)
    except Exception as err:  # noqa: BLE001 - libsndfile errors are plain RuntimeErrors with its message
        return _Read(None, [Problem(str(wav_path), f"unreadable audio ({err}); expected a wav file",
                                    entry.id, "unreadable wav")])
    bad = _nonfinite_problems(audio, rate, wav_path, entry.id) or _level_problems(audio, wav_path, entry.id)
    if bad:
        return _Read(None, bad, rate, audio.shape[1])
    channels = audio.shape[1]
    audio = audio.mean(axis=1) if channels > 1 else audio[:, 0]  # (n,)
    if rate != sample_rate:
        from scipy.signal import resample_poly

        g = math.gcd(rate, sample_rate)
        audio = resample_poly(audio, sample_rate // g, rate // g).astype(np.float32)
    audio = np.clip(audio, -1.0, 1.0)
    try:
        tiers, end_time = read_tiers(grid_path)
        entries = phone_tier(tiers)
    except ValueError as err:
        return _Read(None, [Problem(str(grid_path), str(err), entry.id, "unreadable TextGrid")], rate, channels)
    bad_intervals = interval_problems(entries)
    if bad_intervals:
        return _Read(None, [Problem(str(grid_path), m, entry.id, "bad interval") for m in bad_intervals],
                     rate, channels)
    entries = sorted(entries)
    tokens, ends = _tokens(entries, end_time)
    if not tokens:
        return _Read(None, [Problem(str(grid_path), f"its phones tier is empty (no intervals) and the TextGrid ends "
                                    f"at {end_time:g} s; expected intervals covering the audio", entry.id, "empty")],
                     rate, channels)
    n_frames = int(math.floor(len(audio) / hop + 0.5))
    frames_off = abs(ends[-1] - len(audio) / sample_rate) * sample_rate / hop if ends else 0.0
    if frames_off > 1.0:
        msg = (f"ends at {ends[-1]:.3f} s but {wav_path.name} lasts {len(audio) / sample_rate:.3f} s: "
               f"{frames_off:.1f} frames apart; expected within one frame ({hop} samples at {sample_rate} Hz)")
        return _Read(None, [Problem(str(grid_path), msg, entry.id, "length mismatch")], rate, channels)
    if n_frames < 1:
        what = f"shorter than half a frame ({len(audio)} samples)"
        return _Read(None, [Problem(str(grid_path), what, entry.id, "empty")], rate, channels)
    warned = [Problem(str(grid_path), m, entry.id, "bad tier", warning=True) for m in other_tier_problems(tiers)]
    if all(t == SILENCE for t in tokens):
        labels = sorted({label.strip() for *_, label in entries})
        warned.append(Problem(str(grid_path), f"silence only: every phone label of its {len(entries)} interval(s) "
                              f"is a silence ({', '.join(map(repr, labels)) or 'no intervals'}); expected at "
                              "least one phone", entry.id, "silence only", warning=True))
    bounds = np.floor(np.asarray(ends) * sample_rate / hop + 0.5).astype(np.int64)
    bounds = np.maximum.accumulate(np.minimum(bounds, n_frames))
    bounds[-1] = n_frames  # the audio settles the last frame
    durations = np.diff(bounds, prepend=0)  # int64 (N,)
    n_samples = n_frames * hop
    audio = audio[:n_samples] if len(audio) >= n_samples else np.pad(audio, (0, n_samples - len(audio)))
    utterance = Utterance(entry.id, entry.text, tokens, durations, np.ascontiguousarray(audio, np.float32))
    return _Read(utterance, warned, rate, channels, int((durations == 0).sum()))


LEVEL_LIMIT = 2.0  # a peak above this is not float audio in [-1, 1] (a little over 1 is clipped as before)


def _level_problems(audio: np.ndarray, path: Path, uid: str) -> list[Problem]:
    """Audio that clipping would ruin: float samples far outside [-1, 1] (int16 units written as float: every
    sample would clip to +-1), and digital silence (every sample 0)."""
    peak = float(np.abs(audio).max(initial=0.0))
    if peak > LEVEL_LIMIT:
        return [Problem(str(path), f"samples reach {peak:.6g} (int16 units written as float?); expected float samples "
                        "in [-1, 1]: rescale it (divide by 32768)", uid, "out-of-range audio")]
    if peak == 0.0 and len(audio):
        return [Problem(str(path), "digital silence: every sample is 0; expected speech", uid, "silent audio")]
    return []


def _nonfinite_problems(audio: np.ndarray, rate: int, path: Path, uid: str) -> list[Problem]:
    """One Problem per kind of non-finite sample (NaN, +Inf, -Inf) in `audio` (n, channels), naming the
    interval holding them; clipping would hide an Inf and a NaN kills training far from this file."""
    found = []
    for name, mask in (("NaN", np.isnan(audio)), ("+Inf", np.isposinf(audio)), ("-Inf", np.isneginf(audio))):
        where = np.flatnonzero(mask.any(axis=1))
        if len(where):
            first, last = int(where[0]), int(where[-1])
            found.append(Problem(str(path), f"{len(where)} {name} sample(s) in samples {first}..{last} "
                                 f"[{first / rate:.3f} s, {last / rate:.3f} s]; expected finite samples in [-1, 1]",
                                 uid, "non-finite audio"))
    return found


# ----------------------------------------------------------------------------- the whole corpus

@dataclass
class CorpusReport:
    root: Path
    alignments: Path
    sample_rate: int
    hop_length: int
    skip_bad: bool
    listed: int  # utterance lines in metadata.csv
    utterances: list[Utterance]  # the usable ones, sorted by ID
    problems: list[Problem]
    warnings: list[str]
    zero_length_tokens: int

    @property
    def usable(self) -> bool:
        return bool(self.utterances) and (self.skip_bad or not self.problems)

    def error_message(self) -> str:
        head = (f"{self.root}: {len(self.problems)} problem(s)"
                + ("" if self.utterances else "; no usable utterances"))
        hint = "" if self.skip_bad else " (--skip-bad / data.skip_bad = true drops those utterances)"
        return head + hint + ":\n" + "\n".join(f"  - {p}" for p in self.problems)

    def raise_if_unusable(self) -> None:
        if not self.usable:
            raise InputError(self.error_message())

    def summary(self) -> str:
        hours = sum(len(u.audio) for u in self.utterances) / self.sample_rate / 3600
        tokens = Counter(p for u in self.utterances for p in u.phonemes)
        phones = [p for p in sorted(tokens) if p != SILENCE]
        frames = np.concatenate([u.durations for u in self.utterances]) if self.utterances else np.zeros(0, np.int64)
        is_sil = np.array([p == SILENCE for u in self.utterances for p in u.phonemes], dtype=bool)

        def stats(values: np.ndarray) -> str:
            if len(values) == 0:
                return "none"
            return f"min {values.min()}, median {float(np.median(values)):g}, max {values.max()}"

        n_tokens = len(frames)
        lines = [
            f"corpus: {self.root} (alignments: {self.alignments})",
            f"utterances: {len(self.utterances)} usable of {self.listed} listed, {hours:.3f} hours "
            f"at {self.sample_rate} Hz, frames of {self.hop_length} samples",
            f"phoneme inventory: {len(phones)} phonemes + {SILENCE}: {' '.join(phones)}",
            f"frames per phoneme: {stats(frames[~is_sil])}; per silence: {stats(frames[is_sil])}",
            f"zero-length tokens: {self.zero_length_tokens} of {n_tokens} (boundaries rounding to the same frame); "
            "kept with duration 0",
        ]
        kinds = Counter(p.kind for p in self.problems)
        reasons = ", ".join(f"{k}: {n}" for k, n in sorted(kinds.items()))
        if not self.problems:
            lines.append("rejected: 0")
        else:
            action = "skipped (--skip-bad)" if self.skip_bad else "corpus unusable until fixed"
            lines.append(f"rejected: {len(self.problems)} problem(s), {action} ({reasons})")
            lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


def read_plan(plan: _Plan, sample_rate: int, hop_length: int, skip_bad: bool, progress: bool) -> CorpusReport:
    from tqdm import tqdm

    from evaluation.progress import progress_enabled

    problems = list(plan.problems)
    todo: list[_Entry] = []
    for entry in plan.entries:
        found = _file_problems(entry, plan)
        problems += found
        if not found:
            todo.append(entry)
    bar = tqdm(total=len(todo), desc="reading corpus", unit="utt", disable=not progress_enabled(progress), leave=False)
    results = []
    for e in todo:
        results.append(_read_one(e, sample_rate, hop_length))
        bar.update()
    bar.close()
    warnings = []
    utterances = []
    for r in results:
        errors = [p for p in r.problems if not p.warning]
        notes = [p for p in r.problems if p.warning]
        problems += errors
        if skip_bad and notes:
            problems += notes  # dropped: counted with the rejects
        else:
            warnings += [f"{p} (kept; --skip-bad / data.skip_bad = true drops it)" for p in notes]
            if r.utterance is not None:
                utterances.append(r.utterance)
    read = [r for r in results if r.rate]
    other_rates = Counter(r.rate for r in read if r.rate != sample_rate)
    if other_rates:
        rates = ", ".join(f"{rate} Hz: {n}" for rate, n in sorted(other_rates.items()))
        warnings.append(f"{sum(other_rates.values())} of {len(read)} wav files not at {sample_rate} Hz ({rates}); "
                        f"resampled to {sample_rate} Hz with scipy.signal.resample_poly")
    multi = Counter(r.channels for r in read if r.channels > 1)
    if multi:
        chans = ", ".join(f"{c} channels: {n}" for c, n in sorted(multi.items()))
        warnings.append(f"{sum(multi.values())} of {len(read)} wav files not mono ({chans}); "
                        "downmixed to mono (mean of channels)")
    return CorpusReport(plan.root, plan.alignments, sample_rate, hop_length, skip_bad, plan.listed, utterances,
                        problems, warnings, sum(r.zero_length for r in results))


def read_corpus(root: str | Path, alignments: str | Path | None = None, sample_rate: int = 22050,
                hop_length: int = 300, skip_bad: bool = False, limit: int = 0,
                progress: bool = False) -> CorpusReport:
    """Read every utterance (or the first `limit` by sorted ID) and collect every problem; never raises
    for a bad utterance (see CorpusReport.usable), only when the folder, metadata.csv or alignments are missing."""
    return read_plan(plan_corpus(root, alignments, limit), sample_rate, hop_length, skip_bad, progress)
