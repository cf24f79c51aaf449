"""The dataset training and evaluation use: a corpus (read by experiments.corpus.read) split into train/val/test
with a vocabulary from the training split, its processed audio and durations cached on disk, keyed by the corpus
content and the data config."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

from experiments.config.disk import no_space_error, pid_alive
from experiments.config.run import DataConfig, InputError
from experiments.corpus.read import CorpusReport, content_hash, plan_corpus, read_plan, warn
from experiments.corpus.types import SPLITS, Dataset, PhonemeVocab, Utterance, split_of

CACHE_VERSION = 3  # bump when the processing below changes what a cache file holds


def _cache_key(content: str, cfg: DataConfig) -> str:
    processing = {"version": CACHE_VERSION, "content": content, "sample_rate": cfg.sample_rate,
                  "hop_length": cfg.hop_length, "skip_bad": cfg.skip_bad, "max_utterances": cfg.max_utterances}
    return hashlib.sha256(json.dumps(processing, sort_keys=True).encode()).hexdigest()[:24]


def _write_cache(folder: Path, report: CorpusReport) -> None:
    """One folder per key: audio.npy (all audio, float32, concatenated), durations.npy, index.json.
    Written under a temporary name `<key>.tmp-<pid>` and renamed, so a reader never sees half of it; the
    temporary is removed on any failure (a full disk: an InputError naming the device and the file), and dead
    processes' temporaries are removed first."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    for stale in folder.parent.glob("*.tmp-*"):
        pid = stale.name.rsplit(".tmp-", 1)[1]
        if pid.isdigit() and stale.is_dir() and not pid_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    target = tmp
    try:
        tmp.mkdir(parents=True)
        us = report.utterances
        target = tmp / "audio.npy"
        np.save(target, np.concatenate([u.audio for u in us]).astype(np.float32))
        target = tmp / "durations.npy"
        np.save(target, np.concatenate([u.durations for u in us]).astype(np.int64))
        index = {"ids": [u.id for u in us], "texts": [u.text for u in us], "phonemes": [u.phonemes for u in us],
                 "samples": [len(u.audio) for u in us], "warnings": report.warnings,
                 "skipped": [str(p) for p in report.problems]}
        target = tmp / "index.json"
        target.write_text(json.dumps(index, ensure_ascii=False))
    except BaseException as err:
        full = no_space_error(err, target, "free space or set data.cache_dir elsewhere, and rerun")
        shutil.rmtree(tmp, ignore_errors=True)
        if full is not None:
            raise full from None
        raise
    try:
        os.replace(tmp, folder)
    except OSError:  # another process finished the same key first: theirs is identical
        shutil.rmtree(tmp, ignore_errors=True)


def _read_cache(folder: Path) -> tuple[list[Utterance], list[str], list[str]]:
    index = json.loads((folder / "index.json").read_text())
    audio = np.load(folder / "audio.npy", mmap_mode="c")  # copy-on-write: shared pages, writable views
    durations = np.load(folder / "durations.npy")
    utterances, a, d = [], 0, 0
    for uid, text, phonemes, n in zip(index["ids"], index["texts"], index["phonemes"], index["samples"]):
        utterances.append(Utterance(uid, text, phonemes, durations[d:d + len(phonemes)], audio[a:a + n]))
        a, d = a + n, d + len(phonemes)
    return utterances, index["warnings"], index["skipped"]


def _default_root_missing(cfg: DataConfig) -> bool:
    return cfg.root == DataConfig().root and not Path(cfg.root).exists()


def load_dataset(cfg: DataConfig, progress: bool = True) -> Dataset:
    """The corpus of `cfg` as train/val/test utterances and a vocabulary from the training split.
    Processed data is cached under cfg.cache_dir, keyed by the corpus content and the data config."""
    if _default_root_missing(cfg):
        raise InputError(f"data.root = {cfg.root!r} does not exist: build the default corpus first with "
                         "`wg2 corpus build`, or set data.root to an LJSpeech-layout corpus")
    plan = plan_corpus(cfg.root, cfg.alignments or None, cfg.max_utterances)
    corpus_hash = content_hash(plan)
    folder = Path(cfg.cache_dir) / "corpus" / _cache_key(corpus_hash, cfg) if cfg.cache_dir else None
    if folder is None or not (folder / "index.json").is_file():
        report = read_plan(plan, cfg.sample_rate, cfg.hop_length, cfg.skip_bad, progress)
        report.raise_if_unusable()
        if folder is None:
            utterances, warnings, skipped = report.utterances, report.warnings, [str(p) for p in report.problems]
        else:
            _write_cache(folder, report)
    if folder is not None:
        utterances, warnings, skipped = _read_cache(folder)
    for message in warnings:
        warn(message)
    if skipped:
        warn(f"skipped {len(skipped)} unusable utterance(s) (data.skip_bad = true); first: {skipped[0]}")
    parts: dict[str, list[Utterance]] = {name: [] for name in SPLITS}
    for u in utterances:
        parts[split_of(u.id, cfg.val_fraction, cfg.test_fraction)].append(u)
    if not parts["train"]:
        raise InputError(f"data.root = {cfg.root!r}: no training utterances among {len(utterances)} "
                         f"(val_fraction {cfg.val_fraction}, test_fraction {cfg.test_fraction})")
    vocab = PhonemeVocab.build(parts["train"])
    for name in ("val", "test"):
        kept = [u for u in parts[name] if all(p in vocab for p in u.phonemes)]
        if len(kept) < len(parts[name]):
            warn(f"dropped {len(parts[name]) - len(kept)} {name} utterance(s) holding phonemes "
                  "never seen in the training split")
        parts[name] = kept
    return Dataset(parts["train"], parts["val"], parts["test"], vocab, cfg.sample_rate, cfg.hop_length,
                   corpus_hash)
