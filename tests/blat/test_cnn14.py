"""blat.models.cnn14: the paper-size parameter count, and padded batches equal clips run alone."""

from __future__ import annotations

import pytest
import torch

import blat
from blat.config import AudioEncoderConfig
from blat.models.cnn14 import Cnn14
from blat_contract.audio import FrontEndConfig
from blat_contract.config import ConfigError


def cnn14_param_count(channels=(64, 128, 256, 512, 1024, 2048), n_mels=64, embed_dim=2048) -> int:
    """PANNs CNN14 from its description: bn0 over mel bins; per block two 3x3 bias-free convs, each followed by a
    BatchNorm (weight + bias); fc1 with bias. Front-end window/filterbank and BN running stats are buffers."""
    total = 2 * n_mels  # bn0
    c_in = 1
    for c in channels:
        total += 3 * 3 * c_in * c + 2 * c  # conv1 + bn1
        total += 3 * 3 * c * c + 2 * c  # conv2 + bn2
        c_in = c
    total += channels[-1] * embed_dim + embed_dim  # fc1
    return total


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.slow
def test_paper_cnn14_parameter_count():
    cfg = blat.get_model_config("blat-cnn14-bertm").audio
    assert cfg.channels == (64, 128, 256, 512, 1024, 2048) and cfg.embed_dim == 2048
    expected = cnn14_param_count()
    assert expected == 79_673_792
    model = Cnn14(cfg)
    assert n_params(model) == expected
    # and the state dict carries PANNs/BLAT names
    keys = set(model.state_dict())
    assert {
        "bn0.weight",
        "conv_block1.conv1.weight",
        "conv_block6.bn2.running_var",
        "fc1.weight",
        "melspec_extractor.spectrogram.window",
        "melspec_extractor.mel_scale.fb",
    } <= keys
    assert "conv_block1.conv1.bias" not in keys


def test_param_count_small_configs():
    for channels, embed in [((8, 16, 32), 32), ((32, 64, 128, 256), 256)]:
        assert n_params(Cnn14(AudioEncoderConfig(channels=channels, embed_dim=embed))) == cnn14_param_count(
            channels, 64, embed
        )


def test_min_samples_and_time_stride():
    paper = AudioEncoderConfig()
    assert paper.num_pools == 5 and paper.time_stride == 32
    # 32 log-mel frames (1 + N // 320) are the fewest that survive five 2x poolings: N = 31 * 320
    assert paper.min_samples == 9920 and paper.frontend.num_frames(paper.min_samples) == 32
    assert paper.frontend.num_frames(paper.min_samples - 1) == 31
    tiny = AudioEncoderConfig(channels=(8, 16, 32))
    assert tiny.time_stride == 4 and tiny.min_samples == 3 * 320


@pytest.mark.parametrize("n_mels,channels", [(60, (64, 128, 256, 512, 1024, 2048)), (64, (1,) * 8), (6, (4, 4, 4))])
def test_n_mels_must_survive_the_poolings(n_mels, channels):
    with pytest.raises(ConfigError, match="divisible"):
        AudioEncoderConfig(frontend=FrontEndConfig(n_mels=n_mels), channels=channels)


def test_empty_channels_rejected():
    with pytest.raises(ConfigError):
        AudioEncoderConfig(channels=())


def calibrate_batchnorm(model: Cnn14, seed: int = 0) -> None:
    """Fresh BNs are the identity in eval mode, which leaves activations badly scaled (a toy net then barely
    reacts to its input) and zero padding unchanged by BN. Statistics from one batch of noise fix both, and
    random affine parameters keep the padding non-zero after BN, so the length masks really matter."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average: the statistics of the calibration batch
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.5)
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 16_000, generator=g) * torch.rand(4, 1, generator=g))
    model.eval()


def make_model(channels=(4, 8, 8, 16, 16, 16), seed=0) -> Cnn14:
    """Paper depth (five poolings, time_stride 32) at toy width, so it runs in milliseconds."""
    torch.manual_seed(seed)
    model = Cnn14(AudioEncoderConfig(channels=channels, embed_dim=24, dropout=0.5))
    calibrate_batchnorm(model, seed)
    return model


def clips(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=g) * 0.3 for n in lengths]


def pad(batch, garbage: bool = False):
    shape = (len(batch), max(len(c) for c in batch))
    out = torch.randn(shape, generator=torch.Generator().manual_seed(99)) if garbage else torch.zeros(shape)
    for i, c in enumerate(batch):
        out[i, : len(c)] = c
    return out, torch.tensor([len(c) for c in batch])


LENGTHS = [24_000, 13_001, 9_920, 9_919, 5_000]  # 0.75 s ... one exactly min_samples, two shorter


@pytest.mark.parametrize("garbage", [False, True], ids=["zero-padded", "noise-padded"])
@pytest.mark.parametrize("channels", [(4, 8, 8, 16, 16, 16), (8, 16, 32)])
@torch.no_grad()
def test_padded_batch_equals_clips_alone(channels, garbage):
    model = make_model(channels)
    cs = clips(LENGTHS)
    wave, lengths = pad(cs, garbage)
    emb = model(wave, lengths)
    frames, valid = model.frames(wave, lengths)
    assert emb.shape == (len(cs), 24) and frames.shape[::2] == (len(cs), channels[-1])
    for i, c in enumerate(cs):
        alone_emb = model(c[None])
        alone_frames, alone_valid = model.frames(c[None])
        torch.testing.assert_close(emb[i], alone_emb[0], atol=1e-5, rtol=1e-5)
        assert valid[i] == alone_valid[0] == alone_frames.shape[1]
        torch.testing.assert_close(frames[i, : valid[i]], alone_frames[0], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_valid_frames():
    model = make_model()
    wave, lengths = pad(clips(LENGTHS))
    _, valid = model.frames(wave, lengths)
    # (1 + N // 320) log-mel frames halved five times, at least one frame
    expected = [max(1, (1 + n // 320) // 32) for n in LENGTHS]
    assert valid.tolist() == expected


@torch.no_grad()
def test_short_clips_are_heard():
    """A clip shorter than min_samples is zero-padded to it: its embedding must still depend on its content."""
    model = make_model()
    n = model.cfg.min_samples // 2
    (a,) = clips([n], seed=3)  # noise
    b = 0.3 * torch.sin(2 * torch.pi * 1000 * torch.arange(n) / 32_000)  # a 1 kHz tone
    ea, eb = model(a[None]), model(b[None])
    assert (ea - eb).abs().max() > 0.1
    # ... and equals the embedding of the same clip zero-padded to min_samples by hand
    padded = torch.nn.functional.pad(a, (0, model.cfg.min_samples - n))
    torch.testing.assert_close(ea, model(padded[None]), atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_lengths_default_to_full_width_and_trailing_padding_is_ignored():
    model = make_model()
    (c,) = clips([16_000], seed=5)
    base = model(c[None])
    torch.testing.assert_close(base, model(c[None], torch.tensor([16_000])))
    noisy_tail = torch.cat([c, torch.randn(5_000)])  # garbage past the stated length is not heard
    torch.testing.assert_close(base, model(noisy_tail[None], torch.tensor([16_000])), atol=1e-5, rtol=1e-5)


def test_train_mode_uses_dropout():
    model = make_model().train()
    (c,) = clips([12_000])
    torch.manual_seed(0)
    a = model(c[None].repeat(2, 1))
    assert not torch.allclose(a[0], a[1])  # independent dropout masks per row
