"""espeak-ng as a speech front end and voice, through its C API (ctypes) with phoneme events.

The `espeakng-loader` wheel ships libespeak-ng and its data, so nothing is installed system-wide;
its data path is always passed to `espeak_Initialize`. Synthesis runs synchronously
(AUDIO_OUTPUT_SYNCHRONOUS) and every phoneme event carries the exact sample where the phoneme
starts, so phone boundaries are exact, not estimated.

Labels are espeak-ng's IPA phoneme names (initialised with espeakINITIALIZE_PHONEME_IPA), stress
marks kept as part of the vowel (`ˈæ`, `ˌɪ`, `ə`), like ARPAbet's stress digits. The event holds
8 bytes of name; every en-us phoneme fits (the longest, `ˈɑːɹ`, is exactly 8 bytes of UTF-8); a
name cut inside a character raises ValueError. espeak gives an empty IPA name to its pauses
(`_`, `_:`, `_!`) and to one voiced linking glide (`;`, as in "the‿evening"); the audio tells them
apart: a silent segment is a pause and becomes SILENCE, a voiced one becomes the token LINK (`‿`,
the IPA linking mark). Segments of zero samples (phonemes espeak elides) are dropped, and
adjacent silences merged, so the phone list covers [0, len(audio)) without gaps or overlaps.

Determinism: espeak-ng keeps static state between utterances inside the library (e.g. the pitch
flutter index in wavegen.c), which `espeak_Terminate`/`espeak_Initialize` do not reset, so the
same text sounds a few samples different after other text. Phoneme labels do not change.
`prepare` turns a fresh process into a template: espeak initialised and a fixed warm-up sentence
spoken (it also does espeak's lazy first-utterance set-up once). `synthesize_isolated` forks a child
of that template for every utterance, so each starts from the same state: the corpus build uses it
to get byte-identical files whatever the order in which workers take the sentences.

The library is process-global C state: one initialised engine per process, all calls under a lock,
the ctypes callback object kept alive for the life of the process.
"""
from __future__ import annotations

import ctypes
import os
import pickle
import threading
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from experiments.corpus.types import SILENCE

LINK = "‿"  # espeak's voiced linking glide `;`, which has no IPA name of its own
PHONEME_SET = "espeak-ng-ipa"  # the name recorded with a built corpus

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INIT_PHONEME_EVENTS = 0x0001
_INIT_PHONEME_IPA = 0x0002
_INIT_DONT_EXIT = 0x8000
_CHARS_UTF8 = 1
_POS_CHARACTER = 1
_EVENT_LIST_TERMINATED, _EVENT_WORD, _EVENT_PHONEME = 0, 1, 7
_SILENT_MEAN_ABS = 16.0  # int16 units: espeak's pauses are exact zeros, its glides average > 800


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):  # espeak_EVENT from speak_lib.h
    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
                ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", _EventId)]


_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                                  ctypes.POINTER(_Event))


class Segment(NamedTuple):
    label: str  # a phoneme (SILENCE for pauses) or a word's text
    start: int  # first sample
    end: int  # one past the last sample


@dataclass
class SpokenText:
    text: str
    voice: str
    audio: np.ndarray  # int16 (n,), mono
    sample_rate: int
    phones: list[Segment]  # contiguous, covering [0, n); silences labelled SILENCE
    words: list[Segment]  # in order, not overlapping; the gaps between them are silence

    @property
    def phonemes(self) -> list[str]:
        return [p.label for p in self.phones]


class _Engine:
    """One initialised libespeak-ng: the synthesis callback collects audio chunks and events."""

    def __init__(self) -> None:
        import espeakng_loader

        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_Info.argtypes = [ctypes.POINTER(ctypes.c_char_p)]
        lib.espeak_Info.restype = ctypes.c_char_p
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                     ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        options = _INIT_PHONEME_EVENTS | _INIT_PHONEME_IPA | _INIT_DONT_EXIT
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(), options)
        if rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed (returned {rate}) with data at "
                               f"{espeakng_loader.get_data_path()}")
        self.lib, self.sample_rate = lib, rate
        self.voice: str | None = None
        self.version = lib.espeak_Info(None).decode()
        self.template_voice: str | None = None  # set by prepare(): the state children fork from
        self.spoken = False  # True once this process has synthesized other than the warm-up
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[int, int, int, int, bytes]] = []
        self._callback = _SynthCallback(self._on_audio)  # kept referenced: C holds the pointer
        lib.espeak_SetSynthCallback(self._callback)

    def _on_audio(self, wav, n_samples, events) -> int:
        if n_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, (n_samples,)).copy())
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            e = events[i]
            if e.type in (_EVENT_WORD, _EVENT_PHONEME):
                name = e.id.string if e.type == _EVENT_PHONEME else b""
                self._events.append((e.type, e.sample, e.text_position, e.length, name))
            i += 1
        return 0  # 0 = continue synthesis

    def set_voice(self, voice: str) -> None:
        if voice != self.voice:
            if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise ValueError(f"espeak-ng has no voice {voice!r} (e.g. en-us, en-gb, de, fr)")
            self.voice = voice

    def speak(self, text: str) -> tuple[np.ndarray, list[tuple[int, int, int, int, bytes]]]:
        self._chunks, self._events = [], []
        data = text.encode("utf-8")
        self.lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        self.lib.espeak_Synchronize()
        audio = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        return audio.astype(np.int16, copy=False), self._events


_LOCK = threading.Lock()
_ENGINE: _Engine | None = None


def _engine(voice: str) -> _Engine:
    """The process's engine with `voice` selected; call with _LOCK held."""
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = _Engine()
    _ENGINE.set_voice(voice)
    return _ENGINE


_WARM_UP = "Warm up."


def prepare(voice: str = "en-us") -> str:
    """Make this process a template for `synthesize_isolated`: espeak initialised with `voice` and the
    fixed warm-up sentence spoken. Returns espeak's version."""
    with _LOCK:
        engine = _engine(voice)
        if engine.template_voice is None and not engine.spoken:
            engine.speak(_WARM_UP)
            engine.spoken, engine.template_voice = False, voice
        return engine.version


def check_voice(voice: str) -> str:
    """Raise ValueError for a voice espeak-ng does not have (speaks nothing); returns espeak's version."""
    with _LOCK:
        return _engine(voice).version


def _label(name: bytes) -> str:
    try:
        return name.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"espeak-ng phoneme name {name!r} was cut at 8 bytes; this voice needs "
                         "mnemonic labels") from err


def _segments(text: str, audio: np.ndarray, events: list) -> tuple[list[Segment], list[Segment]]:
    """Phone and word segments from the event stream (see the module docstring for the rules)."""
    n = len(audio)
    # (label, start, word index or -1) per phoneme event, in event order; words by text span
    marks: list[tuple[str, int, int]] = []
    words: list[str] = []
    for kind, sample, text_pos, length, name in events:
        if kind == _EVENT_WORD:
            words.append(text[text_pos - 1: text_pos - 1 + length])
        else:
            start = min(max(sample, marks[-1][1] if marks else 0), n)  # never backwards, never past the end
            marks.append((_label(name), start, len(words) - 1))
    if not marks or marks[0][1] > 0:
        marks.insert(0, ("", 0, -1))  # leading silence before the first phoneme
    phones: list[tuple[str, int, int, int]] = []  # label, start, end, word
    for i, (label, start, word) in enumerate(marks):
        end = marks[i + 1][1] if i + 1 < len(marks) else n
        end = max(end, start)
        if end == start:
            continue  # elided by espeak: no audio of its own
        if label == "":
            silent = float(np.abs(audio[start:end].astype(np.float32)).mean()) < _SILENT_MEAN_ABS
            label = SILENCE if silent else LINK
        if label == SILENCE:
            word = -1
            if phones and phones[-1][0] == SILENCE:
                phones[-1] = (SILENCE, phones[-1][1], end, -1)
                continue
        phones.append((label, start, end, word))
    word_segments: list[tuple[int, int, int]] = []  # (word index, start, end)
    for _phone, start, end, word in phones:
        if word < 0:
            continue
        if word_segments and word_segments[-1][0] == word:
            word_segments[-1] = (word, word_segments[-1][1], end)
        else:
            word_segments.append((word, start, end))
    return ([Segment(p[0], p[1], p[2]) for p in phones],
            [Segment(words[w], s, e) for w, s, e in word_segments])


def _synthesize_unlocked(engine: _Engine, text: str, voice: str) -> SpokenText:
    audio, events = engine.speak(text)
    engine.spoken = True
    if len(audio) == 0:
        raise ValueError(f"espeak-ng produced no audio for {text!r}")
    phones, words = _segments(text, audio, events)
    return SpokenText(text, voice, audio, engine.sample_rate, phones, words)


def synthesize(text: str, voice: str = "en-us") -> SpokenText:
    """Say `text` in this process: audio (int16, 22050 Hz) with exact phone and word segments."""
    if not text.strip():
        raise ValueError("nothing to say: the text is empty")
    with _LOCK:
        return _synthesize_unlocked(_engine(voice), text, voice)


def synthesize_isolated(text: str, voice: str = "en-us") -> SpokenText:
    """Like `synthesize`, but in a forked child of this process, so the audio never depends on what
    was said before. This process must be a template (`prepare(voice)`) that has not spoken since."""
    if not text.strip():
        raise ValueError("nothing to say: the text is empty")
    with _LOCK:
        engine = _engine(voice)
        if engine.spoken or engine.template_voice != voice:
            raise RuntimeError(f"synthesize_isolated needs a process made a template by prepare({voice!r}) "
                               "that has not spoken since (its carried-over state would leak into every "
                               "child); use a fresh worker process")
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: speak once, send the result, exit without running the parent's cleanup
            code = 0
            try:
                os.close(read_fd)
                try:
                    payload = pickle.dumps(_synthesize_unlocked(engine, text, voice))
                except Exception as err:  # noqa: BLE001 - handed to the parent, which raises it
                    payload, code = pickle.dumps(err), 1
                with os.fdopen(write_fd, "wb") as pipe:
                    pipe.write(payload)
            finally:
                os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        payload = pipe.read()  # read to EOF before waiting: the child blocks on a full pipe
    _, status = os.waitpid(pid, 0)
    result = pickle.loads(payload) if payload else RuntimeError(  # noqa: S301 - our own forked child wrote it
        f"espeak child process died (wait status {status}) saying {text!r}")
    if isinstance(result, BaseException):
        raise result
    return result


def text_to_phonemes(text: str, voice: str = "en-us") -> list[str]:
    """The phoneme tokens the corpus build writes for `text` (same synthesis path, same silence rules),
    so a model trained on a built corpus can say new sentences."""
    return synthesize(text, voice).phonemes
