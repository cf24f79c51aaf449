"""Scoring one schedule: a fixed utterance set synthesized with ground-truth durations and fixed noise per
utterance (common random numbers), scored with every aligned metric; the two disjoint sets a search selects on
and reports on (`choose_sets`); the baselines that pass the model's schedule check; and the model's identity."""
from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from evaluation.metrics import Missing
from evaluation.pool import ScoreJob, score_many
from experiments.config.identity import config_hash
from experiments.config.run import InputError
from experiments.corpus.dataset import load_dataset
from experiments.infer import synth
from experiments.infer.evaluate import known_utterances, pick_utterances
from experiments.search import space
from experiments.search.spec import MIN_REPORTED, REPORT_SPLIT, SELECTION_SPLIT, SearchSpec, baseline_list

# the report set's noise seeds start here (seed * 1000003 + REPORT_NOISE_OFFSET + i): never one of the selection
# set's, so the found schedule cannot have been tuned to the noise it is reported on either
REPORT_NOISE_OFFSET = 500_000


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
    """Synthesizes a fixed utterance set with a schedule (ground-truth durations, fixed noise per utterance:
    seed * 1000003 + noise_offset + i for utterance i) and scores it with every aligned metric. `source` says
    where the set comes from (e.g. "val", "test")."""

    def __init__(self, loaded, utterances: list, seed: int, noise_offset: int = 0, source: str = SELECTION_SPLIT):
        self.loaded, self.utterances, self.seed = loaded, utterances, seed
        self.noise_offset, self.source = noise_offset, source
        self.ids = [loaded.vocab.encode(u.phonemes) for u in utterances]

    @property
    def utterance_ids(self) -> list[str]:
        return [u.id for u in self.utterances]

    def noise_seed(self, index: int) -> int:
        return self.seed * 1_000_003 + self.noise_offset + index

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


def choose_sets(val: list, test: list, limit: int, seed: int, where: str) -> tuple[list, list, str]:
    """(selected, reported, where the reported ones come from): disjoint utterance sets, fixed by `limit` and `seed`.
    Selection: `limit` val utterances (pick_utterances, as `wg2 eval` picks). Report: `limit` test utterances when
    the test split holds at least as many as the selection set (and MIN_REPORTED); otherwise val is cut in two
    halves by a permutation seeded with `seed`, the trials select on `limit` of one and the report takes `limit`
    of the other. InputError (naming `where`) when there are too few utterances for both."""
    selected = pick_utterances(val, limit, seed)
    if selected and len(test) >= max(MIN_REPORTED, len(selected)):
        return selected, pick_utterances(test, limit, seed), REPORT_SPLIT
    ordered = sorted(val, key=lambda u: u.id)
    held = set(np.random.default_rng(seed).permutation(len(ordered))[:len(ordered) // 2].tolist())
    pool = [u for i, u in enumerate(ordered) if i not in held]
    held_out = [u for i, u in enumerate(ordered) if i in held]
    if len(held_out) < MIN_REPORTED:
        raise InputError(f"{where}: {len(val)} {SELECTION_SPLIT} and {len(test)} {REPORT_SPLIT} utterances; a search "
                         f"selects on {SELECTION_SPLIT} utterances and reports on at least {MIN_REPORTED} others (the "
                         f"{REPORT_SPLIT} split, or a held-out half of {SELECTION_SPLIT}: needs {2 * MIN_REPORTED} "
                         f"{SELECTION_SPLIT} utterances); use a corpus with larger splits (data.val_fraction, "
                         "data.test_fraction)")
    return (pick_utterances(pool, limit, seed), pick_utterances(held_out, limit, seed),
            f"{SELECTION_SPLIT} (the held-out half)")


def load_evaluators(spec: SearchSpec, progress: bool = False) -> tuple[Evaluator, Evaluator]:
    """(selection, report): the trials' evaluator and the schedule file's, on disjoint utterance sets."""
    loaded = synth.load_checkpoint(spec.checkpoint, spec.device)
    dataset = load_dataset(loaded.config.data, progress=progress)
    where = f"{spec.checkpoint}: the model's corpus {loaded.config.data.root}"
    selected, reported, source = choose_sets(
        known_utterances(loaded, dataset.split(SELECTION_SPLIT), spec.skip_unknown_phonemes),
        known_utterances(loaded, dataset.split(REPORT_SPLIT), spec.skip_unknown_phonemes),
        spec.limit_utterances, spec.seed, where)
    return (Evaluator(loaded, selected, spec.seed),
            Evaluator(loaded, reported, spec.seed, REPORT_NOISE_OFFSET, source))


def sets_identity(ev: Evaluator, reporter: Evaluator) -> dict:
    """The two utterance sets as a study records them (a resumed study must find the same)."""
    return {"selected_on": ev.utterance_ids, "reported_on": reporter.utterance_ids, "reported_from": reporter.source}


def checked_baselines(spec: SearchSpec, loaded) -> tuple[list[space.Baseline], dict[str, str]]:
    """The search's fixed baselines that pass the model's schedule check (experiments.synth.check_loaded_schedule:
    start SNR and training range at both ends), and {name: reason} for those dropped."""
    kept, dropped = [], {}
    for b in baseline_list(spec):
        try:
            synth.check_loaded_schedule(loaded, b.betas, f"baseline {b.name}")
        except InputError as err:
            dropped[b.name] = str(err)
        else:
            kept.append(b)
    return kept, dropped


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
