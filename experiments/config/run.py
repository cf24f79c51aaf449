"""Run configuration: typed dataclass sections read from TOML, strict about keys and types.

A run config has the sections `data`, `model`, `autoencoder`, `train` and `eval`; every key has a
default in its dataclass, so a file states only what differs. `--set section.key=value`
overrides any key with the same type checks. Anything unknown fails before work starts, naming
the file, the key and what was expected.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import tomllib
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.configs import ADDED_KEY, AutoencoderConfig, ModelConfig
from components.diffusion import LOSS_KINDS

# train.precision / eval.precision (resolved per device in experiments/train/precision.py)
PRECISIONS = ("fp32", "bf16", "auto")
LR_DECAYS = ("none", "cosine")  # train.lr_decay
WEIGHT_SETS = ("ema", "raw")  # eval.weights


class InputError(ValueError):
    """Bad user input (a file, a key, a value); the CLI prints it and exits 2 before expensive work."""


class ConfigError(InputError):
    """A config file or override is wrong; the message names the key and what was expected."""


@dataclass(frozen=True)
class DataConfig:
    root: str = "corpora/harvard"  # LJSpeech-layout folder; `wg2 corpus build` makes this one
    alignments: str = ""  # folder searched for ID.TextGrid; "" means <root>/alignments
    sample_rate: int = 22050  # audio at another rate is resampled on load
    hop_length: int = 300  # samples per frame: the frame grid durations are counted on
    val_fraction: float = 0.05
    test_fraction: float = 0.05
    max_utterances: int = 0  # 0 = all; a positive number keeps the first N utterances by ID
    cache_dir: str = ".cache/wg2"  # processed-data cache, keyed by corpus content + this config
    skip_bad: bool = False  # drop unusable utterances instead of failing


# Defaults are WaveGrad 2's as published (Chen et al., Interspeech 2021); where the paper is silent, lmnt-com/wavegrad's
# (src/wavegrad/params.py: Adam at 2e-4, no weight decay, no warm-up or decay, gradient norm clipped at 1.0, no weight
# averaging). A config that departs says so: experiments/config/departures.py lists every key with a paper value, and
# `wg2 config show` prints the departures of a config.
@dataclass(frozen=True)
class TrainConfig:
    steps: int = 2000  # a budget, not a modelling choice (the paper trains 1M steps)
    batch_size: int = 32  # a budget too (lmnt-com/wavegrad: 32)
    window_frames: int = 64  # random window of the upsampled sequence (64 or 256 in the paper)
    learning_rate: float = 2e-4  # lmnt-com/wavegrad
    # Linear warm-up over this many steps (0: none, as lmnt-com/wavegrad); then the rate follows lr_decay.
    warmup_steps: int = field(default=0, metadata=ADDED_KEY)
    # "none": constant rate (lmnt-com/wavegrad); "cosine": cosine decay to 10% of the peak by the last step
    # (a departure the CPU configs take: short runs end at a low rate instead of mid-flight).
    lr_decay: str = field(default="none", metadata=ADDED_KEY)
    weight_decay: float = field(default=0.0, metadata=ADDED_KEY)  # AdamW's decoupled decay; 0 = Adam, as the paper
    grad_clip: float = 1.0  # gradient norm (lmnt-com/wavegrad's max_grad_norm)
    noise_loss: str = "l1"  # "l1" (paper) or "l2"
    duration_loss_weight: float = 1.0
    schedule: str = "linear-1000"  # training noise schedule (any schedule name or file)
    # network arithmetic: "fp32", "bf16" or "auto" (bf16 where native; experiments/train/precision.py)
    precision: str = "fp32"
    # torch.compile the decoder for training (experiments/train/precision.py, compile_decoder)
    compile: bool = field(default=False, metadata=ADDED_KEY)
    seed: int = 0
    # Exponential moving average of the weights, used by eval, synth and search (0 = off, the paper and
    # lmnt-com/wavegrad). The decay warms up as min(ema_decay, (1 + step) / (10 + step)), so short CPU runs are not
    # stuck near the init. Which set an evaluation loads is eval.weights.
    ema_decay: float = field(default=0.0, metadata=ADDED_KEY)
    # Auxiliary loss, not in WaveGrad 2 (whose point is end-to-end training without a mel): a linear head predicts
    # each frame's standardized log-mel from the upsampled encoder states (experiments/train/mel_targets.py). 0 = the
    # paper; the CPU configs set 1 so that tiny models read their text within minutes (results/departures).
    mel_loss_weight: float = field(default=0.0, metadata=ADDED_KEY)
    # held-out (val) utterances the conditioning gain is measured on at every checkpoint (0 = never)
    gain_utterances: int = 4
    checkpoint_every: int = 500
    log_every: int = 25


@dataclass(frozen=True)
class EvalConfig:
    schedules: list[str] = field(default_factory=lambda: ["manual-6", "linear-50"])
    split: str = "val"
    limit: int = 16  # utterances scored per schedule; 0 = the whole split
    pace: float = 1.0  # > 1 speaks faster (predicted durations divided by pace)
    batch_size: int = 1  # synthesis batch size used for the real-time factor
    audio_artifacts: int = 3  # utterances kept as wavs: per schedule both passes, and their references
    metric_workers: int = 2  # processes computing metrics
    seed: int = 0
    precision: str = "fp32"  # synthesis network arithmetic: "fp32", "bf16" or "auto" (as train.precision)
    # Which weights are evaluated: "ema" (the moving average, when the run kept one: train.ema_decay > 0) or "raw".
    # An eval-only axis: both share one training.
    weights: str = field(default="ema", metadata=ADDED_KEY)
    # torch.compile the decoder for synthesis (dynamic shapes: utterance lengths vary)
    compile: bool = field(default=False, metadata=ADDED_KEY)


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


SECTIONS = {"data": DataConfig, "model": ModelConfig, "autoencoder": AutoencoderConfig,
            "train": TrainConfig, "eval": EvalConfig}


# ----------------------------------------------------------------------------- type checking

def _expected(tp: Any) -> str:
    if typing.get_origin(tp) is list:
        return f"a list of {typing.get_args(tp)[0].__name__}"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Return value as type tp (a resolved annotation, see field_types), or raise ConfigError naming `where`.
    Ints are accepted as floats."""
    origin = typing.get_origin(tp)
    if origin is list or tp is list:
        (item_tp,) = typing.get_args(tp) or (Any,)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected {_expected(tp)}, got {value!r}")
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        raise ConfigError(f"{where}: union types are not supported in configs")
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is Any:
        return value
    raise ConfigError(f"{where}: expected {_expected(tp)}, got {value!r} ({type(value).__name__})")


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """A config section's keys and their types, the annotations resolved (typing.get_type_hints: the modules
    use `from __future__ import annotations`, so dataclass fields hold them as strings)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _section_from_dict(cls: type, values: dict[str, Any], where: str) -> Any:
    fields = field_types(cls)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(fields)}")
    kwargs = {k: _coerce(v, fields[k], f"{where}.{k}") for k, v in values.items()}
    return cls(**kwargs)


# Keys configs (and checkpoints) once had that no longer do anything: read and dropped. train.num_workers set
# DataLoader workers, but batches are built in-process; it was never part of a run's identity.
RETIRED_KEYS = {"train": ("num_workers",)}


def _legacy_train(section: dict[str, Any], where: str) -> dict[str, Any]:
    """Configs (and checkpoints) from before train.precision said `train.bf16 = true|false`, or with a retired
    key."""
    section = {k: v for k, v in section.items() if k not in RETIRED_KEYS["train"]}
    if "bf16" not in section:
        return section
    old = section.pop("bf16")
    if not isinstance(old, bool):
        raise ConfigError(f"{where}.bf16: expected bool (the old name of train.precision), got {old!r}")
    new = "bf16" if old else "fp32"
    if section.setdefault("precision", new) != new:
        raise ConfigError(f"{where}: bf16 = {str(old).lower()} (the old name of precision) contradicts "
                          f"precision = {section['precision']!r}; give only precision")
    return section


def config_from_dict(raw: dict[str, Any], source: str = "config") -> RunConfig:
    """Build a RunConfig from nested dicts (as TOML gives them). Fails on unknown sections and keys.
    The old key `train.bf16` is read as train.precision ("bf16" for true, "fp32" for false); RETIRED_KEYS are
    dropped."""
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"{source}: unknown section(s) {', '.join(unknown)}; allowed: {', '.join(SECTIONS)}")
    parts = {}
    for name, cls in SECTIONS.items():
        section = raw.get(name, {})
        if not isinstance(section, dict):
            raise ConfigError(f"{source}: [{name}] must be a table, got {section!r}")
        if name == "train":
            section = _legacy_train(section, f"{source}: train")
        parts[name] = _section_from_dict(cls, section, f"{source}: {name}")
    return RunConfig(**parts)


def parse_override(text: str) -> tuple[str, str, Any]:
    """'train.steps=100' -> ('train', 'steps', 100). Values are TOML values; bare words are strings."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected section.key=value")
    key, value_text = text.split("=", 1)
    if key.count(".") != 1:
        raise ConfigError(f"--set {text!r}: expected section.key=value, e.g. train.steps=100")
    section, name = key.strip().split(".")
    try:
        value = tomllib.loads(f"v = {value_text}")["v"]
    except tomllib.TOMLDecodeError:
        value = value_text  # a bare word such as `repeat` or `linear-50`
    return section, name, value


def set_nested(raw: dict[str, Any], assignments: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of raw with 'section.key' assignments applied."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    for dotted, value in assignments.items():
        if dotted.count(".") != 1:
            raise ConfigError(f"{dotted!r}: expected section.key")
        section, name = dotted.split(".")
        out.setdefault(section, {})
        if not isinstance(out[section], dict):
            raise ConfigError(f"{dotted!r}: [{section}] is not a table")
        out[section][name] = value
    return out


def read_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from err


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> RunConfig:
    """Read a TOML run config (or defaults when path is None) and apply --set overrides, all checked."""
    raw = read_toml(path) if path else {}
    assignments = {}
    for text in overrides:
        section, name, value = parse_override(text)
        assignments[f"{section}.{name}"] = value
    config = config_from_dict(set_nested(raw, assignments), str(path or "defaults"))
    validate(config, str(path) if path else "config")  # the message names the file
    return config


def replace(config: RunConfig, **dotted: Any) -> RunConfig:
    """Copy a config with 'section.key' values replaced (keys given as section__key)."""
    raw = to_dict(config)
    return config_from_dict(set_nested(raw, {k.replace("__", "."): v for k, v in dotted.items()}))


# ----------------------------------------------------------------------------- validation

# Lower bounds of numeric keys: key -> (bound, inclusive). Every float key must also be finite (nan and inf
# refused); a float key not listed here is checked for that alone. Keys with their own checks below (positive
# integers, fractions, decays) are not repeated here.
NUMERIC_BOUNDS: dict[str, tuple[float, bool]] = {
    "data.max_utterances": (0, True),
    "model.encoder_channels": (1, True), "model.encoder_kernel_size": (1, True),
    "model.encoder_conv_layers": (1, True), "model.encoder_dropout": (0, True), "model.duration_channels": (1, True),
    "model.sigma_floor": (0, False), "model.signal_std": (0, True),
    "autoencoder.stride": (1, True), "autoencoder.latent_channels": (1, True),
    "autoencoder.hidden_channels": (1, True), "autoencoder.codebook_size": (1, True),
    "autoencoder.commitment_weight": (0, True), "autoencoder.steps": (1, True), "autoencoder.batch_size": (1, True),
    "autoencoder.segment_samples": (1, True), "autoencoder.learning_rate": (0, False), "autoencoder.seed": (0, True),
    "train.learning_rate": (0, False), "train.warmup_steps": (0, True), "train.weight_decay": (0, True),
    "train.grad_clip": (0, False), "train.duration_loss_weight": (0, True), "train.mel_loss_weight": (0, True),
    "train.seed": (0, True), "train.gain_utterances": (0, True),
    "eval.limit": (0, True), "eval.pace": (0, False), "eval.audio_artifacts": (0, True),
    "eval.metric_workers": (1, True), "eval.seed": (0, True),
}
# Upper bounds (exclusive) of keys that are probabilities or decays.
NUMERIC_BELOW = {"model.encoder_dropout": 1.0, "model.zoneout": 1.0, "autoencoder.ema_decay": 1.0}


def _check_numbers(config: RunConfig, where: str) -> None:
    """Every numeric key: floats finite, and each key within its bounds (NUMERIC_BOUNDS, NUMERIC_BELOW)."""
    for key, value in flatten(config).items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        is_float = isinstance(value, float)
        low, inclusive = NUMERIC_BOUNDS.get(key, (None, True))
        high = NUMERIC_BELOW.get(key)
        ok = math.isfinite(value) if is_float else True
        ok = ok and (low is None or (value >= low if inclusive else value > low))
        ok = ok and (high is None or value < high)
        if ok:
            continue
        kind = "a finite number" if is_float else "an integer"
        bounds = []
        if low is not None:
            bounds.append(f"{'>=' if inclusive else '>'} {low:g}")
        if high is not None:
            bounds.append(f"< {high:g}")
        raise ConfigError(f"{where}: {key} = {value}; expected {kind}{' ' if bounds else ''}{' and '.join(bounds)}")


def validate(config: RunConfig, where: str = "config") -> None:
    """Cross-key checks that need the registries; raises ConfigError naming the key and allowed values."""
    from components.schedules import check_schedule
    from components.validation import validate_model_config  # imports torch: only when validating
    from experiments.config.schedules import resolve_schedule

    _check_numbers(config, where)
    try:
        validate_model_config(config.model, config.autoencoder, hop_length=config.data.hop_length)
    except ValueError as err:
        raise ConfigError(f"{where}: {err}") from err
    t, e, d = config.train, config.eval, config.data
    for key, value in (("train.precision", t.precision), ("eval.precision", e.precision)):
        if value not in PRECISIONS:
            raise ConfigError(f"{where}: {key} = {value!r}; allowed: {', '.join(PRECISIONS)}")
    if t.noise_loss not in LOSS_KINDS:
        raise ConfigError(f"{where}: train.noise_loss = {t.noise_loss!r}; allowed: {', '.join(LOSS_KINDS)}")
    if t.lr_decay not in LR_DECAYS:
        raise ConfigError(f"{where}: train.lr_decay = {t.lr_decay!r}; allowed: {', '.join(LR_DECAYS)}")
    if e.weights not in WEIGHT_SETS:
        raise ConfigError(f"{where}: eval.weights = {e.weights!r}; allowed: {', '.join(WEIGHT_SETS)}")
    counts: tuple[tuple[str, int], ...] = (
        ("train.steps", t.steps), ("train.batch_size", t.batch_size), ("train.window_frames", t.window_frames),
        ("train.checkpoint_every", t.checkpoint_every), ("train.log_every", t.log_every),
        ("data.sample_rate", d.sample_rate), ("data.hop_length", d.hop_length), ("eval.batch_size", e.batch_size))
    for key, count in counts:
        if count <= 0:
            raise ConfigError(f"{where}: {key} = {count}; expected a positive integer")
    if not 0.0 <= t.ema_decay < 1.0:
        raise ConfigError(f"{where}: train.ema_decay = {t.ema_decay}; expected 0 <= ema_decay < 1 (0 = off)")
    if not (math.isfinite(t.mel_loss_weight) and t.mel_loss_weight >= 0):
        raise ConfigError(f"{where}: train.mel_loss_weight = {t.mel_loss_weight}; expected a finite number >= 0")
    if t.gain_utterances < 0:
        raise ConfigError(f"{where}: train.gain_utterances = {t.gain_utterances}; expected >= 0")
    if not (0 <= d.val_fraction < 1 and 0 <= d.test_fraction < 1 and d.val_fraction + d.test_fraction < 1):
        raise ConfigError(f"{where}: data.val_fraction + data.test_fraction must lie in [0, 1)")
    if e.split not in ("train", "val", "test"):
        raise ConfigError(f"{where}: eval.split = {e.split!r}; allowed: train, val, test")
    if e.pace <= 0:
        raise ConfigError(f"{where}: eval.pace = {e.pace}; expected > 0")
    if not e.schedules:
        raise ConfigError(f"{where}: eval.schedules is empty; expected at least one schedule name")
    try:
        train_betas = resolve_schedule(t.schedule)
    except ValueError as err:
        raise ConfigError(f"{where}: train.schedule: {err}") from err
    for i, name in enumerate(e.schedules):
        try:
            check_schedule(resolve_schedule(name), train_betas, signal_std_of(config), f"schedule {name!r}")
        except ValueError as err:
            raise ConfigError(f"{where}: eval.schedules[{i}]: {err}") from err


# The raw waveform's standard deviation assumed when a config is checked before its corpus is read (model.signal_std
# = 0): 0.1, above speech's 0.06-0.09 (WaveGrad), so the start-SNR check errs toward refusing. Checks made with a
# checkpoint at hand use the scale it measured on its training split.
ASSUMED_RAW_STD = 0.1


def signal_std_of(config: RunConfig) -> float:
    """The diffusion signal's standard deviation this config trains on (ASSUMED_RAW_STD for the raw waveform)."""
    return config.model.signal_std or ASSUMED_RAW_STD


# ----------------------------------------------------------------------------- identity

def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def flatten(config: RunConfig) -> dict[str, Any]:
    """{'train.steps': 2000, ...}: one entry per key, for MLflow params and tables."""
    return {f"{s}.{k}": v for s, section in to_dict(config).items() for k, v in section.items()}
