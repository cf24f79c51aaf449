"""Synthesis: `wg2 synth CKPT|RUN_ID "text" -o out.wav [--schedule NAME|FILE] [--pace 1.0] [--utterance ID]`,
and the batched `synthesize` that evaluation and schedule search call."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from components.autoencoder import WaveformAutoencoder
from components.diffusion import Diffusion
from components.durations import DurationPredictor
from components.model import WaveGrad2
from components.schedules import check_schedule
from evaluation.conditioning import ConditioningItem, Diagnostic, conditioning_gain
from experiments.config.disk import no_space_error
from experiments.config.run import InputError, RunConfig, config_from_dict, signal_std_of
from experiments.config.schedules import resolve_schedule
from experiments.corpus.types import PAD, SILENCE, PhonemeVocab
from experiments.train.checkpoint import read_model, weights_error
from experiments.train.precision import autocast, compile_decoder, resolve_precision, set_threads
from experiments.train.runtime import check_writable, resolve_device
from experiments.train.store_checkpoints import resolve_checkpoint


@dataclass
class LoadedModel:
    model: WaveGrad2
    config: RunConfig
    vocab: PhonemeVocab
    sample_rate: int
    hop_length: int
    device: torch.device
    autoencoder: WaveformAutoencoder | None
    path: Path
    step: int
    signal: dict  # "gain": diffusion signal = gain x waveform (or latent); "clip": its range when sampling
    weights: str = "ema"  # which weight set is loaded: "ema" or "raw"
    history: tuple = ()  # the training log (one dict per logged step), for the training-curves picture


@dataclass
class Synthesis:
    audio: np.ndarray  # (samples,) float32 at the model's sample rate
    durations: np.ndarray  # (N,) int64 frames used
    weights: np.ndarray  # (frames, N) alignment of frames to tokens


def load_checkpoint(path: str | Path, device: str = "auto", weights: str | None = None) -> LoadedModel:
    """A trained model for synthesis. weights = "ema" takes the moving average when the run kept one
    (train.ema_decay > 0), else the raw weights; "raw" always takes the raw weights; None (`wg2 eval`, `synth`,
    `search`) the checkpoint's own eval.weights, so what an evaluation logs as eval.weights is what it loaded."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such checkpoint")
    state = read_model(path)  # a truncated, foreign or incomplete file: one line naming it
    dev = resolve_device(device)
    config = config_from_dict(state["config"], str(path))
    weights = config.eval.weights if weights is None else weights
    if weights not in ("ema", "raw"):
        raise InputError(f"weights = {weights!r}; allowed: ema, raw")
    if not (isinstance(state["vocab"], list) and state["vocab"] and all(isinstance(v, str) for v in state["vocab"])):
        raise InputError(f"{path}: its vocab is not a list of phoneme strings")
    vocab = PhonemeVocab.from_list(state["vocab"])
    model = WaveGrad2(config.model, len(vocab.symbols), config.autoencoder)
    use_ema = weights == "ema" and state.get("ema") is not None
    try:
        model.load_state_dict(state["ema"] if use_ema else state["model"])
    except (RuntimeError, TypeError, AttributeError) as err:
        raise weights_error(path, err, "ema weights" if use_ema else "weights") from None
    model.to(dev).eval()
    space = model.space
    # format 1 trained on the raw signal and clipped only waveforms
    signal = state.get("signal") or {"gain": 1.0, "clip": space.unscaled_clip}
    autoencoder = space.build_autoencoder()
    if autoencoder is not None:
        try:
            autoencoder.load_state_dict(state["autoencoder"])
        except (RuntimeError, TypeError, AttributeError) as err:  # None too: a latent run saves its autoencoder
            raise weights_error(path, err, "autoencoder weights") from None
        autoencoder.to(dev).eval()
    return LoadedModel(model, config, vocab, state["sample_rate"], state["hop_length"], dev, autoencoder, path,
                       state["step"], signal, "ema" if use_ema else "raw", tuple(state.get("history") or ()))


@torch.inference_mode()
def synthesize(loaded: LoadedModel, phoneme_ids: list[np.ndarray], betas: np.ndarray,
               durations: list[np.ndarray] | None = None, pace: float = 1.0, seed: int = 0,
               batch_size: int = 1, precision: str | None = None, compile: bool | None = None,
               max_seconds: float | None = None) -> list[Synthesis]:
    """Synthesize utterances. With `durations` (ground truth) outputs have exactly sum(d) * hop samples;
    without, durations are predicted (divided by pace; rounded to whole frames). `precision` ("fp32",
    "bf16", "auto"; default the checkpoint's eval.precision) applies to the network calls only: the
    sampler's arithmetic stays fp32. `compile` (default the checkpoint's eval.compile) compiles the decoder
    once, with dynamic shapes, before the first call. An utterance longer than `max_seconds` is an InputError
    before it is sampled."""
    model, device = loaded.model, loaded.device
    if loaded.config.eval.compile if compile is None else compile:
        compile_decoder(model, device, True, "eval.compile")
    dtype = resolve_precision(precision or loaded.config.eval.precision, device)
    generator = torch.Generator(device=device).manual_seed(seed)
    results: list[Synthesis] = []
    for start in range(0, len(phoneme_ids), batch_size):
        chunk = phoneme_ids[start:start + batch_size]
        n_tokens = max(len(p) for p in chunk)
        ids = torch.zeros(len(chunk), n_tokens, dtype=torch.long)
        mask = torch.zeros(len(chunk), n_tokens)
        for b, p in enumerate(chunk):
            ids[b, :len(p)], mask[b, :len(p)] = torch.from_numpy(np.asarray(p, dtype=np.int64)), 1.0
        ids, mask = ids.to(device), mask.to(device)
        with autocast(device, dtype):
            encoded, log_d = model.encode(ids, mask)
        log_d = log_d.float()
        if durations is not None:
            dur = torch.zeros(len(chunk), n_tokens, device=device)
            for b, d in enumerate(durations[start:start + batch_size]):
                dur[b, :len(d)] = torch.from_numpy(np.asarray(d, dtype=np.float32))
        else:
            dur = torch.round(DurationPredictor.to_frames(log_d, mask, pace))
            dur[:, 0] = torch.where(dur.sum(1) == 0, torch.ones_like(dur[:, 0]), dur[:, 0])  # never 0 frames
        n_frames = dur.sum(1).long()  # (B,)
        longest = float(n_frames.max()) * loaded.hop_length / loaded.sample_rate
        if max_seconds is not None and longest > max_seconds:
            raise InputError(f"the speech would last {longest:.0f} s; at most {max_seconds:g} s are synthesized at "
                             "once: use a shorter text or a faster --pace")
        frames = torch.arange(int(n_frames.max()), device=device)[None].expand(len(chunk), -1)
        with autocast(device, dtype):
            cond = model.condition(encoded, dur, mask, frames)

        def predict(x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
            with autocast(device, dtype):
                return model.denoise(x, cond.states, level)

        shape = (len(chunk), model.signal_channels, frames.shape[1] * model.hop)
        signal = Diffusion.sample(predict, shape, betas, device, generator, clip=loaded.signal["clip"])
        signal = signal / loaded.signal["gain"]
        audio = model.space.decode(signal, loaded.autoencoder)
        for b in range(len(chunk)):
            length = int(n_frames[b]) * loaded.hop_length
            results.append(Synthesis(audio[b, :length].float().cpu().numpy(),
                                     dur[b, :len(chunk[b])].long().cpu().numpy(),
                                     cond.weights[b, :int(n_frames[b]), :len(chunk[b])].float().cpu().numpy()))
    return results


@torch.no_grad()
def check_loaded_schedule(loaded: LoadedModel, betas: np.ndarray, source: str) -> None:
    """An inference schedule checked at both ends against this checkpoint's training schedule and the signal scale it
    trained on (components.schedules.check_schedule); InputError (exit 2) naming `source`."""
    std = loaded.signal.get("std") or signal_std_of(loaded.config)  # checkpoints from before the scale was stored
    try:
        check_schedule(betas, resolve_schedule(loaded.config.train.schedule), std, source)
    except ValueError as err:
        raise InputError(str(err)) from err


def diagnose(loaded: LoadedModel, utterances) -> Diagnostic:
    """The envelope and phoneme gains of the loaded weights on these utterances (evaluation.conditioning)."""
    return conditioning_gain(loaded.model, conditioning_items(loaded, utterances), loaded.vocab.speech_ids(),
                             loaded.config.train.noise_loss)


def conditioning_items(loaded: LoadedModel, utterances) -> list[ConditioningItem]:
    """Utterances as the diffusion signal this model was trained on (scaled waveform or latent)."""
    signals = loaded.model.space.encode_each([u.audio for u in utterances], loaded.autoencoder)
    return [ConditioningItem(loaded.vocab.encode(u.phonemes), u.durations,
                             (signal * loaded.signal["gain"]).astype(np.float32))
            for u, signal in zip(utterances, signals)]


def write_wav(path: str | Path, audio: np.ndarray, sample_rate: int) -> None:
    """A 16-bit WAV, written through a temporary beside it that is removed on any failure (a full disk: an
    InputError naming the device and the path)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.wav")
    try:
        sf.write(tmp, np.clip(audio, -1, 1), sample_rate, subtype="PCM_16")
        os.replace(tmp, path)
    except BaseException as err:
        full = no_space_error(err, path)  # before the temporary goes: the device is full now
        tmp.unlink(missing_ok=True)
        if full is not None:
            raise full from err
        raise


MAX_PHONEMES = 600  # about a paragraph (~45 s of speech): longer texts are refused, to be split
MAX_SECONDS = 120.0  # the longest audio one call writes (a very low --pace stretches the text)
PACE_RANGE = (0.1, 10.0)


def check_synth_args(args) -> None:
    """The command line's values and the output path, refused before the checkpoint is read."""
    import math

    low, high = PACE_RANGE
    if not (math.isfinite(args.pace) and low <= args.pace <= high):
        raise InputError(f"--pace {args.pace}: expected a finite number > 0, from {low:g} to {high:g} (> 1 speaks "
                         "faster)")
    for name, value in (("TEXT", args.text), ("--phonemes", args.phonemes), ("--utterance", args.utterance)):
        if value is not None and not value.strip():
            raise InputError(f"{name} {value!r}: empty; expected something to say")
    if args.phonemes is not None and PAD in args.phonemes.split():
        raise InputError(f"--phonemes: {PAD} is the model's internal padding, not a phoneme")
    out = Path(args.out)
    if out.is_dir():
        raise InputError(f"-o {out}: a folder; expected a .wav file name")
    if out.suffix.lower() != ".wav":
        raise InputError(f"-o {out}: wg2 synth writes WAV audio; expected a name ending in .wav")
    try:
        check_writable(out.parent, "output folder")
    except InputError as err:
        raise InputError(f"-o {out}: {err}") from None


def check_length(phonemes: list[str], source: str) -> None:
    if all(p in (SILENCE, PAD) for p in phonemes):
        raise InputError(f"{source}: nothing to say in it (only silence); expected words or phonemes")
    if len(phonemes) > MAX_PHONEMES:
        raise InputError(f"{source}: {len(phonemes)} phonemes; at most {MAX_PHONEMES} (about a paragraph) are "
                         "synthesized at once: split the text and synthesize each part")


def cmd_synth(args) -> int:
    set_threads()
    check_synth_args(args)
    try:  # a named schedule is checked before the checkpoint is read; none given: the checkpoint's first eval one
        betas = resolve_schedule(args.schedule) if args.schedule else None
    except ValueError as err:
        raise InputError(f"--schedule: {err}") from err
    checkpoint, _ = resolve_checkpoint(args.checkpoint)
    loaded = load_checkpoint(checkpoint, args.device)
    if betas is None:
        args.schedule = loaded.config.eval.schedules[0]
        betas = resolve_schedule(args.schedule)
    check_loaded_schedule(loaded, betas, f"--schedule {args.schedule}")
    durations = None
    if sum(x is not None for x in (args.text, args.utterance, args.phonemes)) != 1:
        raise InputError("give exactly one of: TEXT, --utterance ID, --phonemes '...'")
    if args.utterance:
        from experiments.corpus.dataset import load_dataset
        dataset = load_dataset(loaded.config.data, progress=False)
        found = [u for split in ("train", "val", "test") for u in dataset.split(split) if u.id == args.utterance]
        if not found:
            raise InputError(f"--utterance {args.utterance}: not in the corpus at {loaded.config.data.root}")
        phonemes, durations = found[0].phonemes, [found[0].durations]
    elif args.phonemes:
        phonemes = args.phonemes.split()
    else:
        from experiments.corpus.espeak import text_to_phonemes
        phonemes = text_to_phonemes(args.text)
        if not phonemes:
            raise InputError(f"TEXT {args.text!r}: espeak-ng finds nothing to say in it; expected words")
    check_length(phonemes, "TEXT" if args.text else "--phonemes" if args.phonemes else f"--utterance {args.utterance}")
    try:
        ids = loaded.vocab.encode(phonemes)
    except ValueError as err:
        raise InputError(f"{err} (the model's phonemes come from its training corpus)") from err
    logging.getLogger(__name__).info("synthesizing %d phonemes with %d steps on %s...", len(phonemes), len(betas),
                                     loaded.device)
    result = synthesize(loaded, [ids], betas, durations, pace=args.pace, seed=args.seed,
                        precision=getattr(args, "precision", None), max_seconds=MAX_SECONDS)[0]
    write_wav(args.out, result.audio, loaded.sample_rate)
    logging.getLogger(__name__).info(
        "wrote %s: %.2f s at %d Hz, %d frames, schedule %s (%d steps)", args.out,
        len(result.audio) / loaded.sample_rate, loaded.sample_rate, int(result.durations.sum()), args.schedule,
        len(betas))
    return 0
