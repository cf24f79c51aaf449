"""One trial: its objective (with running-mean reports for the pruner), how it ends (COMPLETE, PRUNED or
FAIL with a reason), and the one line that describes it."""
from __future__ import annotations

import time

import optuna
from optuna.trial import FrozenTrial, TrialState

from evaluation.scoring import describe_error
from experiments.config.run import InputError
from experiments.infer import synth
from experiments.search import keys, space
from experiments.search.evaluator import Evaluator, MetricSummary, per_utterance, summarize_scores
from experiments.search.spec import SearchSpec
from experiments.tracking import claims
from experiments.tracking.ending import interrupt_reason

SCHEDULE_CHECK = "schedule check"  # how the prune reason of a candidate refused by the check starts
INTERRUPTED = "interrupted: the worker running this trial died; marked failed when the study was resumed"


class TrialFailed(Exception):
    """The trial produced no usable objective value (the message says why)."""


def _record(trial, summary: dict[str, MetricSummary], done: int, scores: list[dict]) -> None:
    trial.set_user_attr(keys.METRICS, {k: s.mean for k, s in summary.items()})
    trial.set_user_attr(keys.PER_UTTERANCE, per_utterance(scores))  # the schedule file's paired comparisons
    trial.set_user_attr(keys.N_MISSING, {k: s.n_missing for k, s in summary.items() if s.n_missing})
    trial.set_user_attr(keys.MISSING_REASONS, {k: s.reason for k, s in summary.items() if s.reason})
    trial.set_user_attr(keys.UTTERANCES_SCORED, done)


def objective(trial, spec: SearchSpec, ev: Evaluator) -> float | tuple[float, ...]:
    steps = trial.suggest_int(space.STEPS_PARAM, spec.min_steps, spec.max_steps) if spec.multi else spec.steps
    betas = space.suggest_betas(trial, steps)  # (steps,) non-decreasing
    trial.set_user_attr("wg2.betas", betas.tolist())
    trial.set_user_attr("wg2.steps", steps)
    try:  # a schedule the model cannot sample from (start SNR, training range) is pruned, not evaluated
        synth.check_loaded_schedule(ev.loaded, betas, f"trial {trial.number}")
    except InputError as err:
        raise optuna.TrialPruned(f"{SCHEDULE_CHECK}: {err}") from err
    total, scores, summary = len(ev.utterances), [], {}
    for done, batch in ev.batches(betas, spec.prune_batch):
        scores += batch
        summary = summarize_scores(scores)
        _record(trial, summary, done, scores)
        running = summary[spec.objective].mean
        if spec.multi or running is None:
            continue  # Optuna prunes single-objective studies only
        trial.report(running, done)
        if done < total and trial.should_prune():
            raise optuna.TrialPruned(f"running mean {spec.objective} = {running:.4f} after {done}/{total} utterances "
                                     "is worse than the median of earlier trials there")
    values = []
    for name in spec.objectives:
        if name == "steps":
            values.append(float(steps))
            continue
        s = summary[name]
        if s.mean is None:
            raise TrialFailed(f"{name} is missing for all {total} utterances: {s.reason}")
        values.append(s.mean)
    return values[0] if len(values) == 1 else tuple(values)


def run_trial(study, trial, spec: SearchSpec, ev: Evaluator):
    """Run one claimed trial and tell the study how it ended; returns the FrozenTrial."""
    started = time.perf_counter()
    trial.set_user_attr(keys.OWNER, claims.owner_id())
    try:
        values = objective(trial, spec, ev)
    except optuna.TrialPruned as err:
        trial.set_user_attr(keys.PRUNE_REASON, str(err))
        trial.set_user_attr(keys.SECONDS, time.perf_counter() - started)
        return study.tell(trial, state=TrialState.PRUNED)
    except (Exception, KeyboardInterrupt) as err:
        reason = str(err) if isinstance(err, TrialFailed) else describe_error(err)
        trial.set_user_attr(keys.FAIL_REASON, interrupt_reason(err) if isinstance(err, KeyboardInterrupt) else reason)
        trial.set_user_attr(keys.SECONDS, time.perf_counter() - started)
        frozen = study.tell(trial, state=TrialState.FAIL)
        if isinstance(err, KeyboardInterrupt):
            raise
        return frozen
    trial.set_user_attr(keys.SECONDS, time.perf_counter() - started)
    return study.tell(trial, values)


def fail_reason(t: FrozenTrial) -> str | None:
    if t.state != TrialState.FAIL:
        return None
    return t.user_attrs.get(keys.FAIL_REASON) or INTERRUPTED


def describe_trial(t: FrozenTrial, spec: SearchSpec) -> str:
    attrs = t.user_attrs
    label = f"trial {t.number}" + (f" ({attrs[keys.BASELINE]})" if keys.BASELINE in attrs else "")
    steps = f"{attrs[keys.STEPS]} steps" if keys.STEPS in attrs else ""
    seconds = f"{attrs.get(keys.SECONDS, 0.0):.1f} s"
    if t.state == TrialState.COMPLETE:
        values = ", ".join(f"{k} {v:.4f}" for k, v in zip(spec.objectives, t.values) if k != "steps")
        return f"{label}: {values} ({steps}, {seconds})"
    if t.state == TrialState.PRUNED:
        return f"{label}: pruned ({steps}, {seconds}): {attrs.get(keys.PRUNE_REASON, '')}"
    return f"{label}: {t.state.name.lower()} ({seconds}): {fail_reason(t)}"
