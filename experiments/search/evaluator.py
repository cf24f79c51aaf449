"""Scoring one schedule: the fixed utterance subset synthesized with ground-truth durations and fixed noise
per utterance (common random numbers), scored with every aligned metric; and the model's identity."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from evaluation.metrics import Missing
from evaluation.pool import ScoreJob, score_many
from experiments.infer import synth
from experiments.config.run import InputError
from experiments.config.identity import config_hash
from experiments.corpus.dataset import load_dataset
from experiments.infer.evaluate import pick_utterances
from experiments.search.spec import SPLIT, SearchSpec


@dataclass
class MetricSummary:
    mean: float | None  # over the utterances where the metric exists
    n: int
    n_missing: int
    reason: str | None  # the first missing value's reason


def summarize_scores(scores: list[dict]) -> dict[str, MetricSummary]:
    out = {}
    for name in dict.fromkeys(k for s in scores for k in s):
        values = [s[name] for s in scores if name in s]
        present = [float(v) for v in values if not isinstance(v, Missing)]
        reasons = [v.reason for v in values if isinstance(v, Missing)]
        out[name] = MetricSummary(float(np.mean(present)) if present else None, len(present), len(reasons),
                                  reasons[0] if reasons else None)
    return out


def per_utterance(scores: list[dict]) -> dict[str, list[float | None]]:
    """Each metric's value per utterance, in the evaluator's utterance order (None where missing): what paired
    comparisons between schedules are made on (same utterance, same noise seed)."""
    names = dict.fromkeys(k for s in scores for k in s)
    return {name: [None if name not in s or isinstance(s[name], Missing) else float(s[name]) for s in scores]
            for name in names}


class Evaluator:
    """Synthesizes the fixed utterance subset with a schedule (ground-truth durations, fixed noise per
    utterance) and scores it with every aligned metric."""

    def __init__(self, loaded, utterances: list, seed: int):
        self.loaded, self.utterances, self.seed = loaded, utterances, seed
        self.ids = [loaded.vocab.encode(u.phonemes) for u in utterances]

    def noise_seed(self, index: int) -> int:
        return self.seed * 1_000_003 + index

    def batches(self, betas: np.ndarray, size: int) -> Iterator[tuple[int, list[dict]]]:
        """(utterances done, their scores) after each batch of `size` utterances."""
        n = len(self.utterances)
        for start in range(0, n, max(1, size)):
            jobs = []
            for i in range(start, min(n, start + size)):
                u = self.utterances[i]
                out = synth.synthesize(self.loaded, [self.ids[i]], betas, [u.durations], seed=self.noise_seed(i))[0]
                jobs.append(ScoreJob(u.id, u.audio, out.audio, self.loaded.sample_rate, aligned=True))
            yield min(n, start + size), score_many(jobs, 1, progress=False)

    def scores(self, betas: np.ndarray) -> list[dict]:
        """Every utterance's scores with this schedule, in utterance order."""
        return [s for _, batch in self.batches(betas, len(self.utterances)) for s in batch]

    def evaluate(self, betas: np.ndarray) -> dict[str, MetricSummary]:
        return summarize_scores(self.scores(betas))


def load_evaluator(spec: SearchSpec, progress: bool = False) -> Evaluator:
    loaded = synth.load_checkpoint(spec.checkpoint, spec.device)
    dataset = load_dataset(loaded.config.data, progress=progress)
    utterances = pick_utterances(dataset.split(SPLIT), spec.limit_utterances, spec.seed)
    if not utterances:
        raise InputError(f"{spec.checkpoint}: the model's corpus {loaded.config.data.root} has no {SPLIT} utterances")
    return Evaluator(loaded, utterances, spec.seed)


@dataclass(frozen=True)
class ModelInfo:
    checkpoint: str
    sha256: str
    config_hash: str
    step: int
    mlflow_run_id: str | None


def model_info(spec: SearchSpec, loaded) -> ModelInfo:
    digest = hashlib.sha256()
    with open(spec.checkpoint, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return ModelInfo(spec.checkpoint, digest.hexdigest(), config_hash(loaded.config), loaded.step, spec.model_run_id)
