"""A run's identity: the config hash (what MLflow runs, grid cells and run folders are found by), the train
hash (the same without `eval.*`: the identity of a trained model), and the resolved config as TOML. Keys added
after runs were recorded are written as before they existed, so old hashes stay valid."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Set as AbstractSet
from typing import Any

from components.configs import ADDED_KEY
from experiments.config.run import SECTIONS, EvalConfig, RunConfig, flatten, to_dict

# Keys that say where or how fast, not what is computed: excluded from a run's identity.
NON_IDENTITY_KEYS = {"data.cache_dir", "eval.metric_workers"}


def _added_key_defaults() -> dict[str, Any]:
    """'section.key' -> default, for every key marked ADDED_KEY (added after runs were recorded)."""
    out = {}
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            if f.metadata.get("identity") == ADDED_KEY["identity"]:
                default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
                out[f"{section}.{f.name}"] = default
    return out


def _identity_items(config: RunConfig) -> dict[str, Any]:
    """flatten(config), with the precision keys written as before they existed where that is possible
    (train.precision "fp32"/"bf16" as train.bf16 = false/true; eval.precision "fp32" left out), and the keys
    added later (ADDED_KEY: the compile keys, ...) left out at their defaults, so runs from before them keep
    their hashes (and resume, and count as done in grids)."""
    items = flatten(config)
    for key, default in _added_key_defaults().items():
        if key in items and items[key] == default:
            del items[key]
    if items.get("train.precision") in ("fp32", "bf16"):
        items["train.bf16"] = items.pop("train.precision") == "bf16"
    if items.get("eval.precision") == "fp32":
        del items["eval.precision"]
    return items


def config_hash(config: RunConfig, exclude: AbstractSet[str] = frozenset()) -> str:
    """A short stable hash of the resolved config: the identity of a run (device and paths excluded)."""
    exclude = set(exclude) | ({"train.bf16"} if "train.precision" in exclude else set())
    items = {k: v for k, v in _identity_items(config).items() if k not in NON_IDENTITY_KEYS | exclude}
    blob = json.dumps(items, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


EVAL_KEYS = frozenset(f"eval.{name}" for name in EvalConfig.__dataclass_fields__)


def train_hash(config: RunConfig) -> str:
    """The identity of a trained model: the config hash without `eval.*`, which never changes the weights. A run
    folder (runs/<train hash>) and its checkpoint belong to every config with this hash, so `wg2 train`, a grid
    cell and an eval-only grid axis find one another's trainings."""
    return config_hash(config, set(EVAL_KEYS))


def to_toml(config: RunConfig) -> str:
    """The resolved config as TOML (every key), for artifacts and checkpoints."""
    lines = []
    for section, values in to_dict(config).items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")
