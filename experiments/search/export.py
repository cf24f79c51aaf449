"""The schedule files a search writes: `<study>.json` (single objective) or one file per step count on the
Pareto front plus `<study>-front.json` (--multi).

Selection without bias: the trials chose the schedule on the utterances `selected_on`, so their values favour it.
Every number a file reports is measured again on `reported_on`, a disjoint set with noise seeds of its own
(evaluator.choose_sets, REPORT_NOISE_OFFSET): the found schedule's and each baseline's metrics (mean with a 95%
t-interval over the utterances), the paired differences found - baseline (per utterance: t-interval and Wilcoxon),
and the model's envelope and phoneme gains. The trials' own values on `selected_on` are kept under "selection",
labelled as such. Both id lists are in the file, and the study's identity holds them too."""
from __future__ import annotations

import json
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from evaluation.metrics import value_range
from evaluation.scoring import describe_error
from evaluation.stats import paired_difference, summarize
from experiments.infer.synth import diagnose
from experiments.search import keys
from experiments.search.evaluator import REPORT_NOISE_OFFSET, Evaluator, ModelInfo, per_utterance
from experiments.search.space import Baseline
from experiments.search.spec import PARAMETRIZATION, SELECTION_SPLIT, SearchSpec, redact, slug
from experiments.search.tracking import TrackingContext
from experiments.search.trial import fail_reason
from experiments.train.runtime import atomic_write_bytes

SELECTION_NOTE = ("the trials' values on selected_on, where the search chose this schedule: biased in its favour, "
                  "kept for reference; the reported numbers are the ones measured on reported_on")


def _write_json(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(data, indent=2, default=str) + "\n").encode())
    return path


def _trial_summary(t: FrozenTrial) -> dict[str, Any]:
    attrs = t.user_attrs
    out = {"trial": t.number, "state": t.state.name, "steps": attrs.get(keys.STEPS), "betas": attrs.get(keys.BETAS),
           "metrics": attrs.get(keys.METRICS, {}), "n_missing": attrs.get(keys.N_MISSING, {}),
           "utterances_scored": attrs.get(keys.UTTERANCES_SCORED)}
    if attrs.get(keys.MISSING_REASONS):
        out["missing_reasons"] = attrs[keys.MISSING_REASONS]
    if t.state == TrialState.FAIL:
        out["reason"] = fail_reason(t)
    if t.state == TrialState.PRUNED:
        out["reason"] = attrs.get(keys.PRUNE_REASON)
    return out


def measure(reporter: Evaluator, betas, paired_metrics: list[str]) -> dict[str, Any]:
    """One schedule on the report set: every metric's mean with its 95% t-interval (evaluation.stats.summarize,
    missing values counted with their reasons) and, for `paired_metrics`, the value per utterance id (what the
    paired differences are made on). State FAIL with the reason when synthesis raises or a paired metric is
    missing for every utterance."""
    try:
        scores = reporter.scores(np.asarray(betas, dtype=np.float64))
    except Exception as err:  # noqa: BLE001 - recorded in the file, as for a failing trial
        return {"state": "FAIL", "reason": describe_error(err)}
    names = dict.fromkeys(k for s in scores for k in s)
    metrics = {m: summarize([s.get(m) for s in scores], bounds=value_range(m)) for m in names}
    values = per_utterance(scores)
    out: dict[str, Any] = {"state": "COMPLETE", "metrics": metrics,
                           "per_utterance": {m: dict(zip(reporter.utterance_ids, values.get(m, [])))
                                             for m in paired_metrics}}
    for m in paired_metrics:
        summary = metrics.get(m)
        if summary is None or summary["mean"] is None:
            reasons = ", ".join((summary or {}).get("missing_reasons", {})) or "not scored"
            out.update(state="FAIL", reason=f"{m} is missing for all {len(scores)} utterances: {reasons}")
            break
    return out


def paired_against(found: dict, baselines: dict[str, dict], metric: str) -> dict[str, dict]:
    """The found schedule minus each baseline on `metric`, paired per utterance id (same utterance, same noise
    seed): mean difference, 95% t-interval clipped to the metric's range, Wilcoxon signed-rank p (evaluation.stats)."""
    mine = found.get("per_utterance", {}).get(metric)
    out = {}
    for name, b in baselines.items():
        theirs = b.get("per_utterance", {}).get(metric)
        if mine is not None and theirs is not None:
            out[name] = paired_difference(mine, theirs, bounds=value_range(metric))
    return out


def selection_values(best: FrozenTrial, trials: list[FrozenTrial], baselines: list[Baseline], selected_on: list[str],
                     metrics: list[str]) -> dict[str, Any]:
    """The trials' values on selected_on (SELECTION_NOTE): the best trial, the baselines' trials (a baseline
    outside the trial budget has none) and the paired differences between them."""
    def keyed(t: FrozenTrial) -> dict[str, dict]:
        values = t.user_attrs.get(keys.PER_UTTERANCE, {})
        return {m: dict(zip(selected_on, values[m])) for m in metrics if m in values}

    mine = {"per_utterance": keyed(best)}
    theirs = {}
    for b in baselines:
        t = next((t for t in trials if t.user_attrs.get(keys.BASELINE) == b.name), None)
        if t is not None:
            theirs[b.name] = {**_trial_summary(t), "per_utterance": keyed(t)}
    out: dict[str, Any] = {"note": SELECTION_NOTE, "best": _trial_summary(best),
                           "baselines": {k: {key: v for key, v in b.items() if key != "per_utterance"}
                                         for k, b in theirs.items()}}
    out.update({f"paired_{m}": paired_against(mine, theirs, m) for m in metrics})
    return out


def model_gain(reporter: Evaluator) -> dict:
    """The model's envelope and phoneme gains on reported_on (independent of the schedule), once per export."""
    gain = diagnose(reporter.loaded, reporter.utterances)
    return {**gain.summaries(), "reads_text": gain.reads_text}


def export(study: optuna.Study, spec: SearchSpec, reporter: Evaluator, model: ModelInfo,
           ctx: TrackingContext | None, baselines: list[Baseline], dropped: dict[str, str]) -> list[Path]:
    """Write the schedule file(s), every reported number measured on `reporter`'s utterances; [] when no trial
    completed. `baselines`: those that pass the model's schedule check; `dropped`: {name: why not}."""
    trials = study.get_trials(deepcopy=False)
    if not any(t.state == TrialState.COMPLETE for t in trials):
        return []
    metrics = [m for m in spec.objectives if m != "steps"]
    selected_on = study.user_attrs["wg2.identity"]["selected_on"]
    counts = {s.name: sum(1 for t in trials if t.state == s) for s in TrialState}
    reported = {b.name: {"steps": len(b.betas), "betas": b.betas.tolist(), "adjusted_to_monotone": b.adjusted,
                         **measure(reporter, b.betas, metrics)} for b in baselines}
    common = {
        "selected_on": selected_on,
        "reported_on": reporter.utterance_ids,
        "model": asdict(model),
        # does the model read its text? (the schedule's quality numbers compare noise if not)
        "gains": model_gain(reporter),
        "evaluation": {"selected_on": {"split": SELECTION_SPLIT, "noise": "utterance i uses seed * 1000003 + i",
                                       "use": "the trials' scores: the search chose the schedule on these"},
                       "reported_on": {"split": reporter.source,
                                       "noise": f"utterance i uses seed * 1000003 + {REPORT_NOISE_OFFSET} + i",
                                       "use": "every reported number: the found schedule, the baselines, their "
                                              "paired differences and the gains"},
                       "limit_utterances": spec.limit_utterances, "seed": spec.seed, "durations": "ground truth",
                       "intervals": "95% t-interval of the mean over reported_on; differences paired per utterance "
                                    "(t-interval, Wilcoxon signed-rank p)"},
        "study": {"name": spec.study, "storage": redact(spec.storage), "sampler": spec.sampler,
                  "trials": {k: v for k, v in counts.items() if v}, "parametrization": PARAMETRIZATION,
                  "mlflow": {"tracking_uri": redact(ctx.uri), "experiment_id": ctx.experiment_id,
                             "parent_run_id": ctx.parent_run_id} if ctx else None},
        "baselines": reported,
        "baselines_dropped": dropped,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }

    def found_doc(best: FrozenTrial) -> dict[str, Any]:
        found = measure(reporter, best.user_attrs["wg2.betas"], metrics)
        return {"found": found, **{f"paired_{m}": paired_against(found, reported, m) for m in metrics},
                "selection": selection_values(best, trials, baselines, selected_on, metrics)}

    def mean(entry: dict, metric: str) -> float | None:
        return entry.get("metrics", {}).get(metric, {}).get("mean")

    out = Path(spec.out_dir)
    name = slug(spec.study)
    if not spec.multi:
        best = study.best_trial
        better = max if spec.directions[0] == "maximize" else min
        reference = [v for b in reported.values() if (v := mean(b, spec.objective)) is not None]
        body = found_doc(best)
        doc = {"betas": best.user_attrs["wg2.betas"], "steps": best.user_attrs["wg2.steps"], "name": spec.study,
               "objective": spec.objective, "direction": spec.directions[0], "trial": best.number,
               "value": mean(body["found"], spec.objective),
               "best_baseline_value": better(reference) if reference else None, **body, **common}
        return [_write_json(out / f"{name}.json", doc)]
    front = sorted(study.best_trials, key=lambda t: (t.values[2], -t.values[0], -t.values[1]))
    files, entries = [], []
    for steps in sorted({int(t.values[2]) for t in front}):
        best = next(t for t in front if int(t.values[2]) == steps)  # its best PESQ-wb (ties: STOI)
        body = found_doc(best)
        values = [mean(body["found"], m) for m in metrics] + [float(steps)]
        doc = {"betas": best.user_attrs["wg2.betas"], "steps": steps, "name": f"{spec.study}-{steps}steps",
               "objectives": list(spec.objectives), "trial": best.number, "values": values, **body, **common}
        files.append(_write_json(out / f"{name}-{steps}steps.json", doc))
        entries.append({"file": files[-1].name, "steps": steps, **dict(zip(metrics, values)), "trial": best.number,
                        "selection_values": list(best.values)})
    front_doc = {"name": spec.study, "objectives": list(spec.objectives), "schedules": entries,
                 "front": [_trial_summary(t) for t in front], "front_note": "the front among the trials, on "
                 "selected_on; each schedule's reported values are measured on reported_on", **common}
    files.append(_write_json(out / f"{name}-front.json", front_doc))
    return files
