"""Grid files: reading one, expanding its cells and resolving + validating each (no data read, nothing heavy
imported). experiments/grid/run.py runs the result (`wg2 grid`).

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

Every cell is resolved and validated here, before anything trains; the one data-dependent check (each
training window against the corpus) is experiments.grid.cell.check_windows. A cell's cell hash covers its whole resolved
config; cells that differ only in `eval.*` share a train hash, hence one trained model.
"""
from __future__ import annotations

import itertools
import math
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experiments.config.identity import config_hash, train_hash
from experiments.config.run import (
    SECTIONS,
    ConfigError,
    EvalConfig,
    RunConfig,
    config_from_dict,
    field_types,
    parse_override,
    read_toml,
    set_nested,
    validate,
)

GRID_KEYS = ("name", "description", "seeds", "base", "base_file", "axes", "exclude")
SEED_KEYS = ("train.seed", "eval.seed")
MAX_ERRORS_SHOWN = 12
MAX_CELLS = 1000  # a larger product is refused before expanding (`--max-cells N` raises it)
PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9 ._+=,@-]*")


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
    return field_types(SECTIONS[section]).get(name)


def _read_axes(raw: Any, where: str) -> list[Axis]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: [axes] must be a table of key = [values]")
    flat: dict[str, Any] = {}
    for name, values in raw.items():
        if isinstance(values, dict):  # `model.upsampler = [...]` unquoted: TOML nests it under "model"
            if name not in SECTIONS:
                raise ConfigError(f"{where}: axes.{name} is a table; expected a list of values")
            for key, value in values.items():
                dotted = f"{name}.{key}"
                if dotted in flat:
                    raise ConfigError(f"{where}: axes.{dotted} is given twice (quoted and unquoted); keep one")
                flat[dotted] = value
        elif name in flat:
            raise ConfigError(f"{where}: axes.{name} is given twice (quoted and unquoted); keep one")
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
            if typing.get_origin(tp) is list and not all(isinstance(v, list) for v in values):
                raise ConfigError(f"{at}: {name} holds a list, so the axis lists one list per cell, "
                                  f"e.g. [[\"a\"], [\"b\"]]; got {values!r}")
            axes.append(Axis(name, tuple(values), tuple(fmt(v) for v in values)))
            continue
        tables: list[dict[str, Any]] = []
        labels = []
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


def load_grid(path: str | Path, overrides: list[str] | tuple[str, ...] = (), max_cells: int = MAX_CELLS) -> Grid:
    """Read a grid file, expand its cells and resolve + validate every one (no data is read).
    Raises InputError listing every bad cell by label and key; a product of the axes and seeds above
    `max_cells` is refused from the counts alone, before any cell is expanded."""
    path = Path(path)
    spec = read_toml(path)
    unknown = sorted(set(spec) - set(GRID_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key(s) {', '.join(unknown)}; allowed: {', '.join(GRID_KEYS)}")
    name, description = spec.get("name"), spec.get("description")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{path}: `name` (the MLflow experiment) must be a non-empty string")
    if not plain_name(name.strip()):
        raise ConfigError(f"{path}: name = {name!r} is not a plain name; expected letters, digits and . _ - + "
                          "(no / or \\, not starting with . or ~): it names the folder results/<name>")
    if not isinstance(description, str) or not description.strip():
        raise ConfigError(f"{path}: `description` (the question the grid answers) must be a non-empty string")
    seeds = spec.get("seeds", [0])
    if (not isinstance(seeds, list) or not seeds or len(set(seeds)) != len(seeds)
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)):
        raise ConfigError(f"{path}: seeds must be a non-empty list of distinct integers, got {seeds!r}")
    base = _read_base(spec, path)
    axes = _read_axes(spec.get("axes", {}), str(path))
    assigned = {k for axis in axes for k in axis.keys()}
    count = len(seeds) * math.prod(len(axis.values) for axis in axes)
    if count > max_cells:
        shape = " x ".join([str(len(a.values)) for a in axes] + [f"{len(seeds)} seed(s)"])
        raise ConfigError(f"{path}: the grid has {count} cells ({shape}), over the limit of {max_cells}; "
                          f"shrink its axes, or raise the limit with --max-cells {count}")

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
    entries = [_dotted_or_names(entry, matchable, f"{path}: exclude[{i}]") for i, entry in enumerate(exclude)]
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


def plain_name(name: str) -> bool:
    """A grid name that is safe as one folder name under results/: no path separators, no leading . or ~."""
    return bool(PLAIN_NAME.fullmatch(name))


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
    return Cell(label, seed, assignment, config, config_hash(config), train_hash(config),
                config_hash(config, set(SEED_KEYS)))


# ----------------------------------------------------------------------------- showing a grid

def describe(grid: Grid) -> str:
    """The dry-run listing: every cell with its cell hash and train hash."""
    width = max(len(c.label) for c in grid.cells)
    lines = [f"grid {grid.name!r}: {grid.description}",
             f"{grid.path}: {len(grid.cells)} cells ({grid.excluded} excluded), {len(grid.trainings())} trainings, "
             f"seeds {list(grid.seeds)}" + (f", overrides {list(grid.overrides)}" if grid.overrides else ""),
             f"  {'cell':{width}s}  cell hash     train hash",
             *(f"  {c.label:{width}s}  {c.cell_hash}  {c.train_hash}" for c in grid.cells)]
    return "\n".join(lines)


def expected_cells(grid: Grid) -> list[dict[str, Any]]:
    """The grid's cells for reports (`wg2 compare` lists the missing ones): label, hashes, assignment, seed."""
    return [{"label": c.label, "cell_hash": c.cell_hash, "train_hash": c.train_hash, "group": c.group,
             "assignment": c.assignment, "seed": c.seed} for c in grid.cells]
