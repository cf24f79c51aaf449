"""What the parts of benchmarks/faults.py share: where things are, progress lines, running `wg2`."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "corpora" / "harvard"
GRID = REPO / "experiments" / "grids" / "quickstart.toml"
QUIET = False  # -q of faults.py: no progress lines


def log(message: str) -> None:
    if not QUIET:
        print(f"[faults {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def wg2_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "experiments.cli", *args]


def wg2_env(tmp: Path, extra_path: str = "") -> dict[str, str]:
    env = dict(os.environ)
    env.update({"PYTHONPATH": os.pathsep.join(p for p in (str(REPO), extra_path) if p),
                "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}", "WG2_RUNS_DIR": str(tmp / "runs"),
                "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"})
    env.pop("WG2_PROGRESS", None)
    return env


def has_traceback(text: str) -> bool:
    return "Traceback (most recent call last)" in text
