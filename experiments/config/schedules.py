"""Schedules as users give them (train.schedule, eval.schedules, --schedule): a registry name
(components/schedules.py: `linear-N`, `cosine-N`, ...) or a .json/.toml file holding `betas = [...]`.
File reading lives here, so components/ only ever sees names and arrays."""
from __future__ import annotations

import json
import tomllib
from pathlib import Path

import numpy as np

from components.schedules import BETA_MAX, BETA_MIN, UnknownScheduleError, check_betas, resolve_schedule_name

SCHEDULE_FILE_SUFFIXES = (".json", ".toml")


def is_schedule_file(name: str) -> bool:
    return Path(name).suffix in SCHEDULE_FILE_SUFFIXES


def resolve_schedule(name: str) -> np.ndarray:
    """Name or file -> float64 betas. Raises ValueError naming what is allowed."""
    if is_schedule_file(name):
        return load_schedule_file(name)
    try:
        return resolve_schedule_name(name)
    except UnknownScheduleError as err:
        raise ValueError(f"{err}, or a .json/.toml file with `betas = [...]`") from None


def load_schedule_file(path: str | Path) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"schedule file {path}: not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"schedule file {path}: not text (a binary file?); expected JSON or TOML text holding "
                         "`betas = [...]`") from None
    except OSError as err:
        raise ValueError(f"schedule file {path}: unreadable: {err.strerror or err}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as err:
        raise ValueError(f"schedule file {path}: unreadable: {err}") from err
    if isinstance(data, list):
        betas = data
    elif isinstance(data, dict) and "betas" in data:
        betas = data["betas"]
    else:
        raise ValueError(f"schedule file {path}: expected a key `betas` holding a list of numbers")
    if not isinstance(betas, list) or not all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in betas):
        raise ValueError(f"schedule file {path}: `betas` must be a list of numbers")
    try:
        values = np.asarray(betas, dtype=np.float64)
    except OverflowError:
        raise ValueError(f"schedule file {path}: a beta is too large for a number; expected betas in "
                         f"[{BETA_MIN:g}, {BETA_MAX:g}]") from None
    return check_betas(values, f"schedule file {path}")


def schedule_label(name: str) -> str:
    """A short name for tables and metric keys: files by stem, names as given."""
    return Path(name).stem if is_schedule_file(name) else name
