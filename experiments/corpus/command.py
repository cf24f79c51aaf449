"""`wg2 corpus build` (experiments/corpus/build.py does the work) and `wg2 corpus check DIR [--json]` (a corpus
read like training reads it, experiments/corpus/read.py; the report as text, or as JSON on stdout)."""
from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

from experiments.config.run import InputError
from experiments.corpus.build import build_corpus
from experiments.corpus.read import CorpusReport, read_corpus, warn

log = logging.getLogger(__name__)


def report_dict(report: CorpusReport) -> dict:
    """What `wg2 corpus check` reports, as plain JSON types."""
    seconds = sum(len(u.audio) for u in report.utterances) / report.sample_rate
    tokens = Counter(p for u in report.utterances for p in u.phonemes)
    return {
        "root": str(report.root), "alignments": str(report.alignments), "sample_rate": report.sample_rate,
        "hop_length": report.hop_length, "skip_bad": report.skip_bad, "usable": report.usable,
        "listed": report.listed, "usable_utterances": len(report.utterances), "hours": seconds / 3600,
        "utterance_ids": [u.id for u in report.utterances],
        "phoneme_counts": dict(sorted(tokens.items())), "zero_length_tokens": report.zero_length_tokens,
        "problems": [str(p) for p in report.problems], "warnings": list(report.warnings),
    }


def cmd_build(args) -> int:
    """`wg2 corpus build`: see experiments/corpus/build.py."""
    build_corpus(Path(args.out), voice=args.voice, limit=args.limit, workers=args.workers, progress=True)
    return 0


def cmd_check(args) -> int:
    """`wg2 corpus check DIR`: read a corpus like training would and print what it holds (text, or --json)."""
    for option, value, unit in (("--hop-length", args.hop_length, "samples per frame"),
                                ("--sample-rate", args.sample_rate, "Hz")):
        if value < 1:
            raise InputError(f"{option} {value}: expected an integer >= 1 ({unit})")
    report = read_corpus(args.dir, args.alignments, args.sample_rate, args.hop_length, args.skip_bad, progress=True)
    if not getattr(args, "json", False):
        for message in report.warnings:
            warn(message)
        report.raise_if_unusable()
        print(report.summary())
        return 0
    for message in report.warnings:
        log.warning("warning: %s", message)
    print(json.dumps(report_dict(report), indent=2))
    return 0 if report.usable else 2
