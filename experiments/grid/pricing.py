"""The price of a grid in GPU-hours, per cell and in total, printed by `wg2 grid GRID.toml --dry-run`.

Training, per training (cells sharing a train hash train once: the first carries it, the rest say "shared"):
- measured, when a `wg2 bench` row in results/bench/*.json was taken on the priced GPU (device cuda, its
  machine name naming the GPU) for this cell's model (the bench's model for the preset equals the cell's,
  at 22.05 kHz) at this batch and window: train.steps / the row's steps/s, bf16 or fp32 as the cell trains
  (evaluation needs only the model and the GPU to match);
- else FLOP-derived: train.steps x the step's FLOPs (experiments/infer/step_flops.py: the real model at the
  cell's batch x window, matmuls and convolutions, forward + backward) / (the GPU's dense peak x the
  utilisation). bf16 (train.precision auto or bf16; every GPU listed computes it natively) is priced at
  the bf16 tensor peak, fp32 at the TF32 peak (PyTorch runs fp32 convolutions in TF32 on CUDA by default).
- Stage one of latent cells: once per distinct autoencoder config, FLOP-derived (no bench measures it).

Evaluation, per cell: for each eval schedule, 2 synthesis passes (ground-truth and predicted durations; a
3rd timed one when eval.batch_size > 1) over eval.limit utterances of LJSpeech's mean clip length (6.57 s;
limit 0: the split's share of its 13,100 clips): measured real-time factor x audio seconds when the bench
row matches (its linear-50 RTF per step for schedules it did not time), else the decoder's FLOPs per audio
second x refinement steps x audio seconds / the sustained rate. Excluded: the metrics (CPU processes), the
warm-up synthesis, the encoder pass per utterance, and during training the checkpoints and gain probes.

The default utilisation, 10% of the dense peak, is an assumption, not a measurement. The decoder's
convolutions are narrow (32-512 channels) over long sequences, with memory-bound FiLM and activation work
between them. The one public timing found of this decoder, lmnt-com/wavegrad's README (intelligible after
~20k steps, ~1.5 h on an RTX 2080 Ti; batch 32 of 7,200 samples, fp32 by default), works out with these
FLOP counts at ~7.5 TFLOP/s, about half that card's fp32 peak (13.4). Scaled by memory bandwidth (an H100
SXM has 5.4x the 2080 Ti's, and bf16 halves the bytes) that is ~80 TFLOP/s, 8% of the H100's bf16 peak;
scaled by compute it would be several times more. 10% sits just above the bandwidth-bound estimate. A
measured `wg2 bench --device cuda` row replaces it (benchmarks/gpu.sh takes base.toml's 32 x 64).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from components.spaces import SPACES
from experiments.config.run import InputError, RunConfig
from experiments.config.schedules import resolve_schedule
from experiments.grid.file import Cell, Grid
from experiments.infer.bench import SAMPLE_RATE as BENCH_SAMPLE_RATE
from experiments.infer.bench import preset_model
from experiments.infer.step_flops import autoencoder_step_flops, decoder_flops_per_audio_second, training_step_flops

BENCH_DIR = Path("results/bench")  # relative to the working directory, like every results/ default
LJSPEECH_CLIPS, LJSPEECH_MEAN_S = 13100, 6.57  # LJSpeech 1.1: 13,100 clips, 23 h 55 min
DEFAULT_GPU, DEFAULT_UTILISATION = "h100", 0.10
OVERHEAD_BOUND_TFLOP = 0.5  # below this a step's price is flagged as a lower bound (format_price)


@dataclass(frozen=True)
class Gpu:
    name: str
    bf16_tflops: float  # dense tensor-core peak
    tf32_tflops: float
    match: str  # a bench row's machine name (torch.cuda.get_device_name) contains this, case-insensitively


GPUS = {  # vendor datasheets, dense (no sparsity)
    "h100": Gpu("NVIDIA H100 SXM", 989.4, 494.7, "H100"),
    "h200": Gpu("NVIDIA H200", 989.4, 494.7, "H200"),
    "a100": Gpu("NVIDIA A100 SXM", 312.0, 156.0, "A100"),
}


@dataclass(frozen=True)
class Pricing:
    gpu: Gpu = GPUS[DEFAULT_GPU]
    utilisation: float = DEFAULT_UTILISATION
    bench_dir: Path = BENCH_DIR

    @classmethod
    def from_args(cls, gpu: str | None, utilisation: float | None) -> Pricing:
        """--gpu NAME (h100, h200, a100) or NAME=TFLOPS (bf16 dense peak; TF32 taken as half) and
        --utilisation U in (0, 1]; a bad value is an InputError (exit 2) before anything runs."""
        chosen = GPUS[DEFAULT_GPU]
        if gpu:
            name, _, peak = gpu.partition("=")
            if peak:
                try:
                    tflops = float(peak)
                except ValueError:
                    tflops = 0.0
                if not name.strip() or not tflops > 0:
                    raise InputError(f"--gpu {gpu}: expected NAME=TFLOPS with a positive bf16 dense peak, "
                                     "e.g. --gpu L40S=362")
                chosen = Gpu(name.strip(), tflops, tflops / 2, name.strip())
            elif name.lower() in GPUS:
                chosen = GPUS[name.lower()]
            else:
                raise InputError(f"--gpu {gpu}: unknown; expected one of {', '.join(GPUS)} or NAME=TFLOPS")
        if utilisation is not None and not 0 < utilisation <= 1:
            raise InputError(f"--utilisation {utilisation}: expected a fraction of the peak in (0, 1]")
        return cls(chosen, DEFAULT_UTILISATION if utilisation is None else utilisation)

    def seconds(self, flops: float, bf16: bool) -> float:
        peak = self.gpu.bf16_tflops if bf16 else self.gpu.tf32_tflops
        return flops / (peak * 1e12 * self.utilisation)


@dataclass
class CellPrice:
    cell: Cell
    step_tflop: float
    train_hours: float | None  # None: trained by an earlier cell of the same train hash
    train_source: str  # "FLOPs" or "bench"
    eval_hours: float
    eval_source: str


@dataclass
class GridPrice:
    grid: Grid
    pricing: Pricing
    cells: list[CellPrice] = field(default_factory=list)
    stage_one: list[tuple[str, float]] = field(default_factory=list)  # (autoencoder, GPU-hours)
    bench_files: list[str] = field(default_factory=list)  # files holding a row that priced a cell

    @property
    def train_hours(self) -> float:
        return sum(c.train_hours or 0.0 for c in self.cells) + sum(h for _, h in self.stage_one)

    @property
    def eval_hours(self) -> float:
        return sum(c.eval_hours for c in self.cells)


# ----------------------------------------------------------------------------- measured rates

def bench_rows(bench_dir: Path) -> list[tuple[str, str, dict]]:
    """(file, machine, row) for every CUDA row that says what batch and window it trained at."""
    found = []
    for path in sorted(Path(bench_dir).glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        runs = data.get("runs", [data]) if isinstance(data, dict) else []
        for run in runs:
            for row in run.get("rows", []) if isinstance(run, dict) else []:
                if (isinstance(row, dict) and row.get("device") == "cuda"
                        and {"batch_size", "window_frames", "preset"} <= set(row)):
                    found.append((str(path), str(run.get("machine", data.get("machine", ""))), row))
    return found


def _matching_row(config: RunConfig, rows: list[tuple[str, str, dict]], gpu: Gpu,
                  training: bool) -> tuple[str, dict] | None:
    """The first row measured on `gpu` for this cell's model (and, for `training`, its batch and window)."""
    model = config.model
    for path, machine, row in rows:
        if (gpu.match.lower() in machine.lower() and row["preset"] == model.decoder_preset
                and config.data.sample_rate == BENCH_SAMPLE_RATE
                and dataclasses.asdict(preset_model(row["preset"])) == dataclasses.asdict(model)
                and (not training or (row["batch_size"] == config.train.batch_size
                                      and row["window_frames"] == config.train.window_frames))):
            return path, row
    return None


def _is_bf16(precision: str) -> bool:
    return precision in ("bf16", "auto")


# ----------------------------------------------------------------------------- pricing

def _eval_audio_seconds(config: RunConfig) -> float:
    e, d = config.eval, config.data
    if e.limit > 0:
        utterances = e.limit
    else:
        share = {"val": d.val_fraction, "test": d.test_fraction}.get(e.split, 1 - d.val_fraction - d.test_fraction)
        utterances = round(LJSPEECH_CLIPS * share)
    return utterances * LJSPEECH_MEAN_S


def _eval_price(config: RunConfig, row: dict | None, pricing: Pricing) -> tuple[float, str]:
    e = config.eval
    passes = 2 + (1 if e.batch_size > 1 else 0)
    audio = _eval_audio_seconds(config) * passes
    prefix = "bf16_" if _is_bf16(e.precision) else ""
    seconds, measured = 0.0, row is not None
    for name in e.schedules:
        try:
            steps = len(resolve_schedule(name))
        except ValueError as err:
            raise InputError(f"eval.schedules: {err}") from None
        rtf = None
        if row is not None:
            rtf = row.get(f"{prefix}rtf_{name}")
            if rtf is None and f"{prefix}rtf_linear-50" in row:
                rtf = row[f"{prefix}rtf_linear-50"] / 50 * steps
        if rtf is None:
            measured = False
            seconds += pricing.seconds(decoder_flops_per_audio_second(config) * steps * audio, _is_bf16(e.precision))
        else:
            seconds += rtf * audio
    return seconds / 3600, "bench" if measured else "FLOPs"


def price_grid(grid: Grid, pricing: Pricing | None = None) -> GridPrice:
    """GPU-hours of every cell of `grid` (module docstring); nothing is trained or read but bench files."""
    pricing = pricing or Pricing()
    rows = bench_rows(pricing.bench_dir)
    price = GridPrice(grid, pricing)
    trained: set[str] = set()
    stage_ones: set[str] = set()
    for cell in grid.cells:
        config, t = cell.config, cell.config.train
        match, eval_match = (_matching_row(config, rows, pricing.gpu, training) for training in (True, False))
        flops = training_step_flops(config).total
        rate = None if match is None else match[1].get("bf16_steps_per_s" if _is_bf16(t.precision)
                                                       else "train_steps_per_s")
        if cell.train_hash in trained:
            hours = None
        elif rate:
            hours = t.steps / rate / 3600
        else:
            hours = t.steps * pricing.seconds(flops, _is_bf16(t.precision)) / 3600
        trained.add(cell.train_hash)
        eval_hours, eval_source = _eval_price(config, eval_match[1] if eval_match else None, pricing)
        for used, found in ((rate, match), (eval_source == "bench", eval_match)):
            if used and found and found[0] not in price.bench_files:
                price.bench_files.append(found[0])
        price.cells.append(CellPrice(cell, flops / 1e12, hours, "bench" if rate else "FLOPs", eval_hours, eval_source))
        if SPACES.get(config.model.space).uses_autoencoder:  # stage one, priced once per autoencoder config
            ae = config.autoencoder
            key = json.dumps([dataclasses.asdict(ae), config.data.sample_rate], sort_keys=True)
            if key not in stage_ones:
                stage_ones.add(key)
                label = f"{ae.kind} R={ae.stride}, {ae.steps} steps x {ae.batch_size} x {ae.segment_samples} samples"
                seconds = ae.steps * pricing.seconds(autoencoder_step_flops(config), False)
                price.stage_one.append((label, seconds / 3600))
    return price


# ----------------------------------------------------------------------------- the printout

def _hours(value: float) -> str:
    return f"{value:.3g}" if value < 100 else f"{value:,.0f}"


def format_price(price: GridPrice) -> str:
    p, gpu = price.pricing, price.pricing.gpu
    lines = [f"price on {gpu.name} (assumed; --gpu): dense peaks bf16 {gpu.bf16_tflops:g} / tf32 "
             f"{gpu.tf32_tflops:g} TFLOP/s at {p.utilisation:.0%} utilisation (--utilisation) = "
             f"{gpu.bf16_tflops * p.utilisation:.3g} / {gpu.tf32_tflops * p.utilisation:.3g} TFLOP/s sustained",
             "  source FLOPs: counted FLOPs / sustained rate; bench: a measured `wg2 bench` row "
             f"({', '.join(price.bench_files) or f'none in {p.bench_dir}/ for this GPU, model, batch and window'})",
             "  eval: 2 synthesis passes x eval.limit utterances x 6.57 s (LJSpeech's mean clip) per schedule; "
             "metrics (CPU) excluded"]
    rows = [(c.cell.label, f"{c.cell.config.train.steps}",
             f"{c.cell.config.train.batch_size} x {c.cell.config.train.window_frames}", f"{c.step_tflop:.3g}",
             "shared" if c.train_hours is None else f"{_hours(c.train_hours)} ({c.train_source})",
             f"{_hours(c.eval_hours)} ({c.eval_source})") for c in price.cells]
    header = ("cell", "steps", "batch x window", "TFLOP/step", "train GPU-h", "eval GPU-h")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        lines.append("  " + "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths))))
    if any(c.step_tflop < OVERHEAD_BOUND_TFLOP and c.train_source == "FLOPs" for c in price.cells):
        lines.append(f"  note: a step under {OVERHEAD_BOUND_TFLOP} TFLOP (models far smaller than base) is bound by "
                     "kernel launches on a GPU, not arithmetic: its FLOP-derived price is a lower bound")
    for label, hours in price.stage_one:
        lines.append(f"  stage one (once, cached): {label}: {_hours(hours)} GPU-h (FLOPs; STFT loss excluded)")
    sources = sorted({c.train_source for c in price.cells if c.train_hours is not None} | {c.eval_source for c in
                                                                                           price.cells})
    trainings = sum(c.train_hours is not None for c in price.cells)
    lines.append(f"total: {len(price.cells)} cells, {trainings} trainings: {_hours(price.train_hours)} GPU-h training"
                 f" + {_hours(price.eval_hours)} GPU-h evaluation = {_hours(price.train_hours + price.eval_hours)} "
                 f"GPU-h on {gpu.name} (from {' and '.join(sources)})")
    return "\n".join(lines)
