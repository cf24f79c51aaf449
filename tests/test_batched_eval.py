"""Batched synthesis against batch 1, and `wg2 eval` reporting the RTF at batch 1 and at eval.batch_size."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from conftest import tiny_model

from components.model import WaveGrad2
from experiments.config.run import EvalConfig, RunConfig, TrainConfig
from experiments.infer.evaluate import evaluate, format_summary
from experiments.infer.synth import load_checkpoint
from experiments.train.loop import train

TINY = tiny_model(encoder_dropout=0.0)


def test_padding_changes_only_the_last_frames_of_a_shorter_utterance():
    """The network on a padded batch against batch 1 with the same noisy input: the longest utterance matches;
    a shorter one matches except within the decoder's receptive field of its end (no length mask). This is
    why eval scores batch-1 outputs and reports batched synthesis as speed only."""
    torch.manual_seed(0)
    model = WaveGrad2(TINY, 40).eval()
    with torch.no_grad():  # the output layer starts at zero: give the decoder weights that pass signal through
        for p in model.decoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    hop, rng = model.hop, np.random.default_rng(0)
    lengths = [12, 20]
    ids = [torch.from_numpy(rng.integers(1, 40, n)) for n in lengths]
    durs = [torch.from_numpy(rng.integers(2, 6, n).astype(np.float32)) for n in lengths]
    frames = [int(d.sum()) for d in durs]
    x, level = torch.randn(2, model.signal_channels, max(frames) * hop), torch.full((2,), 0.5)
    ids_b, mask_b, dur_b = torch.zeros(2, 20, dtype=torch.long), torch.zeros(2, 20), torch.zeros(2, 20)
    for b, n in enumerate(lengths):
        ids_b[b, :n], mask_b[b, :n], dur_b[b, :n] = ids[b], 1.0, durs[b]
    with torch.no_grad():
        enc, _ = model.encode(ids_b, mask_b)
        cond = model.condition(enc, dur_b, mask_b, torch.arange(max(frames))[None].expand(2, -1))
        batched = model.denoise(x, cond.states, level)
        for b, n in enumerate(lengths):
            mask = torch.ones(1, n)
            enc1, _ = model.encode(ids[b][None], mask)
            cond1 = model.condition(enc1, durs[b][None], mask, torch.arange(frames[b])[None])
            torch.testing.assert_close(cond1.states[0], cond.states[b, :, :frames[b]], atol=1e-5, rtol=1e-5)
            single = model.denoise(x[b:b + 1, :, :frames[b] * hop], cond1.states, level[:1])[0]
            diff = (single - batched[b, :, :frames[b] * hop]).abs().amax(0)
            if frames[b] == max(frames):
                assert diff.max() < 1e-5
            else:
                edge = 4 * hop  # the deviation stays within the last 4 frames (measured: ~2.2 frames)
                assert diff[:-edge].max() < 1e-5
                assert diff[-edge:].max() > 1e-3, "padding reaches the edge frames: if this fails, update the docs"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, corpus_dir):
    from experiments.config.run import DataConfig

    root = tmp_path_factory.mktemp("batched")
    data = DataConfig(root=str(corpus_dir), cache_dir=str(root / "cache"), val_fraction=0.3, test_fraction=0.1)
    config = RunConfig(data=data, model=TINY,
                       train=TrainConfig(steps=2, batch_size=4, window_frames=16, warmup_steps=1, gain_utterances=0),
                       eval=EvalConfig(limit=3, metric_workers=1, audio_artifacts=0, schedules=["manual-6"]))
    return train(config, root / "run", device="cpu", progress=False).checkpoint


def test_eval_reports_rtf_at_batch_one_and_at_eval_batch_size(checkpoint):
    loaded = load_checkpoint(checkpoint, device="cpu")
    config = dataclasses.replace(loaded.config.eval, batch_size=2)
    result = evaluate(loaded, config, None, progress=False)
    speed = result.summary["speed"]["manual-6"]
    assert set(speed["rtf_by_batch"]) == {"1", "2"} and speed["batch_size"] == 2
    assert all(v > 0 for v in speed["rtf_by_batch"].values())
    assert speed["rtf"] == speed["rtf_by_batch"]["1"] == result.metrics["manual-6/rtf"]
    assert result.metrics["manual-6/rtf_batch2"] == speed["rtf_by_batch"]["2"]
    text = format_summary(result.summary)
    assert "(batch 1)" in text and "(batch 2)" in text

    single = evaluate(loaded, dataclasses.replace(config, batch_size=1), None, progress=False)
    assert set(single.summary["speed"]["manual-6"]["rtf_by_batch"]) == {"1"}
    assert not any("rtf_batch" in k for k in single.metrics)
    # the scored outputs are batch-1 outputs whatever eval.batch_size is: the same quality numbers
    assert single.metrics["manual-6/stoi"] == result.metrics["manual-6/stoi"]
