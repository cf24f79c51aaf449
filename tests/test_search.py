"""`wg2 search`: real Optuna studies in SQLite, real synthesis and real metrics on a tiny trained model, a real
MLflow store per test. Worker processes are real spawned processes."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import optuna
import pytest
import soundfile as sf
from optuna.trial import TrialState

from components.schedules import BETA_MAX, BETA_MIN
from evaluation.metrics import value_range
from evaluation.runs import EXPERIMENT_SEARCH
from evaluation.stats import paired_difference
from experiments.cli import build_parser, main
from experiments.config.run import InputError
from experiments.config.schedules import load_schedule_file
from experiments.search import space
from experiments.search.command import run_search
from experiments.search.evaluator import REPORT_NOISE_OFFSET, Evaluator, load_evaluators, per_utterance
from experiments.search.keys import BASELINE, OWNER, TICKET
from experiments.search.queue import top_up
from experiments.search.spec import SearchSpec, default_study_name, spec_from_args
from experiments.train.store_checkpoints import resolve_checkpoint

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tmp_path


def cli_args(tiny_checkpoint: Path, *extra: str) -> list[str]:
    return ["search", str(tiny_checkpoint), "--limit-utterances", "2", "--device", "cpu", *extra]


def make_spec(tiny_checkpoint: Path, *extra: str, **changes) -> SearchSpec:
    """The spec `wg2 search` would build from these flags (defaults resolved the same way)."""
    spec = spec_from_args(build_parser().parse_args(cli_args(tiny_checkpoint, *extra)))
    return dataclasses.replace(spec, progress=False, **changes)


def load(spec_or_name, storage: str | None = None) -> optuna.Study:
    name = spec_or_name.study if isinstance(spec_or_name, SearchSpec) else spec_or_name
    return optuna.load_study(study_name=name, storage=storage or spec_or_name.storage)


def trial_runs(uri: str, study: str) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(EXPERIMENT_SEARCH)
    return client.search_runs([exp.experiment_id], f"tags.`wg2.kind` = 'trial' and tags.`wg2.study` = '{study}'")


# ----------------------------------------------------------------------------- the parametrization (no model)

def test_every_point_of_the_unit_cube_is_a_valid_schedule_and_the_map_inverts():
    rng = np.random.default_rng(0)
    for _ in range(300):
        u = rng.random(rng.integers(1, 30))
        u[rng.random(len(u)) < 0.2] = rng.choice([0.0, 1.0])  # the corners too
        betas = space.betas_from_u(u)
        assert np.all(np.diff(betas) >= 0) and betas.min() >= BETA_MIN and betas.max() <= BETA_MAX
        np.testing.assert_allclose(space.betas_from_u(space.u_from_betas(betas)), betas, rtol=1e-10)
    for steps in (2, 3, 6, 12):  # known schedules enter the space exactly (after the monotone fix, if any)
        for b in space.baselines(steps):
            np.testing.assert_allclose(space.betas_of_params(space.to_params(b.betas)), b.betas, rtol=1e-10)
    assert [b.name for b in space.baselines(6)] == ["linear-50@6", "manual-6", "fibonacci-25@6"]
    assert "manual-6@12" not in [b.name for b in space.baselines(12)]  # no betas invented above 6 steps
    with pytest.raises(ValueError, match="decreases at beta"):
        space.u_from_betas([1e-4, 1e-5])
    with pytest.raises(ValueError, match="outside"):
        space.u_from_betas([1e-4, 0.95])


def test_random_schedules_of_any_length_end_near_the_trained_noise_levels():
    """The exponent p(N) keeps the median final noise level of uniformly random schedules near the 6-step one
    (without it, 12-step random schedules end at ~1e-4, far below anything the model was trained on)."""
    from components.schedules import noise_levels

    rng = np.random.default_rng(1)

    def median_level(steps: int) -> float:
        return float(np.median([noise_levels(space.betas_from_u(rng.random(steps)))[-1] for _ in range(1000)]))

    six = median_level(6)
    for steps in (9, 12, 25):
        assert six / 3 < median_level(steps) < six * 3, steps


def test_grid_points_are_monotone_and_the_grid_budget_is_capped():
    values = space.grid_values(3)
    for point in np.array(np.meshgrid(*[values] * 3)).reshape(3, -1).T:
        assert np.all(np.diff(space.betas_from_u(point)) >= 0)
    study = optuna.create_study(direction="maximize")  # in memory: top_up only enqueues
    spec = SimpleNamespace(multi=False, steps=2, min_steps=3, max_steps=12, trials=50, sampler="grid")
    added = top_up(study, spec, True, space.baselines(2))
    assert added == 3 + len(values) ** 2  # the baselines, then at most every grid point once


# ----------------------------------------------------------------------------- two workers, resume, export

@pytest.fixture(scope="module")
def searched(tiny_checkpoint: Path, tmp_path_factory) -> SimpleNamespace:
    """`wg2 search --workers 2 --trials 4`, then the same study resumed with `--trials 6` on one worker."""
    root = tmp_path_factory.mktemp("search-two-workers")
    uri, storage = f"sqlite:///{root / 'mlflow.db'}", f"sqlite:///{root / 'optuna.db'}"
    args = cli_args(tiny_checkpoint, "--steps", "6", "--storage", storage, "--study", "two-workers", "--out", str(root / "out"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        assert main([*args, "--trials", "4", "--workers", "2"]) == 0
        first = {t.number: (t.state, t.values, t.user_attrs.get(OWNER)) for t in load("two-workers", storage).trials}
        first_runs = trial_runs(uri, "two-workers")
        assert main([*args, "--trials", "6", "--workers", "1"]) == 0
        spec = make_spec(tiny_checkpoint, "--steps", "6", "--storage", storage, "--study", "two-workers")
    return SimpleNamespace(root=root, uri=uri, storage=storage, args=args, first=first, first_runs=first_runs,
                           study=load("two-workers", storage), spec=spec, file=root / "out" / "two-workers.json")


def test_two_workers_run_exactly_the_budget_between_them(searched):
    first = searched.first
    assert sorted(first) == [0, 1, 2, 3], "exactly 4 trials, numbered without gaps or duplicates"
    assert all(state in FINISHED for state, _, _ in first.values())
    owners = {owner for _, _, owner in first.values()}
    assert all(int(o.split(":")[1]) != os.getpid() for o in owners), "the worker processes ran the trials"
    assert len(owners) <= 2
    runs = searched.first_runs  # each worker logged its own trials
    assert sorted(int(r.data.tags["wg2.trial_number"]) for r in runs) == [0, 1, 2, 3]
    assert {r.data.tags["wg2.owner"] for r in runs} == owners


def test_resumed_study_continues_numbering_without_enqueuing_the_baselines_again(searched):
    trials = searched.study.trials
    assert [t.number for t in trials] == [0, 1, 2, 3, 4, 5] and all(t.state in FINISHED for t in trials)
    for t in trials[:4]:
        assert (t.state, t.values, t.user_attrs.get(OWNER)) == searched.first[t.number], "kept as they were"
    assert [t.user_attrs.get(BASELINE) for t in trials[:3]] == ["linear-50@6", "manual-6", "fibonacci-25@6"]
    assert not any(BASELINE in t.user_attrs for t in trials[3:])
    runs = trial_runs(searched.uri, "two-workers")
    assert sorted(int(r.data.tags["wg2.trial_number"]) for r in runs) == list(range(6)), "every trial in MLflow once"
    for run in runs:
        t = trials[int(run.data.tags["wg2.trial_number"])]
        assert run.data.tags["wg2.state"] == t.state.name
        assert json.loads(run.data.params["betas"]) == pytest.approx(t.user_attrs["wg2.betas"])
        assert run.data.tags["mlflow.parentRunId"] and run.data.metrics["seconds"] > 0
        if t.state == TrialState.COMPLETE:
            assert run.info.status == "FINISHED" and run.data.metrics["objective/pesq_wb"] == pytest.approx(t.value)


def test_the_exported_schedule_round_trips_into_eval_and_synth(searched, tiny_checkpoint, tmp_path, capsys):
    doc = json.loads(searched.file.read_text())
    best = searched.study.best_trial
    assert doc["steps"] == 6 and doc["trial"] == best.number  # its value on the trials' utterances, labelled:
    assert doc["selection"]["best"]["metrics"]["pesq_wb"] == pytest.approx(best.value)
    np.testing.assert_allclose(load_schedule_file(searched.file), best.user_attrs["wg2.betas"])
    assert doc["model"]["checkpoint"] == str(tiny_checkpoint.resolve()) and len(doc["model"]["sha256"]) == 64
    assert set(doc["baselines"]) == {"linear-50@6", "manual-6", "fibonacci-25@6"}
    assert doc["study"]["name"] == "two-workers" and doc["study"]["trials"]
    assert len(doc["selected_on"]) == len(doc["reported_on"]) == 2 and not set(doc["selected_on"]) & set(doc["reported_on"])
    assert isinstance(doc["gains"]["reads_text"], bool)  # reported beside the schedule's quality numbers

    out = tmp_path / "eval"
    assert main(["eval", str(tiny_checkpoint), "--schedules", str(searched.file), "--limit", "2", "--out", str(out),
                 "--workers", "1", "--device", "cpu"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["speed"]["two-workers"]["steps"] == 6
    pesq = summary["metrics"]["two-workers"]["pesq_wb"]
    assert pesq["n"] + pesq["n_missing"] == 2

    utterance = doc["reported_on"][0]
    wav = tmp_path / "synth.wav"
    assert main(["synth", str(tiny_checkpoint), "--utterance", utterance, "--schedule", str(searched.file), "-o", str(wav),
                 "--device", "cpu"]) == 0
    assert sf.info(wav).frames > 0 and "6 steps" in capsys.readouterr().err


def test_reported_numbers_are_measured_on_the_held_out_utterances_only(searched):
    """The schedule file reports the found schedule, every baseline, their paired differences and the gains on
    `reported_on`, a set disjoint from `selected_on` (where the trials chose) with noise seeds of its own: each number
    is reproduced by scoring there again, and the same numbers taken on the selection set (the biased report this
    replaces) do not match them. The trials' own values are kept, labelled, under "selection"."""
    from experiments.infer.synth import diagnose

    doc = json.loads(searched.file.read_text())
    ev, reporter = load_evaluators(searched.spec)
    assert doc["selected_on"] == ev.utterance_ids and doc["reported_on"] == reporter.utterance_ids
    assert doc["selected_on"] and doc["reported_on"] and not set(doc["selected_on"]) & set(doc["reported_on"])
    identity = searched.study.user_attrs["wg2.identity"]  # the study records both sets: a resume keeps them
    assert (identity["selected_on"], identity["reported_on"]) == (doc["selected_on"], doc["reported_on"])

    def report(evaluator: Evaluator) -> tuple[dict[str, dict], dict[str, float]]:
        values = {b.name: per_utterance(evaluator.scores(b.betas))["pesq_wb"] for b in space.baselines(6)}
        values["found"] = per_utterance(evaluator.scores(np.asarray(doc["betas"])))["pesq_wb"]
        keyed = {k: dict(zip(evaluator.utterance_ids, v)) for k, v in values.items()}
        return keyed, {k: float(np.mean(v)) for k, v in values.items()}

    keyed, means = report(reporter)
    assert doc["value"] == pytest.approx(means["found"], rel=1e-6)
    assert doc["found"]["per_utterance"]["pesq_wb"] == pytest.approx(keyed["found"], rel=1e-6)
    for name in doc["baselines"]:
        entry = doc["baselines"][name]
        assert entry["metrics"]["pesq_wb"]["mean"] == pytest.approx(means[name], rel=1e-6), name
        assert set(entry["per_utterance"]["pesq_wb"]) == set(doc["reported_on"])
        got = doc["paired_pesq_wb"][name]
        paired = paired_difference(keyed["found"], keyed[name], bounds=value_range("pesq_wb"))
        assert got["n"] == 2 and got["diff"] == pytest.approx(means["found"] - means[name], abs=1e-9)
        assert (got["ci_low"], got["ci_high"], got["p_wilcoxon"]) == pytest.approx(
            (paired["ci_low"], paired["ci_high"], paired["p_wilcoxon"]))
    gains = diagnose(reporter.loaded, reporter.utterances).summaries()
    assert doc["gains"]["phoneme_gain"]["mean"] == pytest.approx(gains["phoneme_gain"]["mean"])

    # the broken variant: the same report made on the selection set (as before) gives other numbers
    _, biased = report(ev)
    assert doc["value"] != pytest.approx(biased["found"], rel=1e-6)
    assert [doc["baselines"][n]["metrics"]["pesq_wb"]["mean"] for n in doc["baselines"]] != pytest.approx(
        [biased[n] for n in doc["baselines"]], rel=1e-6)
    assert doc["gains"]["phoneme_gain"]["mean"] != pytest.approx(
        diagnose(ev.loaded, ev.utterances).summaries()["phoneme_gain"]["mean"])
    # ... and so would the selection set's noise seeds on the held-out utterances
    same_noise = Evaluator(reporter.loaded, reporter.utterances, searched.spec.seed)
    assert float(np.mean(per_utterance(same_noise.scores(np.asarray(doc["betas"])))["pesq_wb"])) != pytest.approx(
        doc["value"], rel=1e-6)
    assert reporter.noise_offset == REPORT_NOISE_OFFSET

    # the trials' values on the selection set stay in the file, labelled; there the found schedule is the best
    selection = doc["selection"]
    best = searched.study.best_trial
    assert "biased" in selection["note"] and selection["best"]["trial"] == best.number == doc["trial"]
    assert selection["best"]["metrics"]["pesq_wb"] == pytest.approx(best.value)
    for name, entry in selection["baselines"].items():  # common random numbers: a rescoring gives the trial's value
        assert entry["metrics"]["pesq_wb"] == pytest.approx(biased[name], rel=1e-6), name
        assert best.value >= entry["metrics"]["pesq_wb"] - 1e-9


def test_resume_with_other_settings_is_refused(searched, tiny_checkpoint, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", searched.uri)
    args = [a if a != "2" else "1" for a in searched.args]  # --limit-utterances 1
    assert main([*args, "--trials", "7"]) == 2
    assert "limit_utterances" in capsys.readouterr().err
    assert len(load("two-workers", searched.storage).trials) == 6, "nothing was added"


# ----------------------------------------------------------------------------- failures and pruning

def test_failing_trials_are_recorded_with_their_reason_and_the_study_goes_on(tiny_checkpoint, workdir, monkeypatch):
    from experiments.infer import synth

    real = synth.synthesize
    schedules = {b.name: b.betas for b in space.baselines(6)}

    def flaky(loaded, ids, betas, durations=None, pace=1.0, seed=0, batch_size=1):
        if np.allclose(betas, schedules["linear-50@6"]):
            raise RuntimeError("synthesis exploded")
        out = real(loaded, ids, betas, durations, pace=pace, seed=seed, batch_size=batch_size)
        # manual-6: NaN audio for every utterance; fibonacci: for the first utterance (noise seed 0) only
        if np.allclose(betas, schedules["manual-6"]) or (np.allclose(betas, schedules["fibonacci-25@6"]) and seed == 0):
            for o in out:
                o.audio = np.full_like(o.audio, np.nan)
        return out

    monkeypatch.setattr(synth, "synthesize", flaky)
    spec = make_spec(tiny_checkpoint, "--steps", "6", "--trials", "5", "--study", "failing")
    outcome = run_search(spec)
    trials = load(spec).trials
    assert [t.state for t in trials[:3]] == [TrialState.FAIL, TrialState.FAIL, TrialState.COMPLETE]
    assert "RuntimeError: synthesis exploded" in trials[0].user_attrs["wg2.fail_reason"]
    assert "pesq_wb is missing for all 2 utterances" in trials[1].user_attrs["wg2.fail_reason"]
    assert "NaN" in trials[1].user_attrs["wg2.fail_reason"]
    partial = trials[2]  # the mean of the utterance that has a value, and the count of the missing one
    assert partial.user_attrs["wg2.n_missing"]["pesq_wb"] == 1 and np.isfinite(partial.value)
    assert len(trials) == 5 and all(t.state in FINISHED for t in trials), "the study went on to its budget"
    assert outcome.exit_code == 0 and outcome.files
    runs = {int(r.data.tags["wg2.trial_number"]): r for r in trial_runs(os.environ["MLFLOW_TRACKING_URI"], "failing")}
    assert runs[0].info.status == "FAILED" and "synthesis exploded" in runs[0].data.tags["wg2.error"]
    assert runs[1].info.status == "FAILED" and "NaN" in runs[1].data.tags["wg2.error"]
    doc = json.loads(outcome.files[0].read_text())  # the baselines fail on the report set too, and say why
    assert doc["baselines"]["manual-6"]["state"] == "FAIL" and "NaN" in doc["baselines"]["manual-6"]["reason"]
    assert "synthesis exploded" in doc["baselines"]["linear-50@6"]["reason"]
    assert doc["selection"]["baselines"]["manual-6"]["state"] == "FAIL"


def test_median_pruner_stops_trials_in_a_region_of_tiny_betas(tiny_checkpoint, workdir, monkeypatch):
    """Three good enqueued baselines complete; then schedules whose betas are all tiny (the output stays the
    initial noise) are worse on log-mel distance after their first utterance and get pruned there. (The schedule
    check would prune these before scoring them, test_search_sets.py; here it is off: the pruner is the subject.)"""
    from experiments.infer import synth

    monkeypatch.setattr(synth, "check_loaded_schedule", lambda loaded, betas, source: None)
    spec = make_spec(tiny_checkpoint, "--steps", "6", "--trials", "3", "--objective", "log_mel_distance",
                     "--study", "pruning", prune_batch=1)
    run_search(spec)
    study = load(spec)
    for betas in (np.full(6, 1e-7), np.full(6, 1e-6), np.geomspace(1e-7, 1e-5, 6)):
        study.enqueue_trial(space.to_params(betas), user_attrs={TICKET: "test"})
    run_search(dataclasses.replace(spec, trials=6))
    trials = load(spec).trials
    assert [t.state for t in trials[:3]] == [TrialState.COMPLETE] * 3
    pruned = [t for t in trials[3:] if t.state == TrialState.PRUNED]
    assert len(pruned) >= 1, [(t.number, t.state, t.intermediate_values) for t in trials]
    for t in pruned:
        assert t.user_attrs["wg2.utterances_scored"] == 1 and "median" in t.user_attrs["wg2.prune_reason"]
    states = {int(r.data.tags["wg2.trial_number"]): r.data.tags["wg2.state"]
              for r in trial_runs(os.environ["MLFLOW_TRACKING_URI"], "pruning")}
    assert all(states[t.number] == "PRUNED" for t in pruned)


# ----------------------------------------------------------------------------- multi-objective, grid, model input

def test_multi_objective_search_writes_one_schedule_per_step_count_on_the_front(tiny_checkpoint, workdir):
    assert main(cli_args(tiny_checkpoint, "--multi", "--min-steps", "2", "--max-steps", "3", "--trials", "7",
                         "--out", "out")) == 0
    name = default_study_name(tiny_checkpoint.resolve(), None, 6, "pesq_wb", True, 2, 3, "tpe")
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{workdir / 'optuna.db'}")
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(study.trials) == 7 and sum(BASELINE in t.user_attrs for t in study.trials) == 6
    assert all(t.values[2] == t.params["steps"] == len(t.user_attrs["wg2.betas"]) for t in done)
    front = json.loads((workdir / "out" / f"{name}-front.json").read_text())
    assert front["schedules"] and {e["steps"] for e in front["schedules"]} <= {2, 3}
    for entry in front["schedules"]:
        assert len(load_schedule_file(workdir / "out" / entry["file"])) == entry["steps"]
    assert (workdir / "out" / f"{name}-pareto.png").stat().st_size > 1000
    from mlflow import MlflowClient

    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    parent = client.search_runs([client.get_experiment_by_name(EXPERIMENT_SEARCH).experiment_id],
                                "tags.`wg2.kind` = 'search'")
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    logged = {a.path for a in client.list_artifacts(parent[0].info.run_id)}
    assert {f"{name}-front.json", f"{name}-pareto.png", f"{name}-history.png"} <= logged
    assert {f"{name}-pareto-stoi.png", f"{name}-history-stoi.png"} <= logged  # Optuna's plots: one per objective
    assert {e["file"] for e in front["schedules"]} <= logged


def test_grid_sampler_baseline_samples_the_log_grid(tiny_checkpoint, workdir):
    assert main(cli_args(tiny_checkpoint, "--sampler", "grid", "--steps", "2", "--trials", "5")) == 0
    name = default_study_name(tiny_checkpoint.resolve(), None, 2, "pesq_wb", False, 3, 12, "grid")
    assert name.endswith("-grid")
    trials = optuna.load_study(study_name=name, storage=f"sqlite:///{workdir / 'optuna.db'}").trials
    grid = [t for t in trials if BASELINE not in t.user_attrs]
    assert len(trials) == 5 and len(grid) == 2
    assert all(v in space.grid_values(2) for t in grid for v in t.params.values())
    assert len({tuple(sorted(t.params.items())) for t in grid}) == 2, "distinct grid points"


def test_bad_input_fails_before_any_work(tiny_checkpoint, workdir, capsys):
    assert main(cli_args(tiny_checkpoint, "--objective", "length_ratio")) == 2
    assert "allowed" in capsys.readouterr().err
    assert main(cli_args(tiny_checkpoint, "--multi", "--objective", "stoi")) == 2
    assert main(cli_args(Path("missing.pt"))) == 2
    assert "not an MLflow run ID" in capsys.readouterr().err
    assert not (workdir / "optuna.db").exists()


def test_model_can_be_an_mlflow_run_id(tiny_checkpoint, workdir):
    from mlflow import MlflowClient

    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    run = client.create_run(client.create_experiment("models"))
    client.log_artifact(run.info.run_id, str(tiny_checkpoint))
    path, run_id = resolve_checkpoint(run.info.run_id, os.environ["MLFLOW_TRACKING_URI"])
    assert run_id == run.info.run_id and path.read_bytes() == tiny_checkpoint.read_bytes()
    assert default_study_name(path, run_id, 6, "pesq_wb", False, 3, 12, "tpe") == f"{run_id[:8]}-6steps-pesq_wb"
    with pytest.raises(InputError, match="could not download"):
        resolve_checkpoint("0" * 32, os.environ["MLFLOW_TRACKING_URI"])


def _search_command(argv: list[str], uri: str) -> int:
    """One `wg2 search` command in a process of its own (spawned), as a user starting several at once."""
    os.environ["MLFLOW_TRACKING_URI"] = uri
    return main(argv)


def test_commands_started_together_on_one_new_study_run_the_budget_once_and_log_each_trial_once(tiny_checkpoint,
                                                                                                  tmp_path):
    """Separate `wg2 search` commands on one new study and one new MLflow store: the store is created once,
    the study topped up to the budget once (not once per command), each trial logged to MLflow once."""
    import multiprocessing

    uri, storage = f"sqlite:///{tmp_path / 'mlflow.db'}", f"sqlite:///{tmp_path / 'optuna.db'}"
    argv = cli_args(tiny_checkpoint, "--steps", "3", "--objective", "mel_cd", "--storage", storage, "--study", "together",
                    "--trials", "4", "--out", str(tmp_path / "out"))
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        codes = pool.starmap(_search_command, [(argv, uri)] * 2)
    trials = load("together", storage).trials
    assert sorted(t.number for t in trials) == [0, 1, 2, 3], [t.number for t in trials]
    assert all(t.state == TrialState.COMPLETE for t in trials)
    numbers = sorted(int(r.data.tags["wg2.trial_number"]) for r in trial_runs(uri, "together"))
    assert numbers == [0, 1, 2, 3], numbers
    assert codes.count(0) >= 1 and set(codes) <= {0, 1}, codes  # 1: a command that found no trial left to run


def test_backfill_leaves_a_trial_of_a_live_worker_to_it(tmp_path, monkeypatch):
    """At its end a command logs finished trials that have no MLflow run; one whose worker (another command)
    is alive is being logged by it right now, and logging it here too would duplicate it."""
    import socket

    import psutil

    from experiments.search import tracking as search_tracking

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'o.db'}", study_name="s")
    parent = psutil.Process(os.getppid())
    owners = {"live": f"{socket.gethostname()}:{parent.pid}:{int(parent.create_time())}",
              "dead": f"{socket.gethostname()}:{parent.pid}:{int(parent.create_time()) - 1000}",  # pid reused
              "none": ""}
    for owner in owners.values():
        study.add_trial(optuna.trial.create_trial(state=TrialState.COMPLETE, value=1.0, user_attrs={OWNER: owner}))
    logged: list[int] = []
    monkeypatch.setattr(search_tracking.TrialLogger, "log", lambda self, t: logged.append(t.number))
    monkeypatch.setattr(search_tracking, "search_all_runs", lambda *args, **kwargs: [])
    monkeypatch.setattr(search_tracking.store, "client", lambda uri: None)
    ctx = search_tracking.TrackingContext("sqlite:///unused.db", "0", "parent", "key")
    assert search_tracking.log_missing_trials(study, ctx, None) == 2
    assert logged == [1, 2]
