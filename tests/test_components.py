"""Every registry entry at tiny size (forward, backward, inference, shapes) and the parts' contracts."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import tiny_model

from components.configs import AutoencoderConfig, ModelConfig
from components.decoder import DECODER_PRESETS, DECODERS
from components.diffusion import Diffusion, NonFiniteError
from components.encoder import ENCODERS, reverse_padded
from components.model import WaveGrad2
from components.registry import Registry
from components.schedules import SCHEDULES, fibonacci, noise_levels, resolve_schedule_name, schedule_names, subsample
from components.spaces import SPACES
from components.upsampler import UPSAMPLERS, GaussianUpsampler, RepeatUpsampler
from components.validation import validate_model_config
from experiments.config.schedules import load_schedule_file, resolve_schedule


def tiny_batch(vocab=20):
    torch.manual_seed(0)
    ids = torch.randint(1, vocab, (2, 7))
    mask = torch.ones(2, 7)
    ids[1, 5:], mask[1, 5:] = 0, 0
    durations = torch.tensor([[2, 1, 3, 2, 1, 2, 1], [3, 2, 2, 1, 4, 0, 0]], dtype=torch.float)
    return ids, mask, durations


@pytest.mark.parametrize("encoder", ENCODERS.names())
@pytest.mark.parametrize("upsampler", UPSAMPLERS.names())
@pytest.mark.parametrize("decoder", DECODERS.names())
@pytest.mark.parametrize("zoneout", [0.0, 0.1])
def test_every_registry_combination_trains_and_infers(encoder, upsampler, decoder, zoneout):
    config = tiny_model(encoder=encoder, upsampler=upsampler, decoder=decoder, zoneout=zoneout)
    model = WaveGrad2(config, vocab_size=20)
    ids, mask, durations = tiny_batch()
    encoded, log_d = model.encode(ids, mask)
    assert encoded.shape == (2, 7, 32) and log_d.shape == (2, 7)
    assert torch.all(encoded[1, 5:] == 0), "padding must stay zero"
    frames = torch.arange(6)[None].expand(2, -1)
    cond = model.condition(encoded, durations, mask, frames)
    assert cond.states.shape == (2, 32, 6) and cond.weights.shape == (2, 6, 7)
    noisy = torch.randn(2, 1, 6 * model.hop)
    out = model.denoise(noisy, cond.states, torch.rand(2))
    assert out.shape == noisy.shape
    (out.pow(2).mean() + log_d.mean()).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    model.eval()
    with torch.no_grad():
        sample = Diffusion.sample(lambda x, lvl: model.denoise(x, cond.states, lvl), (2, 1, 6 * model.hop),
                                  resolve_schedule_name("manual-6"))
    assert sample.shape == (2, 1, 6 * model.hop) and torch.isfinite(sample).all()


def test_zoneout_eval_is_deterministic_and_training_is_not():
    model = WaveGrad2(tiny_model(zoneout=0.5), vocab_size=20)
    ids, mask, _ = tiny_batch()
    model.eval()
    assert torch.equal(model.encode(ids, mask)[0], model.encode(ids, mask)[0])
    model.train()
    torch.manual_seed(1)
    a = model.encode(ids, mask)[0]
    torch.manual_seed(2)
    assert not torch.equal(a, model.encode(ids, mask)[0])


def test_reverse_padded_keeps_padding_in_place():
    x = torch.arange(10.0).view(2, 5, 1)
    out = reverse_padded(x, torch.tensor([5, 3]))
    assert out[0, :, 0].tolist() == [4, 3, 2, 1, 0]
    assert out[1, :, 0].tolist() == [7, 6, 5, 8, 9]


def test_gaussian_weights_sum_to_one_mask_padding_and_peak_at_centres():
    ids, mask, durations = tiny_batch()
    encoded = torch.randn(2, 7, 4)
    sigma = torch.full((2, 7), 0.8)
    frames = torch.arange(12)[None].expand(2, -1)
    _, w = GaussianUpsampler()(encoded, durations, sigma, mask, frames)
    assert torch.allclose(w.sum(-1), torch.ones(2, 12), atol=1e-6)
    assert torch.all(w[1, :, 5:] == 0), "padded tokens get no weight"
    centres = torch.cumsum(durations[0], 0) - durations[0] / 2  # token i peaks at the frame nearest c_i
    for i in range(7):
        peak_frame = int(torch.argmax(w[0, :, i]))
        assert abs(peak_frame + 0.5 - centres[i].item()) <= 1.0


@pytest.mark.parametrize("scale", [0.05, 0.02])
def test_gaussian_approaches_repeat_as_sigma_goes_to_zero(scale):
    """With integer durations and sigma_i = scale * d_i -> 0, each frame's weight goes to the token whose span holds it."""
    ids, mask, durations = tiny_batch()
    durations = durations.clamp(min=1) * mask
    encoded = torch.randn(2, 7, 4)
    frames = torch.arange(int(durations.sum(1).min()))[None].expand(2, -1)
    sigma = (scale * durations).clamp(min=1e-3)
    g_states, g_w = GaussianUpsampler()(encoded, durations, sigma, mask, frames)
    r_states, r_w = RepeatUpsampler()(encoded, durations, None, mask, frames)
    assert torch.allclose(g_w, r_w, atol=1e-4)
    assert torch.allclose(g_states, r_states, atol=1e-3)


def test_repeat_repeats_each_state_d_times():
    encoded = torch.arange(3.0).view(1, 3, 1)
    states, _ = RepeatUpsampler()(encoded, torch.tensor([[2.0, 1.0, 3.0]]), None, torch.ones(1, 3),
                                  torch.arange(6)[None])
    assert states[0, :, 0].tolist() == [0, 0, 1, 2, 2, 2]


@pytest.mark.parametrize("factors", [[5, 5, 3, 2, 2], [4, 4, 4, 2, 2], [4, 4], [8]])
def test_decoder_output_length_is_frames_times_hop(factors):
    decoder = DECODERS.build("wavegrad", ModelConfig(decoder_preset="tiny", upsample_factors=factors), cond_channels=8,
                             signal_channels=3)
    assert decoder.hop == math.prod(factors)
    out = decoder(torch.randn(1, 3, 5 * decoder.hop), torch.randn(1, 8, 5), torch.rand(1))
    assert out.shape == (1, 3, 5 * decoder.hop)
    with pytest.raises(ValueError, match="frames"):
        decoder(torch.randn(1, 3, 5 * decoder.hop + 1), torch.randn(1, 8, 5), torch.rand(1))


def test_hop_mismatch_fails_validation_naming_both_keys():
    with pytest.raises(ValueError, match=r"upsample_factors.*data.hop_length = 256"):
        validate_model_config(tiny_model(), AutoencoderConfig(), hop_length=256)
    validate_model_config(tiny_model(upsample_factors=[4, 4, 4, 2, 2]), AutoencoderConfig(), hop_length=256)
    with pytest.raises(ValueError, match="latent"):
        validate_model_config(tiny_model(space="latent", upsample_factors=[4, 4, 4]),
                              AutoencoderConfig(stride=16), hop_length=256)


def test_signal_spaces_encode_and_decode_at_their_hop():
    audio = torch.randn(2, 16 * 10 + 5)
    waveform = SPACES.build("waveform", AutoencoderConfig())
    assert waveform.encode(audio).shape == (2, 1, 165) and torch.equal(waveform.decode(waveform.encode(audio)), audio)
    assert (waveform.signal_channels, waveform.hop_divisor, waveform.build_autoencoder()) == (1, 1, None)
    config = AutoencoderConfig(stride=16, latent_channels=4, hidden_channels=8)
    latent = SPACES.build("latent", config)
    assert (latent.signal_channels, latent.hop_divisor, latent.unscaled_clip) == (4, 16, None)
    autoencoder = latent.build_autoencoder().eval()
    with torch.no_grad():
        signal = latent.encode(audio, autoencoder)  # the 5 samples that fill no latent step are cropped
        assert signal.shape == (2, 4, 10) and latent.decode(signal, autoencoder).shape == (2, 160)
    assert [s.shape for s in latent.encode_each([audio[0].numpy()], autoencoder)] == [(4, 10)]
    with pytest.raises(ValueError, match="autoencoder"):
        latent.decode(signal)
    with pytest.raises(ValueError, match="allowed: waveform, latent"):
        validate_model_config(tiny_model(space="spectrogram"), AutoencoderConfig(), 300)


def test_unknown_registry_name_lists_allowed():
    with pytest.raises(ValueError, match="allowed: gaussian, repeat"):
        validate_model_config(tiny_model(upsampler="linear"), AutoencoderConfig(), 300)
    with pytest.raises(TypeError):
        Registry("thing", torch.nn.Module, {"bad": int})


def test_decoder_presets_have_paper_base_channels():
    base = DECODER_PRESETS["base"]
    assert base["input"] == 768 and base["ublocks"] == [512, 512, 256, 128, 128]
    assert base["dblocks"][1:] == [128, 128, 256, 512]


# The sampler's distributional tests (exact noise predictors, corrupted samplers, clipping) live in test_sampler.py;
# the noising formula and the training noise-level distribution in test_paper_correctness.py.


def test_schedules_are_float64_and_named_ones_end_near_training_noise():
    train_final = noise_levels(resolve_schedule_name("linear-1000"))[-1]
    for name in ("linear-50", "fibonacci-25"):
        betas = resolve_schedule_name(name)
        assert betas.dtype == np.float64
        assert abs(noise_levels(betas)[-1] - train_final) < 0.02
    assert len(fibonacci(25)) == 25 and np.all(np.diff(fibonacci(25)) >= 0)
    sub = subsample(resolve_schedule_name("linear-50"), 6)
    assert len(sub) == 6 and abs(noise_levels(sub)[-1] - noise_levels(resolve_schedule_name("linear-50"))[-1]) < 1e-9


def test_schedule_files_load_and_bad_ones_name_the_problem(tmp_path):
    good = tmp_path / "s.json"
    good.write_text(json.dumps({"betas": [1e-4, 1e-2, 0.5]}))
    assert resolve_schedule(str(good)).tolist() == [1e-4, 1e-2, 0.5]
    toml = tmp_path / "s.toml"
    toml.write_text("betas = [0.001, 0.1]\n")
    assert len(load_schedule_file(toml)) == 2
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"betas": [0.5, 2.0]}))
    with pytest.raises(ValueError, match=r"beta\[1\] = 2"):
        resolve_schedule(str(bad))
    with pytest.raises(ValueError, match="allowed: linear-N, cosine-N, fibonacci-N, manual-6, or a .json/.toml file"):
        resolve_schedule("quadratic-10")
    assert resolve_schedule("cosine-50").tolist() == resolve_schedule_name("cosine-50").tolist()


def test_schedule_names_are_the_registry_keys_and_components_read_no_files(tmp_path):
    assert schedule_names() == [f"{name}-N" for name in SCHEDULES.names() if name != "manual"] + ["manual-6"]
    assert resolve_schedule_name("fibonacci-25").tolist() == fibonacci(25).tolist()
    assert len(resolve_schedule_name("fibonacci-12")) == 12
    for name in ("manual-7", "quadratic-10", "linear", str(tmp_path / "s.json")):
        with pytest.raises(ValueError, match="allowed: linear-N, cosine-N, fibonacci-N, manual-6$"):
            resolve_schedule_name(name)
    with pytest.raises(ValueError, match="at least one step"):
        resolve_schedule_name("linear-0")


def test_non_finite_loss_and_sample_stop_naming_the_step():
    diffusion = Diffusion(resolve_schedule_name("linear-1000"))
    with pytest.raises(NonFiniteError, match="training step 7"):
        diffusion.loss(lambda x, lvl: x * float("nan"), torch.zeros(1, 1, 100), step=7)
    calls = []

    def explode(x, lvl):
        calls.append(1)
        return x * (float("inf") if len(calls) == 3 else 0.0)

    with pytest.raises(NonFiniteError, match="refinement step 3 of 6"):
        Diffusion.sample(explode, (1, 1, 100), resolve_schedule_name("manual-6"))


@pytest.mark.parametrize("registry", [ENCODERS, UPSAMPLERS, DECODERS], ids=lambda r: r.family)
def test_every_entry_is_built_from_its_own_section_of_the_model_config(registry):
    """A section's fields are read by name from the [model] keys (so user keys and config hashes stay
    ModelConfig's), and its defaults are ModelConfig's."""
    for name in registry.names():
        config_cls = registry.get(name).Config
        assert registry.section(name, ModelConfig()) == config_cls(), name
    assert DECODERS.section("wavegrad", ModelConfig(upsample_factors=[4, 4])).upsample_factors == [4, 4]
    with pytest.raises(TypeError, match="Config is not a frozen dataclass"):
        registry.with_entries(broken=type("Broken", (registry.interface,), {"Config": dict}))
