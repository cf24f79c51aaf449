"""The schedule files a search writes: `<study>.json` (single objective) or one file per step count on the
Pareto front plus `<study>-front.json` (--multi), each with the baselines' values, the model and the study."""
from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from evaluation.conditioning import conditioning_gain, reads_text
from evaluation.metrics import value_range
from evaluation.stats import paired_difference
from experiments.train.runtime import atomic_write_bytes
from experiments.search.evaluator import Evaluator, ModelInfo, per_utterance, summarize_scores
from experiments.search.spec import PARAMETRIZATION, SPLIT, SearchSpec, baseline_list, redact, slug
from experiments.search.tracking import TrackingContext
from experiments.search import keys
from experiments.search.trial import fail_reason
from experiments.infer.synth import conditioning_items


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


def baseline_values(trials: list[FrozenTrial], spec: SearchSpec, ev: Evaluator | None
                    ) -> tuple[dict[str, dict], dict[str, dict[str, list]]]:
    """The baselines' metric values on the search's utterances: from their enqueued trials, or (a baseline
    that is not a trial of this study) from a separate evaluation with the same protocol; and each baseline's
    per-utterance values (for the paired comparisons)."""
    out, values = {}, {}
    for b in baseline_list(spec):
        t = next((t for t in trials if t.user_attrs.get(keys.BASELINE) == b.name), None)
        if t is not None:
            out[b.name] = {**_trial_summary(t), "source": f"trial {t.number} of the study",
                           "adjusted_to_monotone": t.user_attrs.get(keys.BASELINE_ADJUSTED, False)}
            values[b.name] = t.user_attrs.get(keys.PER_UTTERANCE, {})
        elif ev is not None:
            scores = ev.scores(b.betas)
            summary = summarize_scores(scores)
            out[b.name] = {"state": "COMPLETE", "steps": len(b.betas), "betas": b.betas.tolist(),
                           "metrics": {k: s.mean for k, s in summary.items()},
                           "n_missing": {k: s.n_missing for k, s in summary.items() if s.n_missing},
                           "source": "separate evaluation (not a trial of the study)",
                           "adjusted_to_monotone": b.adjusted}
            values[b.name] = per_utterance(scores)
    return out, values


def paired_against(best: FrozenTrial, baselines: dict[str, dict[str, list]], metric: str) -> dict[str, dict]:
    """The found schedule minus each baseline on `metric`, paired per utterance (same utterance, same noise seed):
    mean difference, 95% t-interval clipped to the metric's range, Wilcoxon signed-rank p (evaluation.stats)."""
    mine = best.user_attrs.get(keys.PER_UTTERANCE, {}).get(metric)
    out = {}
    for name, values in baselines.items():
        theirs = values.get(metric)
        if mine is None or theirs is None or len(mine) != len(theirs):
            continue  # a study written before per-utterance values were kept
        out[name] = paired_difference(dict(enumerate(mine)), dict(enumerate(theirs)), bounds=value_range(metric))
    return out


def model_gain(ev: Evaluator | None) -> dict | None:
    """The model's conditioning gain on the search's utterances (independent of the schedule), once per export."""
    if ev is None:
        return None
    loaded = ev.loaded
    gain = conditioning_gain(loaded.model, conditioning_items(loaded, ev.utterances), loaded.config.train.noise_loss)
    return {**gain.summary, "reads_text": reads_text(gain.summary)}


def export(study: optuna.Study, spec: SearchSpec, ev: Evaluator | None, model: ModelInfo,
           ctx: TrackingContext | None) -> list[Path]:
    """Write the schedule file(s); [] when no trial completed."""
    trials = study.get_trials(deepcopy=False)
    if not any(t.state == TrialState.COMPLETE for t in trials):
        return []
    counts = {s.name: sum(1 for t in trials if t.state == s) for s in TrialState}
    baselines, baseline_utterances = baseline_values(trials, spec, ev)
    common: dict[str, Any] = {
        "model": asdict(model),
        # does the model read its text? (the schedule's quality numbers compare noise if not)
        "conditioning_gain": model_gain(ev),
        "evaluation": {"split": SPLIT, "utterances": [u.id for u in ev.utterances] if ev else None,
                       "limit_utterances": spec.limit_utterances, "seed": spec.seed, "durations": "ground truth",
                       "noise": "utterance i uses seed * 1000003 + i"},
        "study": {"name": spec.study, "storage": redact(spec.storage), "sampler": spec.sampler,
                  "trials": {k: v for k, v in counts.items() if v}, "parametrization": PARAMETRIZATION,
                  "mlflow": {"tracking_uri": redact(ctx.uri), "experiment_id": ctx.experiment_id,
                             "parent_run_id": ctx.parent_run_id} if ctx else None},
        "baselines": baselines,
        "baseline_source": "the baselines' enqueued trials (same utterances, same noise seeds); a baseline "
                           "outside the trial budget is evaluated separately with the same protocol",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    out = Path(spec.out_dir)
    name = slug(spec.study)
    if not spec.multi:
        best = study.best_trial
        better = max if spec.directions[0] == "maximize" else min
        reference = [b["metrics"].get(spec.objective) for b in common["baselines"].values()]
        reference = [v for v in reference if v is not None]
        doc = {"betas": best.user_attrs[keys.BETAS], "steps": best.user_attrs[keys.STEPS], "name": spec.study,
               "objective": spec.objective, "direction": spec.directions[0], "value": best.value,
               "best_baseline_value": better(reference) if reference else None,
               # the found schedule minus each baseline, paired per utterance
               f"paired_{spec.objective}": paired_against(best, baseline_utterances, spec.objective),
               "best": _trial_summary(best), **common}
        return [_write_json(out / f"{name}.json", doc)]
    front = sorted(study.best_trials, key=lambda t: (t.values[2], -t.values[0], -t.values[1]))
    files, entries = [], []
    for steps in sorted({int(t.values[2]) for t in front}):
        best = next(t for t in front if int(t.values[2]) == steps)  # its best PESQ-wb (ties: STOI)
        doc = {"betas": best.user_attrs[keys.BETAS], "steps": steps, "name": f"{spec.study}-{steps}steps",
               "objectives": list(spec.objectives), "values": list(best.values), "best": _trial_summary(best),
               **common}
        files.append(_write_json(out / f"{name}-{steps}steps.json", doc))
        entries.append({"file": files[-1].name, "steps": steps, "pesq_wb": best.values[0], "stoi": best.values[1],
                        "trial": best.number})
    front_doc = {"name": spec.study, "objectives": list(spec.objectives), "schedules": entries,
                 "front": [_trial_summary(t) for t in front], **common}
    files.append(_write_json(out / f"{name}-front.json", front_doc))
    return files
