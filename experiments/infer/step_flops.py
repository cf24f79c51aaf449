"""FLOPs of a run config's training step, decoder pass and stage-one step, counted on the real model at the
config's shapes without computing anything heavy (experiments/grid/pricing.py turns them into GPU-hours).

How: torch.utils.flop_counter.FlopCounterMode over the same calls the training step makes
(experiments/train/loop.py): encode, duration loss, upsampling to the window's frames, the auxiliary mel head when
train.mel_loss_weight > 0, the decoder on the noisy window, then backward. The decoder, where nearly all the
work is, runs on the meta device (shapes only, no arithmetic); the encoder path needs real tensors (packing
the BiLSTM's sequences reads their lengths), so it runs on CPU with uninitialised weights at batch 1. Every
part is linear in the batch, so both counts are taken at batch 1 and multiplied by train.batch_size.

What is counted is what FlopCounterMode counts: matrix multiplies and convolutions, forward and backward.
Elementwise work, the optimizer, the EMA, FFTs (stage one's STFT loss) and host overhead are not; the
utilisation assumed when pricing has to absorb them.

The utterance each batch item is cut from: 40 phonemes of 8 frames (as `wg2 bench` draws its synthetic
batches), more phonemes when the window is longer than 320 frames. Only the encoder's count depends on it.
"""
from __future__ import annotations

import dataclasses
import json
import math

import torch
from torch.utils.flop_counter import FlopCounterMode

from components.autoencoder import AUTOENCODERS
from components.durations import DurationPredictor
from components.model import WaveGrad2
from evaluation.signal_features import N_MELS
from experiments.config.run import RunConfig

VOCAB = 64  # phoneme inventory size assumed (the embedding is a lookup: its size costs no FLOPs)
UTTERANCE_TOKENS, FRAMES_PER_TOKEN = 40, 8


@dataclasses.dataclass(frozen=True)
class StepFlops:
    encoder: int  # encoder, duration (and range) predictors, upsampler, mel head: forward + backward, whole batch
    decoder: int  # decoder on the window: forward + backward, whole batch

    @property
    def total(self) -> int:
        return self.encoder + self.decoder


_cache: dict[str, object] = {}


def _cached(kind: str, config: RunConfig, compute):
    """Counts depend on the model, the autoencoder, the sample rate and hop, the batch, the window and whether
    the mel head exists: cells differing only in seeds, steps or eval settings share one count."""
    t = config.train
    key = json.dumps([kind, dataclasses.asdict(config.model), dataclasses.asdict(config.autoencoder),
                      config.data.sample_rate, config.data.hop_length, t.batch_size, t.window_frames,
                      t.mel_loss_weight > 0], sort_keys=True)
    if key not in _cache:
        _cache[key] = compute()
    return _cache[key]


def _model(config: RunConfig) -> WaveGrad2:
    """The cell's model: built on meta (no memory, no init); the encoder path then gets CPU storage."""
    with torch.device("meta"):
        model = WaveGrad2(config.model, VOCAB, config.autoencoder)
    for part in (model.encoder, model.duration_predictor, model.upsampler, model.range_predictor):
        if part is not None:
            part.to_empty(device="cpu")
    return model.train()


def _count(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def training_step_flops(config: RunConfig) -> StepFlops:
    """FLOPs of one training step of `config` at train.batch_size x train.window_frames (module docstring)."""
    return _cached("train", config, lambda: _training_step_flops(config))


def _training_step_flops(config: RunConfig) -> StepFlops:
    model, window = _model(config), config.train.window_frames
    tokens = max(UTTERANCE_TOKENS, math.ceil(window / FRAMES_PER_TOKEN))
    frames = torch.arange(window)[None]
    mel_head = (torch.nn.Linear(model.encoder.out_channels, N_MELS) if config.train.mel_loss_weight > 0 else None)

    def encoder_path(n: int) -> int:
        ids, mask = torch.randint(1, VOCAB, (1, n)), torch.ones(1, n)
        durations = torch.full((1, n), float(FRAMES_PER_TOKEN))

        def run():
            encoded, log_durations = model.encode(ids, mask)
            loss = DurationPredictor.loss(log_durations.float(), durations, mask)
            states = model.condition(encoded, durations, mask, frames).states  # (1, C, W)
            if mel_head is not None:
                loss = loss + mel_head(states.transpose(1, 2)).square().mean()
            (loss + states.sum()).backward()  # states.sum(): the gradient the decoder sends back into them
        return _count(run)

    # Every part of the encoder path is affine in the number of phonemes (convolutions, LSTMs, the W x N
    # upsampling weights), so two short counts give the long one exactly, without stepping a ZoneOut
    # LSTM cell through 40 phonemes under the counter (seconds per config).
    short, longer = encoder_path(2), encoder_path(4)
    encoder = short + (longer - short) * (tokens - 2) // 2

    with torch.device("meta"):
        states = torch.empty(1, model.encoder.out_channels, window, requires_grad=True)
        signal = torch.empty(1, model.signal_channels, window * model.hop)
        level = torch.empty(1)

    def decoder_path():
        (model.denoise(signal, states, level).float() - signal).abs().mean().backward()

    batch = config.train.batch_size
    return StepFlops(batch * encoder, batch * _count(decoder_path))


def decoder_flops_per_audio_second(config: RunConfig) -> float:
    """FLOPs of one decoder forward (one refinement step at batch 1) per second of audio it produces."""
    return _cached("decode", config, lambda: _decoder_flops_per_audio_second(config))


def _decoder_flops_per_audio_second(config: RunConfig) -> float:
    model, frames = _model(config).eval(), 256
    with torch.device("meta"), torch.no_grad():
        states = torch.empty(1, model.encoder.out_channels, frames)
        signal = torch.empty(1, model.signal_channels, frames * model.hop)
        level = torch.empty(1)
        flops = _count(lambda: model.denoise(signal, states, level))
    return flops / (frames * config.data.hop_length / config.data.sample_rate)


def autoencoder_step_flops(config: RunConfig) -> int:
    """FLOPs of one stage-one training step (autoencoder encoder + decoder, forward + backward, at
    autoencoder.batch_size x segment_samples); the bottleneck and the STFT loss's FFTs are not counted."""
    return _cached("stage one", config, lambda: _autoencoder_step_flops(config))


def _autoencoder_step_flops(config: RunConfig) -> int:
    ae = config.autoencoder
    with torch.device("meta"):
        model = AUTOENCODERS.build(ae.kind, ae)
        audio = torch.empty(1, 1, ae.segment_samples - ae.segment_samples % ae.stride)

    def step():
        (model.decoder(model.encoder(audio)) - audio).abs().mean().backward()

    return ae.batch_size * _count(step)
