"""How training and synthesis keep to the paper, each check shown to fail on a deliberately broken variant inside the
test: the signal scale round trip, the EMA update and which weights eval loads, mel_loss_weight 0 as the paper's loss,
and the inference schedule checked at both ends (function, `wg2 config show`, every shipped config and grid)."""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_PRESET, tiny_model

from components import schedules
from components.model import WaveGrad2
from components.schedules import check_schedule, noise_levels, resolve_schedule_name, start_snr_db
from experiments.cli import main
from experiments.config.run import DataConfig, RunConfig, load_config, signal_std_of
from experiments.config.schedules import resolve_schedule
from experiments.corpus.dataset import load_dataset
from experiments.grid.file import load_grid
from experiments.infer.synth import LoadedModel, load_checkpoint, synthesize
from experiments.train.loop import EMA, signal_scale, train

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "experiments" / "configs" / "base.toml"


# ----------------------------------------------------------------------------- signal scale round trip

def synthesized_with_an_oracle(config: RunConfig, train_audio: list[np.ndarray], clean: np.ndarray,
                               synth_gain: float | None = None) -> np.ndarray:
    """Synthesis of `clean` by a model whose decoder is an oracle: given x = a * s + sqrt(1 - a^2) * eps with s the
    clean signal scaled as training scales it, it returns eps exactly, so the sampler's estimate is s. `synth_gain`
    replaces the gain synthesis divides out (the broken variants)."""
    scale = signal_scale(config, train_audio, None)
    scaled = torch.from_numpy(clean * scale["gain"]).float()[None, None]  # what training diffuses
    model = WaveGrad2(config.model, vocab_size=6).eval()

    def oracle(x, states, level):
        a = level.reshape(-1, 1, 1)
        return (x - a * scaled) / torch.sqrt(1 - a**2)

    model.denoise = oracle  # type: ignore[method-assign]
    signal = dict(scale, gain=scale["gain"] if synth_gain is None else synth_gain)
    loaded = LoadedModel(model, config, None, 22050, model.hop, torch.device("cpu"), None, Path("oracle"), 0, signal)
    durations = np.array([1, 2, 1])
    out = synthesize(loaded, [np.array([2, 3, 4])], resolve_schedule_name("manual-6"), [durations], precision="fp32")
    return out[0].audio


def check_round_trip(config: RunConfig, synth_gain: float | None = None) -> None:
    rng = np.random.default_rng(0)
    train_audio = [np.clip(0.06 * rng.standard_normal(n), -1, 1).astype(np.float32) for n in (3000, 5000)]
    scale = signal_scale(config, train_audio, None)
    trained_on = np.sqrt(np.mean([np.mean((a * scale["gain"]) ** 2) for a in train_audio]))
    assert trained_on == pytest.approx(config.model.signal_std or scale["corpus_std"], rel=1e-6)
    clean = np.clip(0.06 * rng.standard_normal(4 * 300), -1, 1).astype(np.float32)
    np.testing.assert_allclose(synthesized_with_an_oracle(config, train_audio, clean, synth_gain), clean, atol=1e-5)


@pytest.mark.parametrize("signal_std", [0.0, 1.0])
def test_synthesis_divides_the_training_gain_out(signal_std):
    """signal_std 1 trains on unit variance (gain about 17 here), 0 on the raw waveform (gain 1): either way the
    synthesized audio is back at waveform scale."""
    config = RunConfig(model=tiny_model(signal_std=signal_std))
    check_round_trip(config)
    with pytest.raises(AssertionError):
        check_round_trip(config, synth_gain=0.5)  # dividing by another gain
    if signal_std > 0:
        with pytest.raises(AssertionError):
            check_round_trip(config, synth_gain=1.0)  # not dividing the gain out


# ----------------------------------------------------------------------------- EMA

class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(2, 2)
        self.norm = torch.nn.BatchNorm1d(2)  # float buffers (running stats) and an integer one (batches seen)


def check_ema(ema_cls) -> None:
    """Three updates against a hand computation: d = min(decay, (1 + step) / (10 + step)), shadow = d * shadow +
    (1 - d) * weights for every float entry (parameters and running stats), integer buffers copied."""
    net = Net()
    expected, count = 0.0, 0
    with torch.no_grad():
        for value in net.state_dict().values():
            value.fill_(0)
        ema = ema_cls(net, 0.9)
        for step, value in ((0, 1.0), (1, 3.0), (100, -2.0)):
            for entry in net.state_dict().values():
                entry.fill_(value) if entry.dtype.is_floating_point else entry.fill_(step + 7)
            ema.update(net, step)
            d = min(0.9, (1 + step) / (10 + step))  # 0.1, 2/11, then capped at 0.9
            expected, count = d * expected + (1 - d) * value, step + 7
    for key, shadow in ema.state_dict().items():
        if shadow.dtype.is_floating_point:
            assert torch.allclose(shadow, torch.full_like(shadow, expected), atol=1e-6), key
        else:
            assert torch.equal(shadow, torch.full_like(shadow, count)), key


def test_ema_update_warms_up_its_decay_and_copies_integer_buffers():
    check_ema(EMA)

    class NoWarmUp(EMA):
        def update(self, model, step):
            super().update(model, 10**9)  # (1 + step) / (10 + step) -> 1: the plain decay from the first step

    class Swapped(EMA):  # the new weights kept with the decay, the old with 1 - d
        def update(self, model, step):
            d = min(self.decay, (1 + step) / (10 + step))
            for k, v in model.state_dict().items():
                if v.dtype.is_floating_point:
                    self.shadow[k].mul_(1 - d).add_(v, alpha=d)
                else:
                    self.shadow[k].copy_(v)

    for broken in (NoWarmUp, Swapped):
        with pytest.raises(AssertionError):
            check_ema(broken)


@pytest.fixture(scope="module")
def runs(corpus_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two runs of the tiny preset, 2 steps each, from one dataset: the paper's loss (mel_loss_weight 0, no EMA) and
    the departures (mel_loss_weight 1, EMA 0.999). Records how often mel targets were computed for each."""
    import experiments.train.loop as train_module

    root = tmp_path_factory.mktemp("paper-loss")
    data = DataConfig(root=str(corpus_dir), cache_dir=str(root / "cache"), val_fraction=0.3, test_fraction=0.1)
    dataset = load_dataset(data, progress=False)
    base = load_config(TINY_PRESET)
    out: dict = {}
    for name, mel, ema in (("paper", 0.0, 0.0), ("mel", 1.0, 0.999)):
        config = dataclasses.replace(base, data=data, train=dataclasses.replace(
            base.train, steps=2, log_every=1, checkpoint_every=2, gain_utterances=0, mel_loss_weight=mel,
            ema_decay=ema))
        calls: list[int] = []

        def counted(*args, targets=train_module.normalized_targets, calls=calls):
            calls.append(1)
            return targets(*args)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(train_module, "normalized_targets", counted)
            result = train(config, root / name, device="cpu", progress=False, dataset=dataset)
        out[name] = {"config": config, "history": result.history, "checkpoint": result.checkpoint,
                     "state": torch.load(result.checkpoint, weights_only=False), "mel_targets": len(calls)}
    return out


def weights_of(loaded) -> dict:
    return {k: v.clone() for k, v in loaded.model.state_dict().items()}


def check_loads(load, run: dict) -> None:
    """"ema" gives the moving average when the run kept one, else the raw weights; "raw" always the raw weights;
    None the checkpoint's own eval.weights."""
    state = run["state"]
    for asked in ("ema", "raw", None):
        loaded = load(run["checkpoint"], "cpu", asked)
        want = "ema" if (asked or state["config"]["eval"]["weights"]) == "ema" and state["ema"] is not None else "raw"
        assert loaded.weights == want, asked
        for key, value in weights_of(loaded).items():
            assert torch.equal(value, state[want if want == "ema" else "model"][key]), key


def test_eval_loads_the_weights_asked_for_and_falls_back_to_raw_without_an_ema(runs, tmp_path):
    ema_run, plain_run = runs["mel"], runs["paper"]
    assert plain_run["state"]["ema"] is None and ema_run["state"]["ema"] is not None
    assert any(not torch.equal(ema_run["state"]["ema"][k], v) for k, v in ema_run["state"]["model"].items())
    state = ema_run["state"]  # the same run trained with eval.weights = "raw" (`wg2 train --set eval.weights=raw`)
    raw_state = {**state, "config": {**state["config"], "eval": {**state["config"]["eval"], "weights": "raw"}}}
    torch.save(raw_state, tmp_path / "checkpoint.pt")
    raw_run = {"checkpoint": tmp_path / "checkpoint.pt", "state": raw_state}
    for run in (ema_run, plain_run, raw_run):
        check_loads(load_checkpoint, run)
    with pytest.raises(AssertionError):
        check_loads(lambda path, device, weights: load_checkpoint(path, device, "raw"), ema_run)  # raw when ema asked
    with pytest.raises(AssertionError):  # `wg2 eval` ignoring the checkpoint's eval.weights (logged as raw, ran ema)
        check_loads(lambda path, device, weights: load_checkpoint(path, device, weights or "ema"), raw_run)
    # a grid cell passes its eval.weights (experiments/grid/cell.py); the key is checked at load
    assert load_config(TINY_PRESET, ["eval.weights=raw"]).eval.weights == "raw"
    with pytest.raises(ValueError, match=r"eval.weights = 'average'; allowed: ema, raw"):
        load_config(TINY_PRESET, ["eval.weights=average"])


# ----------------------------------------------------------------------------- the paper's loss

def check_paper_loss(run: dict) -> None:
    """Loss = noise loss + duration weight x duration loss; no mel term, no mel head, no mel targets computed."""
    weight = run["config"].train.duration_loss_weight
    for entry in run["history"]:
        assert entry["loss"] == pytest.approx(entry["noise_loss"] + weight * entry["duration_loss"], rel=1e-6, abs=0)
        assert entry["mel_loss"] == 0.0
    state = run["state"]
    assert state["mel_head"] is None and run["mel_targets"] == 0
    optimized = sum(len(group["params"]) for group in state["optimizer"]["param_groups"])
    assert optimized == len(list(WaveGrad2(run["config"].model, len(state["vocab"])).parameters()))


def test_mel_loss_weight_zero_trains_on_exactly_the_papers_loss(runs):
    paper, mel = runs["paper"], runs["mel"]
    check_paper_loss(paper)
    first_paper, first_mel = paper["history"][0], mel["history"][0]  # step 1: the same weights, batch and noise
    assert first_mel["noise_loss"] == first_paper["noise_loss"]
    assert first_mel["duration_loss"] == first_paper["duration_loss"]
    assert first_mel["mel_loss"] > 0 and mel["mel_targets"] == 1 and mel["state"]["mel_head"] is not None
    assert first_mel["loss"] == pytest.approx(first_paper["loss"] + first_mel["mel_loss"], rel=1e-6)
    with pytest.raises(AssertionError):
        check_paper_loss(mel)  # a mel term added (what a trainer adding it regardless of the weight would log)


# ----------------------------------------------------------------------------- the schedule check at both ends

def noisy_end_only(betas, train_betas, signal_std, source):
    """The check before issue 20: the noisy end alone (no start SNR, no clean end)."""
    if noise_levels(betas)[-1] < schedules.TRAINED_RANGE_MARGIN * noise_levels(train_betas)[-1]:
        raise ValueError(f"{source}: below the training range")


def refusal(check, betas: np.ndarray, signal_std: float, source: str) -> str:
    """The check's message, or "" when it lets the schedule through (linear-1000 training)."""
    try:
        check(betas, resolve_schedule_name("linear-1000"), signal_std, source)
    except ValueError as err:
        return str(err)
    return ""


def check_refusals(check) -> None:
    """The figures: manual-6 starts at -2.2 dB for a unit-variance signal (refused), -22.2 dB at std 0.1 (passes);
    linear-6 ends at level 0.0149 < 0.5 x linear-1000's 0.0814 (refused); a first beta of 1e-9 (or BETA_MIN, 1e-7)
    leaves noise 3.2e-5 (3.2e-4) < 0.5 x linear-1000's smallest 1e-3 (refused)."""
    manual = resolve_schedule_name("manual-6")
    assert start_snr_db(manual, 1.0) == pytest.approx(-2.2, abs=0.05)
    assert start_snr_db(manual, 0.1) == pytest.approx(-22.2, abs=0.05)
    assert re.search(r"'manual-6': starts sampling at SNR -2.2 dB .* limit is -20 dB",
                     refusal(check, manual, 1.0, "'manual-6'"))
    assert refusal(check, manual, 0.1, "'manual-6'") == ""
    assert re.search(r"'linear-6': starts sampling at noise level 0.0149, below the training schedule's range",
                     refusal(check, resolve_schedule_name("linear-6"), 0.1, "'linear-6'"))
    for first in (1e-9, 1e-7):
        clean_end = np.concatenate([[first], resolve_schedule_name("linear-50")[1:]])
        assert re.search(r"its last step has noise .* below the training schedule's range",
                         refusal(check, clean_end, 0.1, f"first beta {first:g}"))
    for name in ("linear-50", "fibonacci-25"):  # the shipped alternatives pass at both scales
        for std in (0.1, 1.0):
            assert refusal(check, resolve_schedule_name(name), std, name) == ""


def test_schedule_check_refuses_at_both_ends_and_at_the_start_snr():
    check_refusals(check_schedule)

    def snr_and_noisy_end(betas, train_betas, signal_std, source):  # the clean end skipped
        if np.sqrt(1 - noise_levels(betas)[0] ** 2) < 0.5 * np.sqrt(1 - noise_levels(train_betas)[0] ** 2):
            return
        check_schedule(betas, train_betas, signal_std, source)

    for broken in (noisy_end_only, snr_and_noisy_end):
        with pytest.raises(AssertionError):
            check_refusals(broken)


def test_config_show_passes_base_and_refuses_manual_6_at_unit_variance(capsys, monkeypatch):
    assert main(["config", "show", str(BASE), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["config"]["train"]["mel_loss_weight"] == 0 and shown["departures"] == []
    unit = ["--set", "model.signal_std=1.0", "--set", 'eval.schedules=["manual-6"]']
    assert main(["config", "show", str(BASE), "--json", *unit]) == 2
    err = capsys.readouterr().err
    assert "schedule 'manual-6'" in err and "SNR -2.2 dB" in err and "-20 dB" in err
    monkeypatch.setattr(schedules, "check_schedule", noisy_end_only)  # the broken check lets it through
    assert main(["config", "show", str(BASE), "--json", *unit]) == 0


def refusals(config: RunConfig, where: str) -> list[str]:
    """Each eval schedule of `config` through check_schedule, for the signal scale it trains on."""
    found = []
    for name in config.eval.schedules:
        try:
            check_schedule(resolve_schedule(name), resolve_schedule(config.train.schedule), signal_std_of(config),
                           f"{where}: {name}")
        except ValueError as err:
            found.append(str(err))
    return found


def test_every_shipped_config_and_grid_passes_the_schedule_check():
    configs = sorted((ROOT / "experiments" / "configs").glob("*.toml"))
    grids = sorted((ROOT / "experiments" / "grids").glob("*.toml"))
    assert len(configs) >= 4 and len(grids) >= 10
    for path in configs:
        assert refusals(load_config(path), str(path)) == []
    for path in grids:
        for cell in load_grid(path).cells:
            assert refusals(cell.config, f"{path} [{cell.label}]") == []
    base = load_config(BASE)  # the same check finds base.toml's manual-6 at unit variance
    unit = dataclasses.replace(base, model=dataclasses.replace(base.model, signal_std=1.0))
    assert [r for r in refusals(unit, "base") if "manual-6" in r and "SNR -2.2 dB" in r]
