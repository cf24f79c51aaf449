"""`wg2 grid --dry-run` prices a grid in GPU-hours per cell and in total, naming each price's source; the FLOP
counts behind it follow the real training step's shapes (experiments/infer/step_flops.py, experiments/grid/pricing.py)."""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from components.diffusion import Diffusion
from components.durations import DurationPredictor
from components.model import WaveGrad2
from evaluation.signal_features import N_MELS
from experiments.cli import main
from experiments.config.run import RunConfig
from experiments.config.schedules import resolve_schedule
from experiments.grid.file import load_grid
from experiments.grid.pricing import GPUS, Pricing, price_grid
from experiments.infer.step_flops import FRAMES_PER_TOKEN, UTTERANCE_TOKENS, VOCAB, training_step_flops
from tests.conftest import tiny_model

GRIDS = Path(__file__).resolve().parents[1] / "experiments" / "grids"
PAPER_SCALE = ("window", "upsampling", "decoder-width")
ROW = re.compile(r"^  (?P<label>.+?)\s+(?P<steps>\d+)\s+(?P<batch>\d+) x (?P<window>\d+)\s+(?P<tflop>[\d.e+-]+)\s+"
                 r"(?P<train>[\d.e+-]+) \((?P<train_src>FLOPs|bench)\)\s+(?P<eval>[\d.e+-]+) \((?P<eval_src>FLOPs|bench)\)$")
TOTAL = re.compile(r"^total: (\d+) cells, (\d+) trainings: ([\d.,]+) GPU-h training \+ ([\d.,]+) GPU-h evaluation = "
                   r"([\d.,]+) GPU-h on (.+) \(from (.+)\)$")


def priced_rows(out: str) -> tuple[dict[str, dict], tuple]:
    """The dry run's price rows by cell label, and its total line's fields."""
    rows = {m["label"].strip(): m.groupdict() for m in map(ROW.match, out.splitlines()) if m}
    totals = [m.groups() for m in map(TOTAL.match, out.splitlines()) if m]
    assert len(totals) == 1, out
    return rows, totals[0]


def test_dry_run_prints_gpu_hours_per_cell_and_total_with_their_source(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no results/bench here: every price is FLOP-derived, and says so
    path = GRIDS / "window.toml"
    assert main(["grid", str(path), "--dry-run", "--gpu", "a100", "--utilisation", "0.2"]) == 0
    out = capsys.readouterr().out
    rows, (cells, trainings, train_h, eval_h, total_h, gpu, sources) = priced_rows(out)
    grid = load_grid(path)
    assert set(rows) == {c.label for c in grid.cells} and int(cells) == len(grid.cells) == int(trainings) == 6
    assert gpu == GPUS["a100"].name and sources == "FLOPs" and "20% utilisation" in out
    for cell in grid.cells:
        row = rows[cell.label]
        assert row["train_src"] == row["eval_src"] == "FLOPs"
        # the hours follow from the printed FLOPs at the stated sustained rate (bf16: the cell trains at "auto")
        hours = int(row["steps"]) * float(row["tflop"]) / (GPUS["a100"].bf16_tflops * 0.2) / 3600
        assert float(row["train"]) == pytest.approx(hours, rel=2e-3)
    long, short = (rows[f"train.window_frames={w} seed=0"] for w in (256, 64))
    assert float(long["train"]) / float(short["train"]) == pytest.approx(4, rel=0.01)
    assert float(train_h) == pytest.approx(sum(float(r["train"]) for r in rows.values()), rel=1e-2)
    assert float(total_h) == pytest.approx(float(train_h) + float(eval_h), rel=1e-2)
    # a printout that drops the source (or the total) is not accepted by these checks
    assert not ROW.match(next(line for line in out.splitlines() if "(FLOPs)" in line).replace(" (FLOPs)", ""))
    with pytest.raises(AssertionError):
        priced_rows(out.replace("total:", "sum:"))


@pytest.mark.parametrize("name", PAPER_SCALE)
def test_paper_scale_grids_are_priced_on_the_paper_questions(name: str):
    grid = load_grid(GRIDS / f"{name}.toml")
    price = price_grid(grid, Pricing(bench_dir=Path("/nonexistent")))
    assert len(grid.seeds) == 3 and all(c.cell.config.data.sample_rate == 22050 for c in price.cells)
    assert {c.cell.config.model.decoder_preset for c in price.cells} <= {"base", "large"}
    assert all(c.train_hours and c.train_hours > 0.1 and c.train_source == "FLOPs" for c in price.cells)


def _bench_file(directory: Path, machine: str, window: int) -> None:
    """A `wg2 bench --device cuda --batch-size 32 --window-frames W --out DIR` file (its JSON layout)."""
    row = {"preset": "base", "device": "cuda", "precision": "bf16", "batch_size": 32, "window_frames": window,
           "train_steps_per_s": 4.0, "bf16_steps_per_s": 10.0, "rtf_manual-6": 0.02, "rtf_linear-50": 0.1,
           "bf16_rtf_manual-6": 0.01, "bf16_rtf_linear-50": 0.05}
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "bench_cuda.json").write_text(json.dumps({"machine": machine, "rows": [row]}))


def test_a_measured_bench_row_prices_only_the_cells_it_measured(tmp_path: Path):
    grid = load_grid(GRIDS / "window.toml")
    _bench_file(tmp_path / "h100", "NVIDIA H100 80GB HBM3", window=64)
    price = price_grid(grid, Pricing(bench_dir=tmp_path / "h100"))
    by_window = {w: [c for c in price.cells if c.cell.config.train.window_frames == w] for w in (64, 256)}
    for c in by_window[64]:  # 100000 steps at the measured 10 bf16 steps/s
        assert c.train_source == "bench" and c.train_hours == pytest.approx(100000 / 10 / 3600)
    assert all(c.train_source == "FLOPs" for c in by_window[256])  # measured at 64 frames: not this cell's rate
    assert all(c.eval_source == "bench" for c in price.cells)  # synthesis speed does not depend on the window
    assert price.bench_files == [str(tmp_path / "h100" / "bench_cuda.json")]
    # eval.schedules of base.toml include fibonacci-25, not timed by the bench: priced from linear-50's RTF per step
    c = by_window[64][0]
    audio = c.cell.config.eval.limit * 6.57 * 2
    steps = {n: len(resolve_schedule(n)) for n in c.cell.config.eval.schedules}
    expected = sum(0.02 if n == "manual-6" else 0.1 / 50 * s for n, s in steps.items()) * audio / 3600  # fp32 eval
    assert c.eval_source == "bench" and c.eval_hours == pytest.approx(expected)
    # the same row from another GPU, or at another batch size, prices nothing
    _bench_file(tmp_path / "a100", "NVIDIA A100-SXM4-80GB", window=64)
    assert {c.train_source for c in price_grid(grid, Pricing(bench_dir=tmp_path / "a100")).cells} == {"FLOPs"}
    other_batch = price_grid(load_grid(GRIDS / "window.toml", ["train.batch_size=16"]),
                             Pricing(bench_dir=tmp_path / "h100"))
    assert {c.train_source for c in other_batch.cells} == {"FLOPs"}


def test_cells_sharing_a_training_are_charged_it_once(tmp_path: Path):
    grid = load_grid(GRIDS / "cpu-steps.toml")  # an eval-only axis: one training per seed
    price = price_grid(grid, Pricing(bench_dir=tmp_path))
    charged = [c for c in price.cells if c.train_hours is not None]
    assert len(charged) == len(grid.trainings()) == len(grid.seeds)
    one = charged[0].train_hours
    # the speaking cell is latent: its stage one is charged once on top (one autoencoder config for every seed)
    assert len(price.stage_one) == 1
    assert price.train_hours == pytest.approx(one * len(grid.seeds) + price.stage_one[0][1])
    # charging every cell (a broken price) would have counted each training once per schedule
    assert one * len(price.cells) > price.train_hours * 1.5


def _real_step_flops(config: RunConfig) -> int:
    """FLOPs of the real training step on CPU tensors (the calls of experiments/train/loop.py), for comparison."""
    torch.manual_seed(0)
    model = WaveGrad2(config.model, VOCAB).train()
    batch, window = config.train.batch_size, config.train.window_frames
    tokens = max(UTTERANCE_TOKENS, -(-window // FRAMES_PER_TOKEN))
    ids, mask = torch.randint(1, VOCAB, (batch, tokens)), torch.ones(batch, tokens)
    durations = torch.full((batch, tokens), float(FRAMES_PER_TOKEN))
    frames = torch.arange(window)[None].expand(batch, window)
    signal = torch.randn(batch, 1, window * model.hop) * 0.1
    head = torch.nn.Linear(model.encoder.out_channels, N_MELS)
    with FlopCounterMode(display=False) as counter:
        encoded, log_durations = model.encode(ids, mask)
        loss = DurationPredictor.loss(log_durations.float(), durations, mask)
        cond = model.condition(encoded, durations, mask, frames)
        loss = loss + Diffusion(resolve_schedule("linear-1000")).loss(
            lambda x, level: model.denoise(x, cond.states, level), signal)
        loss = loss + head(cond.states.transpose(1, 2)).square().mean()
        loss.backward()
    return counter.get_total_flops()


def _config(window: int, batch: int = 2, **model) -> RunConfig:
    config = RunConfig(model=tiny_model(**model))
    return dataclasses.replace(config, train=dataclasses.replace(config.train, window_frames=window, batch_size=batch))


def test_the_step_count_matches_the_real_step_and_scales_with_window_and_batch():
    for zoneout in (0.0, 0.1):  # the fused LSTM and the ZoneOut cell loop
        config = _config(16, zoneout=zoneout)
        assert training_step_flops(config).total == pytest.approx(_real_step_flops(config), rel=0.01)

    def scales(count) -> bool:
        """Doubling the window doubles the decoder's FLOPs; doubling the batch doubles the whole step's."""
        one, two = count(_config(32)), count(_config(64))
        wide = count(_config(32, batch=4))
        return (two.decoder / one.decoder == pytest.approx(2, rel=0.01)
                and wide.total / one.total == pytest.approx(2, rel=0.01))

    assert scales(training_step_flops)
    # a counter that ignores the window (counts every cell at 32 frames) fails the check
    assert not scales(lambda c: training_step_flops(
        dataclasses.replace(c, train=dataclasses.replace(c.train, window_frames=32))))


@pytest.mark.parametrize("args, message", [
    (["--gpu", "tpu"], "--gpu tpu: unknown"), (["--gpu", "L40S=fast"], "NAME=TFLOPS"),
    (["--utilisation", "1.5"], "--utilisation 1.5"), (["--utilisation", "0"], "--utilisation 0")])
def test_bad_price_assumptions_exit_2_naming_the_flag(args, message, tmp_path: Path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["grid", str(GRIDS / "quickstart.toml"), "--dry-run", *args]) == 2
    assert message in capsys.readouterr().err
    assert main(["grid", str(GRIDS / "quickstart.toml"), "--dry-run", "--gpu", "L40S=362"]) == 0
    assert "price on L40S (assumed; --gpu): dense peaks bf16 362 / tf32 181" in capsys.readouterr().out


def test_price_flags_without_dry_run_exit_2_before_anything_runs(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert main(["grid", str(GRIDS / "quickstart.toml"), "--gpu", "a100"]) == 2
    assert "without --dry-run they do nothing" in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "runs").exists()
