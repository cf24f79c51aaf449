"""`wg2 search CKPT|RUN_ID --steps 6 [--trials 100] [--objective pesq_wb] [--multi] [--sampler tpe|grid]
[--storage URL] [--study NAME] [--workers N] [--limit-utterances N] [--seed S] [--out DIR]`:
an Optuna search of an inference noise schedule for one trained model, every trial tracked in MLflow.

Search space: experiments/search/space.py (N numbers u_k in [0, 1], log-space increments towards 0.9;
every sample is a valid monotone schedule and known schedules map back to exact parameters).

Objective: the chosen metric (default pesq_wb; any aligned metric with a direction in
evaluation.metrics.METRICS) averaged over a fixed subset of validation utterances: `--limit-utterances`
picked by `--seed` with the same function as `wg2 eval` (experiments.infer.evaluate.pick_utterances), synthesized
with ground-truth durations so output and reference line up. Utterance i is synthesized with noise seed
seed * 1000003 + i: every trial meets the same noise (common random numbers), so differences between trials
are the schedules' and a schedule evaluated twice scores the same (this is how the baselines are checked).
Missing metric values (silent, NaN or too short audio, a PESQ error) are left out of the mean and counted
(user attrs `wg2.n_missing`, `wg2.missing_reasons`); a trial whose objective is missing for every
utterance, or whose synthesis raises (non-finite samples), fails with that reason and the study goes on.
`--multi`: three objectives, PESQ-wb and STOI (maximized) against the step count (minimized), the step
count a parameter in [--min-steps, --max-steps]; `--objective` must then stay pesq_wb. The Pareto front
is study.best_trials.

Sampler and pruning: TPE (multivariate, because u_k acts relative to the beta before it; constant liar, so
parallel workers do not propose the same point; the first TPE_STARTUP trials, baselines included, are the
startup set), seeded with --seed (worker k uses seed + k, worker 0 = the single-worker seed, so a
one-worker study is reproducible). Single-objective trials report their running mean after each batch of
PRUNE_BATCH utterances; a MedianPruner (3 startup trials) stops a trial whose running mean is worse than
the median of earlier trials at that point (state PRUNED, its last running mean kept). `--sampler grid`:
optuna's GridSampler over space.grid_search_space (WaveGrad's authors' baseline), same study format;
the budget counts the enqueued baselines and is capped at baselines + grid points (the whole 3^6 grid of
a 6-step search: --trials 732).

Trial budget: `--trials N` is the study's total. A new study gets the baselines enqueued first (linear-50,
manual-6, fibonacci-25 subsampled to N steps; for --multi at 6, min and max steps), then the parent tops
the study up with plain waiting trials until it holds N. Workers only ever take a waiting trial (under a
file lock, so two local workers never take the same one, which SQLite alone does not prevent), never
create one: together they run exactly N - (trials already there), with distinct numbers. We do not use
MaxTrialsCallback: it counts trials after they end, so each of several workers may start one more trial
before it sees the limit. Rerunning with the same study resumes: finished trials stay, numbering goes
on, baselines are not enqueued again, and a trial left RUNNING by a dead worker on this machine is marked
failed ("interrupted"). A larger --trials extends the study. Workers on other machines join by running
the same command with the same --storage and --study: they take waiting trials of the same queue (start
the first command before the others, since it creates the study; two machines taking the last waiting
trial at the same instant can make one extra trial).

Storage: an SQLite file (default sqlite:///optuna.db in the working directory; created once by the parent
before workers start), or any SQLAlchemy URL, e.g. postgresql://user:pass@host/db for several machines.
`--workers N` starts N spawned processes (torch threads = cores // N each).

MLflow (experiment "wg2 schedule search"): a parent run per study (tags wg2.kind=search, wg2.study,
wg2.study_key = hash of storage and study name, found again on resume), and one child run per trial, logged
by the worker that ran it when the trial ends (params: betas, u's, steps; metrics: every metric's mean,
missing counts, the objective values, the running mean curve, seconds; tags wg2.state COMPLETE / PRUNED /
FAIL and wg2.error with the reason; MLflow status FINISHED / KILLED / FAILED; artifact schedule.json).
The parent logs any finished trial without a run at the end, then the exported schedule files, the
optimization history picture(s) and (--multi) the Pareto-front pictures (Optuna's matplotlib plots with
the baselines, pruned and failed trials marked on them: plots.py).

Output (`--out`, default results/schedules/): `<study>.json` with the best schedule (betas, steps, metric
values), the baselines' values on the same utterances (taken from their enqueued trials; a baseline that
is not a trial of the study, when the budget is smaller than the baseline list, is evaluated separately
with the same protocol), the model (checkpoint, sha256, config hash, MLflow run), the utterances and the
study. `--multi` writes `<study>-<k>steps.json` for each step count on the Pareto front (its best PESQ-wb
trial) and `<study>-front.json` listing the front. Every schedule file loads in `wg2 synth --schedule
FILE` and `wg2 eval --schedules FILE` (they read the key `betas`).

Modules: spec (the command line, the model, the baselines), space (the parametrization), evaluator (scoring
one schedule), trial (one trial's objective and ending), queue (study set-up, waiting trials, claims under
a file lock), tracking (MLflow), workers (running the queue in one or more processes), export (schedule
files), plots (pictures), command (`wg2 search` itself; its `cmd_search` is the package's entry point).

The package itself imports nothing, so its modules import each other without a cycle through it.
"""
