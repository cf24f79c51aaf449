"""benchmarks/faults.py, part `search`: several `wg2 search` commands at once on one study (SQLite, or
PostgreSQL); trials lost, duplicated and failed."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from faults_common import CORPUS, REPO, has_traceback, log, wg2_argv, wg2_env


def train_model(tmp: Path, steps: int) -> Path:
    out = tmp / "model"
    argv = wg2_argv("train", str(REPO / "experiments" / "configs" / "quickstart.toml"), "--device", "cpu", "--out",
                    str(out), "--set", f"train.steps={steps}", "--set", f"train.checkpoint_every={steps}",
                    "--set", "train.warmup_steps=1", "--set", "train.gain_utterances=2",
                    "--set", f"data.root={CORPUS}", "--set", f"data.cache_dir={tmp / 'cache'}")
    log(f"search: training the model to search on ({steps} steps)")
    subprocess.run(argv, cwd=REPO, env=wg2_env(tmp), check=True, capture_output=True, text=True)
    return out / "checkpoint.pt"


def start_postgres(folder: Path, packages: Path):
    """A PostgreSQL server from the pip package `pgserver` (installed with `pip install --target PACKAGES
    pgserver psycopg2-binary`): (server, SQLAlchemy URL, folder holding psycopg2 alone for PYTHONPATH)."""
    sys.path.append(str(packages))  # after the project's own packages: nothing of theirs is shadowed
    import pgserver

    server = pgserver.get_server(str(folder / "pgdata"), cleanup_mode="stop")
    only = folder / "psycopg2-only"
    only.mkdir()
    for name in ("psycopg2", "psycopg2_binary.libs"):
        if (packages / name).exists():
            (only / name).symlink_to(packages / name)
    url = server.get_uri().replace("postgresql://", "postgresql+psycopg2://", 1)
    return server, url, str(only)


def _study_counts(storage: str, study_name: str, budget: int, uri: str, extra_path: str) -> dict:
    """Read the study (in a subprocess when its driver lives on an extra path) and the MLflow trial runs."""
    code = ("import json, sys, optuna\n"
            "s = optuna.load_study(study_name=sys.argv[2], storage=sys.argv[1])\n"
            "print(json.dumps([[t.number, t.state.name, dict(t.params)] for t in s.get_trials(deepcopy=False)]))\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(REPO), extra_path) if p))
    trials = json.loads(subprocess.run([sys.executable, "-c", code, storage, study_name], env=env, check=True,
                                       capture_output=True, text=True).stdout)
    from mlflow import MlflowClient

    from evaluation.runs import EXPERIMENT_SEARCH, KIND_TRIAL, TAG_KIND, TAG_STUDY, TAG_TRIAL_NUMBER

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(EXPERIMENT_SEARCH)
    runs = [] if exp is None else client.search_runs([exp.experiment_id], max_results=5000)
    numbers = Counter(r.data.tags.get(TAG_TRIAL_NUMBER) for r in runs
                      if r.data.tags.get(TAG_KIND) == KIND_TRIAL and r.data.tags.get(TAG_STUDY) == study_name)
    states = Counter(state for _, state, _ in trials)
    finished = [n for n, state, _ in trials if state in ("COMPLETE", "PRUNED", "FAIL")]
    return {"trials": len(trials), "states": dict(states),
            "lost_unfinished": states.get("WAITING", 0) + states.get("RUNNING", 0),
            "lost_without_mlflow_run": sum(1 for n in finished if numbers.get(str(n), 0) == 0),
            "over_budget": max(0, len(trials) - budget),
            "duplicated_mlflow_runs": sum(c - 1 for c in numbers.values() if c > 1),
            "failed": states.get("FAIL", 0)}


def part_search(tmp: Path, storage: str, label: str, workers: int, trials: int, model: Path, seed: int,
                extra_path: str = "") -> dict:
    rng = random.Random(seed)
    study = f"faults-{label}"
    env = wg2_env(tmp, extra_path)
    argv = wg2_argv("search", str(model), "--study", study, "--storage", storage, "--trials", str(trials),
                    "--steps", "3", "--limit-utterances", "2", "--objective", "mel_cd", "--device", "cpu",
                    "--out", str(tmp / f"schedules-{label}"), "-q")
    log(f"search ({label}): {workers} commands on one study, {trials} trials")
    started = time.time()
    procs = []
    for i in range(workers):
        time.sleep(rng.uniform(0.0, 0.5))
        err = open(tmp / f"search-{label}-{i}.err", "w")
        procs.append(subprocess.Popen(argv, cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=err))
    codes = [p.wait() for p in procs]
    texts = [(tmp / f"search-{label}-{i}.err").read_text(errors="replace") for i in range(workers)]
    counts = _study_counts(storage, study, trials, env["MLFLOW_TRACKING_URI"], extra_path)
    counts.update({"storage": label, "workers": workers, "budget": trials, "exit_codes": codes,
                   "seconds": round(time.time() - started, 1), "tracebacks": sum(map(has_traceback, texts)),
                   "lost": counts["lost_unfinished"] + counts["lost_without_mlflow_run"],
                   "duplicated": counts["over_budget"] + counts["duplicated_mlflow_runs"],
                   "stderr_tails": [t.strip().splitlines()[-2:] for t, c in zip(texts, codes)
                                    if c or has_traceback(t)]})
    log(f"search ({label}): {counts['trials']} trials {counts['states']}, lost {counts['lost']}, "
        f"duplicated {counts['duplicated']}, exit codes {codes}")
    return counts
