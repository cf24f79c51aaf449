"""`wg2 search` selects on one utterance set and reports on a disjoint one (experiments/search/evaluator.py
choose_sets, export.py), and scores only schedules that pass the model's schedule check. The reported numbers on
a real search are checked in test_search.py (test_reported_numbers_are_measured_on_the_held_out_utterances_only)."""
from __future__ import annotations

import contextlib
import json
import logging
from types import SimpleNamespace

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState
from test_search import load, make_spec, workdir  # noqa: F401 - workdir is a fixture

from experiments.config.run import InputError
from experiments.search import space
from experiments.search.command import run_search
from experiments.search.evaluator import choose_sets, load_evaluators
from experiments.search.keys import BASELINE, TICKET
from experiments.search.trial import TrialFailed, objective

# ----------------------------------------------------------------------------- the two utterance sets (no model)

def test_selection_and_report_sets_are_disjoint_and_fixed_by_the_seed():
    """The test split reports when it holds at least as many utterances as the selection set; otherwise val is cut
    in two seeded halves. Either way the sets are disjoint, and the same seed gives the same sets."""
    val = [SimpleNamespace(id=f"v{i:02d}") for i in range(10)]
    test = [SimpleNamespace(id=f"t{i:02d}") for i in range(6)]

    def ids(sets):
        return [u.id for u in sets[0]], [u.id for u in sets[1]], sets[2]

    selected, reported, source = ids(choose_sets(val, test, 4, 3, "corpus"))
    assert source == "test" and len(selected) == len(reported) == 4 and all(i.startswith("t") for i in reported)
    assert ids(choose_sets(val, test, 4, 3, "corpus")) == (selected, reported, source)
    # the whole of val (10) against a test split of 6: too small to report on as precisely, so val is cut in two
    for limit, seed, held_out in ((0, 3, test), (0, 4, test), (2, 3, test[:1]), (2, 3, [])):
        selected, reported, source = ids(choose_sets(val, held_out, limit, seed, "corpus"))
        assert source.startswith("val") and selected and len(reported) >= 2 and not set(selected) & set(reported)
        assert all(i.startswith("v") for i in selected + reported)
        assert len(selected) == len(reported) == (limit or 5)
    assert ids(choose_sets(val, [], 0, 3, "corpus"))[1] != ids(choose_sets(val, [], 0, 4, "corpus"))[1]
    # a broken variant, two independent seeded picks of val (pick_utterances) instead of halves, overlaps
    from experiments.infer.evaluate import pick_utterances

    assert {u.id for u in pick_utterances(val, 5, 3)} & {u.id for u in pick_utterances(val, 5, 4)}
    with pytest.raises(InputError, match="corpus: 3 val and 1 test utterances"):
        choose_sets(val[:3], test[:1], 0, 3, "corpus")


@pytest.mark.usefixtures("workdir")
def test_schedule_check_drops_failing_baselines_and_prunes_failing_candidates(tiny_checkpoint, monkeypatch, caplog):
    """The search's fixed baselines and every candidate pass the model's schedule check (start SNR, training range at
    both ends) or are not scored: a baseline that fails is dropped with its reason (logged and in the schedule file),
    a candidate that fails is pruned with its reason before any synthesis. A 25 dB start limit makes manual-6 fail on
    the tiny model (it starts at -21 dB); all-tiny betas start almost at the clean signal."""
    from components import schedules
    from experiments.infer import synth

    monkeypatch.setattr(schedules, "START_SNR_LIMIT_DB", -25.0)
    spec = make_spec(tiny_checkpoint, "--steps", "6", "--trials", "3", "--study", "checked")
    bad = np.full(6, 1e-6)
    study = optuna.create_study(study_name=spec.study, storage=spec.storage, direction="maximize")
    study.enqueue_trial(space.to_params(bad), user_attrs={TICKET: "test"})  # trial 0, before the baselines
    with caplog.at_level(logging.WARNING):
        outcome = run_search(spec)
    assert "baseline manual-6 dropped" in caplog.text and "-25 dB" in caplog.text
    trials = load(spec).trials
    assert [t.user_attrs.get(BASELINE) for t in trials] == [None, "linear-50@6", "fibonacci-25@6"]
    refused = trials[0]
    assert refused.state == TrialState.PRUNED and refused.user_attrs["wg2.prune_reason"].startswith("schedule check: trial 0")
    assert "wg2.utterances_scored" not in refused.user_attrs, "pruned before any utterance was scored"
    doc = json.loads(outcome.files[0].read_text())
    assert set(doc["baselines"]) == {"linear-50@6", "fibonacci-25@6"} and "SNR" in doc["baselines_dropped"]["manual-6"]
    loaded = synth.load_checkpoint(tiny_checkpoint, "cpu")
    synth.check_loaded_schedule(loaded, np.asarray(doc["betas"]), "found")  # the found schedule passes
    for name in doc["baselines"]:
        synth.check_loaded_schedule(loaded, np.asarray(doc["baselines"][name]["betas"]), name)

    # the broken variant, the same candidate without the check, is scored like any other schedule
    ev = load_evaluators(spec)[0]
    trial = optuna.trial.FixedTrial(space.to_params(bad))
    with pytest.raises(optuna.TrialPruned, match="schedule check"):
        objective(trial, spec, ev)
    monkeypatch.setattr(synth, "check_loaded_schedule", lambda loaded, betas, source: None)
    with contextlib.suppress(TrialFailed):  # scored; PESQ may find no speech in what stays noise
        objective(trial, spec, ev)
    assert trial.user_attrs["wg2.utterances_scored"] == 2
