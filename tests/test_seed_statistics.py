"""The unit of evidence is what was replicated. On a simulated two-level data set (training seeds, then utterances
within each seed's model) with no true effect but a large seed-to-seed spread, pooling seed x utterance as
independent (the broken variant: what `wg2 compare` did before) finds a "clear" effect; the seed-level method does
not. With fewer than three seeds the verdict is "too few seeds" and no p-value is given. Eval-only axes pair over
utterances within each model."""
from __future__ import annotations

import numpy as np
import pytest

import evaluation.compare.effects as compare_effects
from evaluation.compare.data import CLEAR, NO_CLEAR, TOO_FEW_SEEDS, UNIT_SEED, UNIT_UTTERANCE, RunRecord
from evaluation.compare.effects import axis_effects

UTTERANCES = [f"u{i:02d}" for i in range(20)]
KEY = "linear-6/estoi"


def simulated(axis: str, seed_effects: list[float], utterance_sd: float = 0.005):
    """Runs of two cells (axis = "a" / "b") per seed: each utterance's score is a base value of the utterance, plus on
    side "a" that seed's effect, plus a little utterance noise. The true effect is the mean of seed_effects."""
    rng = np.random.default_rng(0)
    base = dict(zip(UTTERANCES, rng.uniform(0.3, 0.6, len(UTTERANCES))))
    runs, per_utterance = [], {}
    for seed, effect in enumerate(seed_effects):
        for value in ("a", "b"):
            scores = {u: float(base[u] + (effect if value == "a" else 0.0) + utterance_sd * rng.standard_normal())
                      for u in UTTERANCES}
            run_id = f"{value}{seed}"
            runs.append(RunRecord(run_id=run_id, name=run_id, status="FINISHED", group=value, seed=seed,
                                  cell_hash=run_id, assignment={axis: value}, params={}, tags={},
                                  metrics={KEY: float(np.mean(list(scores.values())))}, start_time=seed))
            per_utterance[run_id] = {KEY: scores}
    return runs, per_utterance


def effect_of(axis: str, seed_effects: list[float]):
    runs, per_utterance = simulated(axis, seed_effects)
    (effect,) = axis_effects(runs, [axis], "estoi", ["linear-6"], {}, per_utterance)
    return effect


# No true effect on average (mean +0.023) but seeds disagree far more than utterances do.
NULL_SEEDS = [0.06, -0.03, 0.04]


def test_a_training_axis_is_judged_across_seeds_and_pooling_utterances_gives_a_false_positive(monkeypatch):
    effect = effect_of("train.window_frames", NULL_SEEDS)
    assert effect.unit == UNIT_SEED and effect.n == 3
    assert effect.diff == pytest.approx(np.mean(NULL_SEEDS), abs=0.003)
    assert effect.per_seed == pytest.approx({"0": 0.06, "1": -0.03, "2": 0.04}, abs=0.003)
    assert effect.ci_low < 0 < effect.ci_high and effect.verdict == NO_CLEAR and effect.p_value > 0.05
    # the broken variant: the same axis treated as if its utterances were replicates (pooled seed x utterance)
    monkeypatch.setattr(compare_effects, "is_eval_only", lambda axis: True)
    pooled = effect_of("train.window_frames", NULL_SEEDS)
    assert pooled.unit == UNIT_UTTERANCE and pooled.n == 60
    assert pooled.verdict == CLEAR and pooled.p_value < 0.05  # a false positive


def test_a_real_effect_replicated_across_seeds_is_clear():
    effect = effect_of("train.window_frames", [0.05, 0.045, 0.055, 0.05])
    assert effect.verdict == CLEAR and effect.ci_low > 0 and effect.p_value < 0.01 and effect.n == 4


def test_two_seeds_are_too_few_seeds_with_the_per_seed_effects_and_no_p():
    effect = effect_of("model.upsampler", [0.06, 0.05])
    assert effect.unit == UNIT_SEED and effect.n == 2 and effect.verdict == TOO_FEW_SEEDS
    assert effect.p_value is None and effect.ci_low is None and effect.ci_high is None
    assert len(effect.per_seed) == 2
    as_json = effect.as_json()
    assert {k: as_json[k] for k in ("axis", "values", "unit", "n", "verdict", "p")} == {
        "axis": "model.upsampler", "values": ["a", "b"], "unit": "seed", "n": 2, "verdict": TOO_FEW_SEEDS, "p": None}
    assert {"schedule", "metric", "difference", "ci_low", "ci_high"} <= as_json.keys()


def test_an_eval_only_axis_pairs_over_utterances_within_each_model():
    effect = effect_of("eval.weights", [0.02, 0.02])
    assert effect.unit == UNIT_UTTERANCE and effect.n == 2 * len(UTTERANCES) and effect.verdict == CLEAR
