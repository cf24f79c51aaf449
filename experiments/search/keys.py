"""The Optuna user-attribute keys of a schedule search, each named once. What a study and its trials store
beside Optuna's own fields; the search's MLflow runs, its export and its resume read them back."""
from __future__ import annotations

# a trial's
TICKET = "wg2.ticket"  # why the trial was enqueued: "baseline" or a search ticket
BASELINE = "wg2.baseline"  # a baseline trial's schedule label
BASELINE_ADJUSTED = "wg2.baseline_adjusted"  # its betas were made non-decreasing to fit the search space
OWNER = "wg2.owner"  # the worker running it (experiments/tracking/claims.py owner id)
BETAS = "wg2.betas"
STEPS = "wg2.steps"
METRICS = "wg2.metrics"  # metric -> mean over the utterances scored
PER_UTTERANCE = "wg2.per_utterance"  # metric -> utterance -> value (the schedule file's paired comparisons)
N_MISSING = "wg2.n_missing"
MISSING_REASONS = "wg2.missing_reasons"
UTTERANCES_SCORED = "wg2.utterances_scored"
PRUNE_REASON = "wg2.prune_reason"
FAIL_REASON = "wg2.fail_reason"
SECONDS = "wg2.seconds"
OVER_BUDGET = "wg2.over_budget"  # enqueued past --trials by a worker that raced another

# a study's
IDENTITY = "wg2.identity"  # what must match for a rerun to resume it (model, objective, space)
MODEL = "wg2.model"
CREATED = "wg2.created"
