"""`wg2 grid GRID.toml [--set key=value ...] [--workers N] [--device] [--dry-run]`: an ablation grid in MLflow.

A grid file (TOML):

    name = "upsampling"                       # the MLflow experiment
    description = "Does Gaussian upsampling beat repeat?"   # the question the grid answers
    seeds = [0, 1, 2]                         # default [0]; sets train.seed and eval.seed
    base_file = "../configs/base.toml"        # optional, relative to this file; [base] applies on top
    [base]                                    # a run config: data/model/autoencoder/train/eval
    train.steps = 20000
    [axes]                                    # cells = product of the axes (in file order) x seeds
    "model.upsampler" = ["gaussian", "repeat"]
    "train.window_frames" = [64, 256]
    # a multi-key axis: no dot in its name, each value a table of assignments (optional `label`)
    space = [{ "model.space" = "waveform" },
             { label = "latent-8", "model.space" = "latent", "autoencoder.stride" = 8,
               "model.upsample_factors" = [5, 5, 3] }]
    exclude = [{ "model.upsampler" = "repeat", "train.window_frames" = 256 }]   # before [base]/[axes]

An axis on a list-valued key lists one list per cell: `"eval.schedules" = [["manual-6"], ["linear-50"]]`.
`--set section.key=value` applies to every cell LAST (after base, axes and seeds), so one flag shrinks a
whole grid (`--set train.steps=50`); setting an axis key or a seed key that way is refused.

`exclude` entries are partial assignments: a cell is skipped when every key of an entry matches; keys are
axis keys (also keys inside a multi-key axis), a multi-key axis name (matched against its labels) or `seed`.

Every cell is resolved and validated before anything trains (`--dry-run` stops there and reads no data; a
real run also checks each window against the corpus). Cells that differ only in `eval.*` share one trained
model (runs/<train hash>/, or under $WG2_RUNS_DIR) and are evaluated once each.

MLflow: one experiment per grid, a parent run (tag wg2.kind=grid, reused on rerun), one child run per cell
found by tag wg2.cell_hash. Resume: a FINISHED cell is skipped; an interrupted (RUNNING with a dead owner,
or KILLED) or FAILED cell is taken over in the same run and trains on from its run folder's checkpoint.
Claiming (experiments/tracking.py, claim_run) uses only tags, so several `wg2 grid` commands, on one
machine or on several pointed at one tracking server (MLFLOW_TRACKING_URI), can share a grid: each takes
the cells nobody live holds; a holder on another machine counts as dead when its heartbeat tag is older
than $WG2_STALE_SECONDS (600). Trainings restart from scratch on a machine without the run folder.
"""
from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import queue
import shutil
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from experiments import tracking
from experiments.workers import start_workers, watch_parent
from experiments.config import (SECTIONS, ConfigError, EvalConfig, InputError, RunConfig, config_from_dict,
                                config_hash, flatten, parse_override, read_toml, set_nested, validate)

GRID_KEYS = ("name", "description", "seeds", "base", "base_file", "axes", "exclude")
SEED_KEYS = ("train.seed", "eval.seed")
EVAL_KEYS = frozenset(f"eval.{name}" for name in EvalConfig.__dataclass_fields__)
MAX_ERRORS_SHOWN = 12


@dataclass(frozen=True)
class Axis:
    name: str  # "section.key", or a multi-key axis name without a dot
    values: tuple[Any, ...]  # the values; for a multi-key axis, dicts of "section.key" -> value
    labels: tuple[str, ...]  # how each value is shown in cell labels and in wg2.assignment

    @property
    def multi(self) -> bool:
        return "." not in self.name

    def assignments(self, index: int) -> dict[str, Any]:
        return dict(self.values[index]) if self.multi else {self.name: self.values[index]}

    def keys(self) -> set[str]:
        return {k for v in self.values for k in v} if self.multi else {self.name}


@dataclass(frozen=True)
class Cell:
    label: str  # "model.upsampler=gaussian train.window_frames=64 seed=0": the MLflow run name
    seed: int
    assignment: dict[str, Any]  # axis name -> value (a multi-key axis: its label)
    config: RunConfig
    cell_hash: str  # the whole resolved config: one MLflow run per cell
    train_hash: str  # eval.* excluded: cells sharing it share one trained model
    group: str  # train.seed and eval.seed excluded: the seeds of one cell

    def training_config(self) -> RunConfig:
        """The config the model is trained (and its checkpoint stored) with: eval keys at their defaults,
        so every cell of a train hash asks train() for the same checkpoint."""
        return RunConfig(self.config.data, self.config.model, self.config.autoencoder, self.config.train, EvalConfig())


@dataclass(frozen=True)
class Grid:
    name: str
    description: str
    path: Path
    seeds: tuple[int, ...]
    axes: tuple[Axis, ...]
    overrides: tuple[str, ...]
    cells: tuple[Cell, ...]
    excluded: int

    def trainings(self) -> dict[str, list[Cell]]:
        """Cells by train hash, in grid order: each list is one training then one evaluation per cell."""
        jobs: dict[str, list[Cell]] = {}
        for cell in self.cells:
            jobs.setdefault(cell.train_hash, []).append(cell)
        return jobs


# ----------------------------------------------------------------------------- reading a grid file

def fmt(value: Any) -> str:
    """A value as shown in labels: strings bare, lists compact."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(fmt(v) for v in value) + "]"
    return str(value)


def _dotted(table: dict[str, Any], where: str) -> dict[str, Any]:
    """{"model.space": x} or {"model": {"space": x}} (an unquoted dotted TOML key) -> {"model.space": x}."""
    out = {}
    for key, value in table.items():
        if "." not in key and isinstance(value, dict) and key in SECTIONS:
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    for key in out:
        if key.count(".") != 1 or key.split(".")[0] not in SECTIONS:
            raise ConfigError(f"{where}: {key!r} is not a config key; expected section.key with section in "
                              f"{', '.join(SECTIONS)}")
    return out


def _field_type(dotted: str) -> Any:
    section, name = dotted.split(".")
    fields = SECTIONS[section].__dataclass_fields__
    return fields[name].type if name in fields else None


def _read_axes(raw: Any, where: str) -> list[Axis]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: [axes] must be a table of key = [values]")
    flat: dict[str, Any] = {}
    for name, values in raw.items():
        if isinstance(values, dict):  # `model.upsampler = [...]` unquoted: TOML nests it under "model"
            if name not in SECTIONS:
                raise ConfigError(f"{where}: axes.{name} is a table; expected a list of values")
            flat.update({f"{name}.{k}": v for k, v in values.items()})
        else:
            flat[name] = values
    axes = []
    for name, values in flat.items():
        at = f"{where}: axes.{name}"
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{at}: expected a non-empty list of values, got {values!r}")
        if name in SEED_KEYS:
            raise ConfigError(f"{at}: seeds are set by the grid's `seeds` list, not by an axis")
        if "." in name:
            _dotted({name: None}, where)
            tp = _field_type(name)
            if tp is not None and "list" in str(tp) and not all(isinstance(v, list) for v in values):
                raise ConfigError(f"{at}: {name} holds a list, so the axis lists one list per cell, "
                                  f"e.g. [[\"a\"], [\"b\"]]; got {values!r}")
            labels = tuple(fmt(v) for v in values)
            axes.append(Axis(name, tuple(values), labels))
            continue
        tables, labels = [], []
        for i, value in enumerate(values):
            if not isinstance(value, dict) or not value:
                raise ConfigError(f"{at}[{i}]: a multi-key axis (no dot in its name) takes tables of "
                                  f"\"section.key\" = value, got {value!r}")
            value = dict(value)
            label = value.pop("label", None)
            table = _dotted(value, f"{at}[{i}]")
            if any(k in SEED_KEYS for k in table):
                raise ConfigError(f"{at}[{i}]: seeds are set by the grid's `seeds` list")
            labels.append(str(label) if label is not None else ",".join(fmt(v) for v in table.values()))
            tables.append(table)
        if len(set(labels)) != len(labels):
            raise ConfigError(f"{at}: two values have the same label {labels}; give each a distinct `label`")
        axes.append(Axis(name, tuple(tables), tuple(labels)))
    keys = [k for axis in axes for k in axis.keys()]
    clash = sorted({k for k in keys if keys.count(k) > 1})
    if clash:
        raise ConfigError(f"{where}: {', '.join(clash)} set by more than one axis")
    return axes


def _read_base(spec: dict[str, Any], path: Path) -> dict[str, Any]:
    base: dict[str, Any] = {}
    if "base_file" in spec:
        if not isinstance(spec["base_file"], str):
            raise ConfigError(f"{path}: base_file must be a path string, got {spec['base_file']!r}")
        base = read_toml((path.parent / spec["base_file"]).resolve())
    extra = spec.get("base", {})
    if not isinstance(extra, dict):
        raise ConfigError(f"{path}: [base] must be a table (a run config), got {extra!r}")
    for section, values in extra.items():
        if isinstance(values, dict) and isinstance(base.get(section), dict):
            base[section] = {**base[section], **values}
        else:
            base[section] = values
    return base


def _excluded(entry: dict[str, Any], values: dict[str, Any]) -> bool:
    return all(key in values and values[key] == want for key, want in entry.items())


def load_grid(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Grid:
    """Read a grid file, expand its cells and resolve + validate every one (no data is read).
    Raises InputError listing every bad cell by label and key."""
    path = Path(path)
    spec = read_toml(path)
    unknown = sorted(set(spec) - set(GRID_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key(s) {', '.join(unknown)}; allowed: {', '.join(GRID_KEYS)}")
    name, description = spec.get("name"), spec.get("description")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{path}: `name` (the MLflow experiment) must be a non-empty string")
    if not isinstance(description, str) or not description.strip():
        raise ConfigError(f"{path}: `description` (the question the grid answers) must be a non-empty string")
    seeds = spec.get("seeds", [0])
    if (not isinstance(seeds, list) or not seeds or len(set(seeds)) != len(seeds)
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)):
        raise ConfigError(f"{path}: seeds must be a non-empty list of distinct integers, got {seeds!r}")
    base = _read_base(spec, path)
    axes = _read_axes(spec.get("axes", {}), str(path))
    assigned = {k for axis in axes for k in axis.keys()}

    override_values: dict[str, Any] = {}
    for text in overrides:
        section, key, value = parse_override(text)
        dotted = f"{section}.{key}"
        if dotted in assigned or dotted in SEED_KEYS:
            raise ConfigError(f"--set {text}: {dotted} is {'a grid axis' if dotted in assigned else 'set by seeds'}; "
                              "change the grid file instead")
        override_values[dotted] = value

    exclude = spec.get("exclude", [])
    if not isinstance(exclude, list) or not all(isinstance(e, dict) and e for e in exclude):
        raise ConfigError(f"{path}: exclude must be a list of tables such as {{ \"model.upsampler\" = \"repeat\" }}")
    matchable = assigned | {a.name for a in axes if a.multi} | {"seed"}
    entries = []
    for i, entry in enumerate(exclude):
        entry = {k: v for k, v in _dotted_or_names(entry, matchable, f"{path}: exclude[{i}]").items()}
        entries.append(entry)
    used = [0] * len(entries)

    cells, errors, excluded = [], [], 0
    for seed in seeds:
        for combo in itertools.product(*(range(len(a.values)) for a in axes)):
            assignment, raw_values, parts = {}, {"seed": seed}, []
            for axis, index in zip(axes, combo):
                assignment[axis.name] = axis.labels[index] if axis.multi else axis.values[index]
                raw_values.update(axis.assignments(index))
                if axis.multi:
                    raw_values[axis.name] = axis.labels[index]
                parts.append(f"{axis.name}={axis.labels[index]}")
            label = " ".join(parts + [f"seed={seed}"])
            hits = [i for i, e in enumerate(entries) if _excluded(e, raw_values)]
            if hits:
                excluded += 1
                for i in hits:
                    used[i] += 1
                continue
            try:
                cells.append(_resolve_cell(path, base, axes, combo, seed, override_values, label, assignment))
            except ConfigError as err:
                errors.append(str(err))
    for i, count in enumerate(used):
        if not count:
            errors.append(f"{path}: exclude[{i}] {entries[i]} matches no cell; check its keys and values")
    seen: dict[str, str] = {}
    for cell in cells:
        if cell.cell_hash in seen:
            errors.append(f"{path}: cells [{seen[cell.cell_hash]}] and [{cell.label}] resolve to the same config")
        seen[cell.cell_hash] = cell.label
    if errors:
        shown = errors[:MAX_ERRORS_SHOWN]
        more = f"\n  ... and {len(errors) - len(shown)} more" if len(errors) > len(shown) else ""
        raise ConfigError(f"{path}: {len(errors)} problem(s) in the grid:\n  " + "\n  ".join(shown) + more)
    if not cells:
        raise ConfigError(f"{path}: every cell is excluded; nothing to run")
    return Grid(name.strip(), description.strip(), path, tuple(seeds), tuple(axes), tuple(overrides), tuple(cells),
                excluded)


def _dotted_or_names(entry: dict[str, Any], matchable: set[str], where: str) -> dict[str, Any]:
    out = {}
    for key, value in entry.items():
        if isinstance(value, dict) and key in SECTIONS:
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    bad = sorted(set(out) - matchable)
    if bad:
        raise ConfigError(f"{where}: {', '.join(bad)} is not set by any axis; exclude can name "
                          f"{', '.join(sorted(matchable))}")
    return out


def _resolve_cell(path: Path, base: dict, axes: list[Axis], combo: tuple[int, ...], seed: int,
                  overrides: dict[str, Any], label: str, assignment: dict[str, Any]) -> Cell:
    raw = dict(base)
    for axis, index in zip(axes, combo):
        raw = set_nested(raw, axis.assignments(index))
    raw = set_nested(raw, {key: seed for key in SEED_KEYS})
    raw = set_nested(raw, overrides)
    where = f"{path}: cell [{label}]"
    config = config_from_dict(raw, where)
    validate(config, where)
    return Cell(label, seed, assignment, config, config_hash(config), config_hash(config, set(EVAL_KEYS)),
                config_hash(config, set(SEED_KEYS)))


def check_windows(grid: Grid, progress: bool = True) -> None:
    """The data-dependent check: a training window must fit in the longest training utterance.
    Reads (and caches) each distinct corpus of the grid once."""
    longest: dict[Any, int] = {}
    problems = []
    for cell in grid.cells:
        data = cell.config.data
        if data not in longest:
            dataset = _dataset(cell.config, progress)
            if not dataset.train:
                raise ConfigError(f"{grid.path}: cell [{cell.label}]: data.root {data.root} has no training utterances")
            longest[data] = max(int(u.durations.sum()) for u in dataset.train)
        if cell.config.train.window_frames > longest[data]:
            problems.append(f"cell [{cell.label}]: train.window_frames = {cell.config.train.window_frames} is longer "
                            f"than the longest training utterance of {data.root} ({longest[data]} frames)")
    if problems:
        raise ConfigError(f"{grid.path}: " + "\n  ".join(problems))


def describe(grid: Grid) -> str:
    """The dry-run listing: every cell with its cell hash and train hash."""
    width = max(len(c.label) for c in grid.cells)
    lines = [f"grid {grid.name!r}: {grid.description}",
             f"{grid.path}: {len(grid.cells)} cells ({grid.excluded} excluded), {len(grid.trainings())} trainings, "
             f"seeds {list(grid.seeds)}" + (f", overrides {list(grid.overrides)}" if grid.overrides else ""),
             f"  {'cell':{width}s}  cell hash     train hash",
             *(f"  {c.label:{width}s}  {c.cell_hash}  {c.train_hash}" for c in grid.cells)]
    return "\n".join(lines)


def runs_dir() -> Path:
    return Path(os.environ.get("WG2_RUNS_DIR", "runs")).resolve()


# ----------------------------------------------------------------------------- running cells

@dataclass(frozen=True)
class RunContext:
    """What a worker needs besides its cells (picklable: sent to spawned processes)."""
    uri: str
    experiment_id: str
    parent_run_id: str
    grid_name: str
    device: str
    runs_dir: str
    overrides: tuple[str, ...]
    progress: bool


@dataclass
class CellOutcome:
    label: str
    cell_hash: str
    status: str  # finished | failed | skipped (finished before) | busy (a live worker elsewhere has it)
    run_id: str | None = None
    error: str | None = None
    seconds: float = 0.0


@dataclass
class GridOutcome:
    grid: Grid
    experiment_id: str | None = None
    parent_run_id: str | None = None
    outcomes: list[CellOutcome] = field(default_factory=list)
    dry_run: bool = False

    def with_status(self, status: str) -> list[CellOutcome]:
        return [o for o in self.outcomes if o.status == status]

    @property
    def exit_code(self) -> int:
        return 1 if self.with_status("failed") else 0


def _new_cell_run(mlf, ctx: RunContext, cell: Cell, tags: dict[str, str]) -> str:
    tags = {**tags, "mlflow.parentRunId": ctx.parent_run_id, "wg2.kind": "cell", "wg2.grid_name": ctx.grid_name,
            "wg2.train_hash": cell.train_hash, "wg2.group": cell.group, "wg2.seed": str(cell.seed),
            "wg2.assignment": json.dumps(cell.assignment, sort_keys=True), "wg2.label": cell.label,
            "wg2.overrides": json.dumps(list(ctx.overrides))}
    run = tracking.retry(lambda: mlf.create_run(ctx.experiment_id, run_name=cell.label, tags=tags))
    return run.info.run_id


_DATASETS: dict[Any, Any] = {}  # per process: a worker reads each corpus once


def _dataset(config: RunConfig, progress: bool):
    from experiments.corpus import load_dataset

    if config.data not in _DATASETS:
        _DATASETS[config.data] = load_dataset(config.data, progress=progress)
    return _DATASETS[config.data]


class _FolderLock:
    """An exclusive lock on a run folder while a model trains there: a second process (another grid on
    this machine) waits, then finds the checkpoint complete. The OS drops it when the process dies."""

    def __init__(self, folder: Path):
        self.path = folder / ".lock"

    def __enter__(self) -> "_FolderLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(self.path, "a")
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks; one grid per run folder at a time there
            return self
        fcntl.flock(self.handle, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc) -> None:
        self.handle.close()


def _autoencoder_run(result) -> str | None:
    """The MLflow run of a latent model's stage-one autoencoder: from train(), or from the checkpoint when
    train() found the model already trained (then it does not report it)."""
    info = result.autoencoder_run
    if info is None:
        import torch

        state = torch.load(result.checkpoint, map_location="cpu", weights_only=True, mmap=True)
        info = state.get("autoencoder_info")
    return (info or {}).get("mlflow_run_id")


def _execute(cell: Cell, ctx: RunContext, mlf, run_id: str) -> None:
    from experiments.config import to_toml
    from experiments.evaluate import evaluate
    from experiments.synth import load_checkpoint
    from experiments.train import resolve_device, train

    device = str(resolve_device(ctx.device))
    run = mlf.get_run(run_id)
    tracking.retry(lambda: tracking.log_tags(mlf, run_id, tracking.run_tags(device)))
    if not run.data.params:  # params once per run, even when the run is resumed
        tracking.retry(lambda: tracking.log_params(mlf, run_id, flatten(cell.config)))
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "config.toml").write_text(to_toml(cell.config))
            mlf.log_artifact(run_id, str(Path(tmp) / "config.toml"))

    folder = Path(ctx.runs_dir) / cell.train_hash
    curves = tracking.CurveLogger(mlf, run_id, tracking.logged_steps(mlf, run_id))
    dataset = _dataset(cell.config, ctx.progress)
    with _FolderLock(folder):
        result = train(cell.training_config(), folder, device=ctx.device, resume=True, progress=ctx.progress,
                       on_log=curves.on_log, dataset=dataset)
    curves.flush(result.history)
    autoencoder_run = _autoencoder_run(result) if cell.config.model.space == "latent" else None
    if autoencoder_run:  # latent space: `wg2 compare` shows the autoencoder's reconstruction ceiling
        tracking.retry(lambda: mlf.set_tag(run_id, "wg2.autoencoder_run", autoencoder_run))
    figures = {f"train/{k}": v for k, v in result.throughput.items()}
    if result.wall_seconds:
        figures["train/wall_seconds"] = result.wall_seconds
    tracking.retry(lambda: tracking.log_metrics(mlf, run_id, figures, step=result.steps))

    loaded = load_checkpoint(result.checkpoint, ctx.device)
    eval_dir = folder / "eval" / cell.cell_hash
    shutil.rmtree(eval_dir, ignore_errors=True)  # leftovers of an interrupted evaluation
    evaluated = evaluate(loaded, cell.config.eval, eval_dir, dataset=dataset, progress=ctx.progress)
    tracking.retry(lambda: tracking.log_metrics(mlf, run_id, evaluated.metrics))
    mlf.log_artifacts(run_id, str(eval_dir))
    mlf.log_artifact(run_id, str(result.checkpoint))


def run_cell(cell: Cell, ctx: RunContext, mlf=None) -> CellOutcome:
    """Claim the cell's MLflow run, train (resuming the run folder), evaluate, log; never raises for a
    failing cell: the run is marked FAILED with the error as tag wg2.error and the traceback as error.log."""
    mlf = mlf or tracking.client(ctx.uri)
    started = time.perf_counter()
    run_id, state = tracking.claim_run(mlf, ctx.experiment_id, "wg2.cell_hash", cell.cell_hash,
                                       lambda tags: _new_cell_run(mlf, ctx, cell, tags))
    if state in ("finished", "busy"):
        return CellOutcome(cell.label, cell.cell_hash, "skipped" if state == "finished" else "busy", run_id)
    try:
        with tracking.Heartbeat(ctx.uri, run_id):
            _execute(cell, ctx, mlf, run_id)
    except KeyboardInterrupt:
        tracking.retry(lambda: mlf.set_terminated(run_id, "KILLED"))
        raise
    except Exception as err:  # noqa: BLE001 - any failure of one cell is recorded and the grid goes on
        message = f"{type(err).__name__}: {err}"
        text = f"cell [{cell.label}] ({cell.cell_hash})\n\n{traceback.format_exc()}"
        try:
            with tempfile.TemporaryDirectory() as tmp:
                (Path(tmp) / "error.log").write_text(text)
                mlf.log_artifact(run_id, str(Path(tmp) / "error.log"))
            tracking.retry(lambda: mlf.set_tag(run_id, "wg2.error", message[:5000]))
            tracking.retry(lambda: mlf.set_terminated(run_id, "FAILED"))
        except Exception:  # noqa: BLE001 - the store itself failing must not hide the cell's error
            traceback.print_exc()
        return CellOutcome(cell.label, cell.cell_hash, "failed", run_id, message, time.perf_counter() - started)
    if "wg2.error" in mlf.get_run(run_id).data.tags:  # an earlier attempt failed; this one did not
        tracking.retry(lambda: mlf.delete_tag(run_id, "wg2.error"))
    tracking.retry(lambda: mlf.set_terminated(run_id, "FINISHED"))
    return CellOutcome(cell.label, cell.cell_hash, "finished", run_id, None, time.perf_counter() - started)


# ----------------------------------------------------------------------------- the grid's parent run

def _parent_run(mlf, experiment_id: str, grid: Grid, device: str) -> str:
    """The grid's parent run: found by tag wg2.kind=grid and reused on every rerun, or created once."""
    tags = {"wg2.kind": "grid", "wg2.grid_name": grid.name, "wg2.description": grid.description,
            "mlflow.note.content": grid.description, "wg2.axes": json.dumps([a.name for a in grid.axes]),
            "wg2.seeds": json.dumps(list(grid.seeds)), "wg2.grid_file": str(grid.path),
            "wg2.git_commit": tracking.git_commit(), "wg2.machine": tracking.machine(device)}
    query = "tags.`wg2.kind` = 'grid'"
    runs = tracking.retry(lambda: tracking.search_all_runs(mlf, [experiment_id], query))
    if not runs:
        mine = tracking.retry(lambda: mlf.create_run(experiment_id, run_name=f"grid: {grid.name}", tags=tags))
        runs = tracking.retry(lambda: tracking.search_all_runs(mlf, [experiment_id], query))
        winner = tracking.earliest(runs)
        if winner.info.run_id != mine.info.run_id:  # another process created it at the same moment
            tracking.retry(lambda: mlf.delete_run(mine.info.run_id))
        runs = [winner]
    run_id = tracking.earliest(runs).info.run_id
    cells = expected_cells(grid)
    listed = json.dumps(cells)
    if len(listed) <= 5000:  # MLflow caps tag values; cells.json (below) always holds the list
        tags["wg2.expected_cells"] = listed
    tracking.retry(lambda: tracking.log_tags(mlf, run_id, tags))
    tracking.retry(lambda: mlf.update_run(run_id, status="RUNNING"))
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "cells.json").write_text(json.dumps({"cells": cells}, indent=1))
        mlf.log_artifact(run_id, str(Path(tmp) / "cells.json"))
    mlf.log_artifact(run_id, str(grid.path))
    return run_id


def expected_cells(grid: Grid) -> list[dict[str, Any]]:
    """The grid's cells for reports (`wg2 compare` lists the missing ones): label, hashes, assignment, seed."""
    return [{"label": c.label, "cell_hash": c.cell_hash, "train_hash": c.train_hash, "group": c.group,
             "assignment": c.assignment, "seed": c.seed} for c in grid.cells]


def _finished_cells(mlf, experiment_id: str) -> set[str]:
    query = "tags.`wg2.kind` = 'cell' and attributes.status = 'FINISHED'"
    return {r.data.tags.get("wg2.cell_hash") for r in tracking.retry(
        lambda: tracking.search_all_runs(mlf, [experiment_id], query))}


# ----------------------------------------------------------------------------- workers



def _worker_main(ctx: RunContext, jobs, results) -> None:
    """One worker process: takes whole trainings (cells sharing a train hash, in order) from the queue."""
    watch_parent()
    mlf = tracking.client(ctx.uri)
    while True:
        job = jobs.get()
        if job is None:
            return
        for cell in job:
            results.put(run_cell(cell, ctx, mlf))




def _run_parallel(jobs: list[list[Cell]], ctx: RunContext, workers: int, record) -> None:
    mp = multiprocessing.get_context("spawn")  # not fork: the parent may hold torch threads and CUDA
    job_queue, results = mp.Queue(), mp.Queue()
    for job in jobs:
        job_queue.put(job)
    for _ in range(workers):
        job_queue.put(None)
    procs = start_workers(mp, _worker_main, lambda i: (ctx, job_queue, results), workers, ctx.device,
                          "wg2-grid-worker")
    remaining = {cell.cell_hash: cell for job in jobs for cell in job}
    try:
        while remaining:
            try:
                outcome = results.get(timeout=1.0)
            except queue.Empty:
                if not any(p.is_alive() for p in procs) and results.empty():
                    break
                continue
            remaining.pop(outcome.cell_hash, None)
            record(outcome)
    except KeyboardInterrupt:
        for proc in procs:  # the workers got the interrupt too: let them mark their runs KILLED
            proc.join(timeout=15)
        raise
    for proc in procs:
        proc.join(timeout=30)
    codes = sorted({p.exitcode for p in procs if p.exitcode})
    for cell in remaining.values():
        record(CellOutcome(cell.label, cell.cell_hash, "failed",
                           error=f"worker process exited (code {codes or '?'}) before this cell ended; rerun the "
                                 "grid to resume it"))


# ----------------------------------------------------------------------------- the command

def run_grid(path: str | Path, overrides: list[str] | tuple[str, ...] = (), workers: int = 1, device: str = "auto",
             dry_run: bool = False, progress: bool = True) -> GridOutcome:
    """Run (or resume) a grid; see the module docstring. Raises InputError (exit 2) before any training
    when the grid, a cell or the data is wrong."""
    from tqdm import tqdm

    from experiments.train import resolve_device

    grid = load_grid(path, list(overrides))
    if workers < 1:
        raise InputError(f"--workers {workers}: expected at least 1")
    if dry_run:
        print(describe(grid))
        print("dry run: nothing trained; the corpus was not read, so the check that each training window "
              "fits the longest training utterance was skipped")
        return GridOutcome(grid, dry_run=True)
    resolved = str(resolve_device(device))  # `--device cuda` without a GPU: exit 2 now, not a failed cell each
    check_windows(grid, progress)

    uri = tracking.ensure_store(tracking.tracking_uri())  # once, here, before any worker opens it
    experiment_id = tracking.get_or_create_experiment(grid.name, uri=uri)
    mlf = tracking.client(uri)
    parent_id = _parent_run(mlf, experiment_id, grid, resolved)
    outcome = GridOutcome(grid, experiment_id, parent_id)
    done = _finished_cells(mlf, experiment_id)
    outcome.outcomes += [CellOutcome(c.label, c.cell_hash, "skipped") for c in grid.cells if c.cell_hash in done]
    jobs = [[c for c in job if c.cell_hash not in done] for job in grid.trainings().values()]
    jobs = [job for job in jobs if job]
    workers = min(workers, max(1, len(jobs)))
    ctx = RunContext(uri, experiment_id, parent_id, grid.name, device, str(runs_dir()), grid.overrides,
                     progress and workers == 1)  # several workers' training bars would overwrite each other
    print(f"grid {grid.name!r}: {len(grid.cells)} cells, {len(done)} already finished, "
          f"{sum(map(len, jobs))} to run in {len(jobs)} trainings on {workers} worker(s); MLflow {uri}")
    bar = tqdm(total=len(grid.cells), initial=len(outcome.outcomes), desc=f"grid {grid.name}", unit="cell",
               disable=not progress, dynamic_ncols=True)

    def record(result: CellOutcome) -> None:
        outcome.outcomes.append(result)
        bar.update(1)
        bar.set_postfix(failed=len(outcome.with_status("failed")))
        if result.status in ("finished", "failed", "busy"):
            bar.write(f"{result.status}: [{result.label}] {result.error or ''}".rstrip())

    try:
        if workers == 1:
            for job in jobs:
                for cell in job:
                    record(run_cell(cell, ctx, mlf))
        else:
            _run_parallel(jobs, ctx, workers, record)
    finally:
        bar.close()
    if outcome.with_status("failed"):
        tracking.retry(lambda: mlf.set_terminated(parent_id, "FAILED"))
    elif not outcome.with_status("busy"):  # cells still running elsewhere: the parent stays RUNNING
        tracking.retry(lambda: mlf.set_terminated(parent_id, "FINISHED"))
    print(summary(outcome))
    return outcome


def summary(outcome: GridOutcome) -> str:
    counts = {s: len(outcome.with_status(s)) for s in ("finished", "skipped", "failed", "busy")}
    lines = [f"grid {outcome.grid.name!r}: {len(outcome.grid.cells)} cells: {counts['finished']} finished now, "
             f"{counts['skipped']} finished before, {counts['failed']} failed, {counts['busy']} being run elsewhere; "
             f"experiment id {outcome.experiment_id}, parent run {outcome.parent_run_id}"]
    if counts["failed"]:
        lines.append("failed cells (error tag wg2.error, traceback in the run's error.log; rerun to retry):")
        lines += [f"  [{o.label}] run {o.run_id}: {o.error}" for o in outcome.with_status("failed")]
    return "\n".join(lines)


def cmd_grid(args) -> int:
    return run_grid(args.grid, args.overrides, args.workers, args.device, args.dry_run).exit_code
