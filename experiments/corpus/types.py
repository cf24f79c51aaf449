"""What a corpus is read into: utterances (phonemes, frame durations, audio), the phoneme vocabulary, the dataset
split into train/val/test, and the problems found while reading (experiments.corpus.read)."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

SILENCE = "<sil>"
PAD = "<pad>"
SPLITS = ("train", "val", "test")


@dataclass(eq=False)
class Utterance:
    id: str
    text: str
    phonemes: list[str]  # tokens, silences as SILENCE
    durations: np.ndarray  # int64 (N,), frames per token, sum = n_frames
    audio: np.ndarray  # float32 (n_frames * hop,), mono, in [-1, 1]

    @property
    def n_frames(self) -> int:
        return int(self.durations.sum())

    def __eq__(self, other: object) -> bool:  # arrays compared by value, so Datasets compare with ==
        if not isinstance(other, Utterance):
            return NotImplemented
        return (self.id == other.id and self.text == other.text and self.phonemes == other.phonemes
                and np.array_equal(self.durations, other.durations) and np.array_equal(self.audio, other.audio))


@dataclass
class PhonemeVocab:
    symbols: list[str]  # symbols[0] == PAD, symbols[1] == SILENCE, then sorted
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.symbols[:2] != [PAD, SILENCE] or len(set(self.symbols)) != len(self.symbols):
            raise ValueError(f"a phoneme vocabulary starts with {PAD!r}, {SILENCE!r} and has no duplicates; "
                             f"got {self.symbols[:5]}...")
        self._index = {s: i for i, s in enumerate(self.symbols)}

    @classmethod
    def build(cls, utterances: list[Utterance]) -> PhonemeVocab:
        seen = {p for u in utterances for p in u.phonemes} - {PAD, SILENCE}
        return cls([PAD, SILENCE, *sorted(seen)])

    def __len__(self) -> int:
        return len(self.symbols)

    def speech_ids(self) -> list[int]:
        """Ids of the speech phonemes: every symbol but PAD and SILENCE (the phoneme control swaps these)."""
        return list(range(2, len(self.symbols)))

    def __contains__(self, phoneme: str) -> bool:
        return phoneme in self._index

    def encode(self, phonemes: list[str]) -> np.ndarray:
        """Token ids, int64 (N,); an unknown phoneme is a ValueError naming it."""
        try:
            return np.array([self._index[p] for p in phonemes], dtype=np.int64)
        except KeyError as err:
            known = " ".join(self.symbols[2:12])
            raise ValueError(f"unknown phoneme {err.args[0]!r}: not in this vocabulary of {len(self)} symbols "
                             f"(e.g. {known} ...)") from None

    def decode(self, ids: np.ndarray) -> list[str]:
        return [self.symbols[int(i)] for i in ids]

    def to_list(self) -> list[str]:
        return list(self.symbols)

    @classmethod
    def from_list(cls, symbols: list[str]) -> PhonemeVocab:
        return cls(list(symbols))


@dataclass
class Dataset:
    train: list[Utterance]
    val: list[Utterance]
    test: list[Utterance]
    vocab: PhonemeVocab
    sample_rate: int
    hop_length: int
    corpus_hash: str

    def split(self, name: str) -> list[Utterance]:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; allowed: {', '.join(SPLITS)}")
        return getattr(self, name)


@dataclass
class Problem:
    file: str  # the file at fault, with ":line" for metadata lines
    message: str  # what is wrong and what was expected
    utterance: str | None = None
    kind: str = "other"  # short reason used to count rejects in the summary
    warning: bool = False  # the utterance is usable: kept and warned about, dropped with skip_bad

    def __str__(self) -> str:
        return f"{self.file}: {self.message}"


def split_of(utterance_id: str, val_fraction: float, test_fraction: float) -> str:
    """'train', 'val' or 'test' from a hash of the ID alone, so adding utterances moves no one."""
    u = int.from_bytes(hashlib.sha256(utterance_id.encode("utf-8")).digest()[:8], "big") / 2.0**64
    if u < test_fraction:
        return "test"
    return "val" if u < test_fraction + val_fraction else "train"
