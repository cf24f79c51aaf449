"""`wg2 search`: open or resume the study, run its waiting trials on one or more workers, then log what is
left to MLflow and write the schedule files and pictures (see the package docstring)."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState
from tqdm import tqdm

from evaluation.progress import progress_enabled
from evaluation.runs import EXPERIMENT_SEARCH, TAG_ERROR
from experiments.search.evaluator import checked_baselines, load_evaluators, model_info, sets_identity
from experiments.search.export import export
from experiments.search.plots import plot_front, plot_history
from experiments.search.queue import fail_orphans, file_lock, lock_path, open_study, top_up
from experiments.search.spec import SearchSpec, redact, slug, spec_from_args
from experiments.search.tracking import TrialLogger, log_missing_trials, open_parent_run
from experiments.search.trial import describe_trial
from experiments.search.workers import run_workers, work
from experiments.tracking import store
from experiments.tracking.ending import end_stopped_run

log = logging.getLogger(__name__)


@dataclass
class SearchOutcome:
    study: str
    storage: str
    counts: dict[str, int]
    ran: int  # trials run by this command
    files: list[Path] = field(default_factory=list)
    experiment_id: str = ""
    parent_run_id: str = ""
    worker_errors: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 1 if self.worker_errors or not self.counts.get("COMPLETE") else 0


def run_search(spec: SearchSpec) -> SearchOutcome:
    """Run (or resume) a search; see the module docstring."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ev, reporter = load_evaluators(spec, progress=spec.progress)
    model = model_info(spec, ev.loaded)
    sets = sets_identity(ev, reporter)
    baselines, dropped = checked_baselines(spec, ev.loaded)
    for name, reason in dropped.items():  # fixed by the search, not asked for: dropped, not refused
        log.warning("baseline %s dropped: %s", name, reason)
    # one command at a time (on this machine): commands started together would each create the study or
    # top it up to the budget, and run twice the trials asked for
    with file_lock(lock_path(spec)):
        study, new = open_study(spec, model, sets, ev.loaded.device.type)
        interrupted = fail_orphans(study)
        added = top_up(study, spec, new, baselines)
    ctx = open_parent_run(spec, model, sets)
    waiting = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    workers = max(1, min(spec.workers, waiting))
    log.info(f"study {spec.study!r} in {redact(spec.storage)} ({'new' if new else 'resumed'}): "
          f"{len(study.get_trials(deepcopy=False))} trials of --trials {spec.trials}, {waiting} to run on {workers} "
          f"worker(s) ({added} added, {interrupted} interrupted marked failed); selecting on {len(ev.utterances)} "
          f"{ev.source} utterances, reporting on {len(reporter.utterances)} {reporter.source} utterances; "
          f"MLflow {redact(ctx.uri)}, experiment {EXPERIMENT_SEARCH!r}, parent run {ctx.parent_run_id}")
    bar = tqdm(total=waiting, desc=f"search {spec.study}", unit="trial",
               disable=not progress_enabled(spec.progress) or not waiting,
               dynamic_ncols=True)

    def report(t: FrozenTrial) -> None:
        bar.update(1)
        log.info("%s", describe_trial(t, spec))

    errors: list[str] = []
    try:
        if waiting and workers == 1:
            work(study, spec, ev, TrialLogger(ctx, spec), report)
        elif waiting:
            errors = run_workers(spec, ctx, study, workers, report)
    except KeyboardInterrupt as err:  # the running trials were marked failed; a rerun resumes the rest
        end_stopped_run(store.client(ctx.uri), ctx.parent_run_id, err)  # KILLED, the signal as its end reason
        raise
    finally:
        bar.close()
    trials = study.get_trials(deepcopy=False)
    with file_lock(lock_path(spec)):  # two commands ending together would both log a trial they did not run
        backfilled = log_missing_trials(study, ctx, spec)
    files = export(study, spec, reporter, model, ctx, baselines, dropped)
    stem = Path(spec.out_dir) / slug(spec.study)
    pictures = plot_history(study, spec, stem)
    if spec.multi and any(t.state == TrialState.COMPLETE for t in trials):
        pictures += plot_front(study, stem)
    mlf = store.client(ctx.uri)
    for path in [*files, *pictures]:
        store.retry(lambda: mlf.log_artifact(ctx.parent_run_id, str(path)))
    counts = {s.name: n for s in TrialState if (n := sum(1 for t in trials if t.state == s))}
    if errors:
        store.retry(lambda: mlf.set_tag(ctx.parent_run_id, TAG_ERROR, "; ".join(errors)[:5000]))
    store.retry(lambda: mlf.set_terminated(ctx.parent_run_id, "FAILED" if errors else "FINISHED"))
    if backfilled:
        log.info("logged %d trial(s) to MLflow that had no run yet", backfilled)
    return SearchOutcome(spec.study, redact(spec.storage), counts, waiting - counts.get("WAITING", 0),
                         [*files, *pictures], ctx.experiment_id, ctx.parent_run_id, errors)


def cmd_search(args) -> int:
    spec = spec_from_args(args)
    outcome = run_search(spec)
    log.info(f"study {outcome.study!r}: {outcome.ran} trial(s) run now; states {outcome.counts}; "
          f"MLflow parent run {outcome.parent_run_id}")
    for path in outcome.files:
        log.info("wrote %s", path)
    if not outcome.counts.get("COMPLETE"):
        log.warning("no trial completed: no schedule file written (see the failure reasons above and in MLflow)")
    for line in outcome.worker_errors:
        log.error("error: %s", line)
    return outcome.exit_code
