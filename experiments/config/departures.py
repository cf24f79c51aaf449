"""WaveGrad 2 as published, key by key, and a config's departures from it (`wg2 config show`, run tags, reports).

PAPER holds every run-config key the paper (Chen et al., Interspeech 2021) fixes, with the source; where the paper is
silent, lmnt-com/wavegrad (src/wavegrad/params.py) or maum-ai/wavegrad2 (hparameter.yaml). A key whose paper value is
a set (the window, the upsampler, the decoder width) is one of the paper's own ablation axes: any of its values is the
paper's. Keys that are budgets (steps, batch size), bookkeeping (logging, checkpoints, seeds) or arithmetic (precision)
have no paper value and are never departures.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from experiments.config.identity import to_toml
from experiments.config.run import RunConfig, flatten, load_config, to_dict


@dataclass(frozen=True)
class Paper:
    values: tuple[Any, ...]  # the paper's value, or the values of one of its ablation axes
    source: str

    def allows(self, value: Any) -> bool:
        return any(value == v for v in self.values)

    def shown(self) -> Any:
        return self.values[0] if len(self.values) == 1 else list(self.values)


PAPER: dict[str, Paper] = {
    "data.sample_rate": Paper((22050,), "lmnt-com/wavegrad params.py (LJSpeech)"),
    "data.hop_length": Paper((300,), "WaveGrad 2 fig. 2: upsampling factors 5, 5, 3, 2, 2"),
    "model.encoder_channels": Paper((512,), "WaveGrad 2 sec. 2: Tacotron 2's encoder"),
    "model.encoder_kernel_size": Paper((5,), "WaveGrad 2 sec. 2: Tacotron 2's encoder"),
    "model.encoder_conv_layers": Paper((3,), "WaveGrad 2 sec. 2: Tacotron 2's encoder"),
    "model.encoder_dropout": Paper((0.5,), "Tacotron 2's encoder; maum-ai/wavegrad2 dropout_rate 0.5"),
    "model.zoneout": Paper((0.1,), "WaveGrad 2 sec. 2: BiLSTM with ZoneOut 0.1"),
    "model.upsampler": Paper(("gaussian", "repeat"), "WaveGrad 2 sec. 3.2: Gaussian upsampling, repeat ablated"),
    "model.decoder_preset": Paper(("base", "large"), "WaveGrad 2 sec. 3.4: base and large decoders"),
    "model.upsample_factors": Paper(([5, 5, 3, 2, 2],), "WaveGrad 2 fig. 2"),
    "model.space": Paper(("waveform",), "WaveGrad 2: diffusion on the waveform"),
    "model.signal_std": Paper((0.0,), "WaveGrad 2: the raw waveform, not rescaled"),
    "train.window_frames": Paper((64, 256), "WaveGrad 2 sec. 3.3: 64 (0.8 s) and 256 (3.2 s) frames"),
    "train.noise_loss": Paper(("l1",), "WaveGrad 2 sec. 2: L1 on the predicted noise"),
    "train.schedule": Paper(("linear-1000",), "WaveGrad sec. 4 / lmnt-com/wavegrad: linspace(1e-6, 0.01, 1000)"),
    "train.duration_loss_weight": Paper((1.0,), "maum-ai/wavegrad2 loss_rate.dur 1.0"),
    "train.mel_loss_weight": Paper((0.0,), "WaveGrad 2: end to end, no auxiliary mel loss"),
    "train.learning_rate": Paper((2e-4,), "lmnt-com/wavegrad params.py"),
    "train.warmup_steps": Paper((0,), "lmnt-com/wavegrad: no warm-up"),
    "train.lr_decay": Paper(("none",), "lmnt-com/wavegrad: a constant rate"),
    "train.weight_decay": Paper((0.0,), "lmnt-com/wavegrad: Adam without weight decay"),
    "train.grad_clip": Paper((1.0,), "lmnt-com/wavegrad max_grad_norm 1.0"),
    "train.ema_decay": Paper((0.0,), "WaveGrad 2 and lmnt-com/wavegrad: no weight averaging"),
}


def departures(config: RunConfig) -> list[dict[str, Any]]:
    """[{key, paper, value}] for every key of PAPER whose value is not the paper's, in PAPER's order."""
    flat = flatten(config)
    return [{"key": key, "paper": paper.shown(), "value": flat[key]}
            for key, paper in PAPER.items() if not paper.allows(flat[key])]


def format_departures(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "departures from the paper: none"
    width = max(len(r["key"]) for r in rows)
    lines = [f"departures from the paper ({len(rows)}):"]
    lines += [f"  {r['key']:{width}s}  {r['value']!r} (paper: {r['paper']!r}; {PAPER[r['key']].source})" for r in rows]
    return "\n".join(lines)


def cmd_config_show(args) -> int:
    """`wg2 config show CONFIG [--set k=v ...] [--json]`: the resolved config (every check of a run applied: a
    refused schedule exits 2) and its departures from the paper."""
    config = load_config(args.config, args.overrides)
    rows = departures(config)
    if args.json:
        print(json.dumps({"config": to_dict(config), "departures": rows}, indent=1))
    else:
        print(to_toml(config))
        print(format_departures(rows))
    return 0
