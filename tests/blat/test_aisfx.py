"""The aisfx tower: the package's own weights, parity with the package's inference code on real recordings (at
its 44.1 kHz and at our 32 kHz), batch invariance, and the heads-only checkpoints that leave it out."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import blat
from blat.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from blat.config import AudioEncoderConfig
from blat.models.aisfx import CHANNELS, WEIGHTS, aisfx_frontend, read_aisfx_weights
from blat.models.towers import build_audio_tower

aisfx = pytest.importorskip("aisfx.models.cnn2d", reason="the aisfx package (pip install --no-deps aisfx==0.1.2)")
librosa = pytest.importorskip("librosa")


def tower(rate: int):
    cfg = AudioEncoderConfig(
        frontend=aisfx_frontend(rate), channels=CHANNELS, embed_dim=512, dropout=0.0, arch="aisfx", pretrained=WEIGHTS
    )
    return build_audio_tower(cfg).eval()


def cosine(a, b):
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def package_embeddings(freedesktop_sounds):
    """The package's path for each file: its librosa spectrogram, its normalisation, its network and weights.

    (The package's own loader calls torch.load without allow-listing numpy scalars, which torch >= 2.6 refuses, and
    its librosa path hands the network a (mels, time) array; the network wants (time, mels), as it says.)"""
    from aisfx.preprocessing import spectrogram_normalize
    from aisfx.spectrogram.spectrogram_librosa import compute_spectrogram

    net = aisfx.EmbeddingNet("max", 3, 1, 64)
    net.load_state_dict(read_aisfx_weights())
    net.eval()
    out = {}
    for path in freedesktop_sounds[:10]:
        spec = spectrogram_normalize(compute_spectrogram(str(path), 44100, 2048, 1024, 96, 0.0, 22050.0))
        with torch.no_grad():
            out[path] = net(torch.tensor(spec.T[None], dtype=torch.float32))[0].numpy()
    return out


def test_tower_matches_the_package_at_its_own_rate(package_embeddings):
    t = tower(44100)
    for path, ref in package_embeddings.items():
        wave, _ = librosa.load(str(path), sr=44100)
        with torch.no_grad():
            ours = t(torch.from_numpy(wave[None]))[0].numpy()
        assert np.abs(ours - ref).max() <= 1e-4 * np.abs(ref).max(), path.name


def test_tower_at_32khz_stays_close_to_the_package(package_embeddings):
    t = tower(32000)
    cosines = []
    for path, ref in package_embeddings.items():
        wave, _ = librosa.load(str(path), sr=32000)
        with torch.no_grad():
            cosines.append(cosine(t(torch.from_numpy(wave[None]))[0].numpy(), ref))
    assert min(cosines) > 0.97 and np.mean(cosines) > 0.985, cosines


def test_frontend_of_the_config_file_is_the_derived_one():
    cfg = blat.get_model_config("aisfx-minilm").audio
    assert cfg.frontend == aisfx_frontend(32000) and cfg.arch == "aisfx" and cfg.pretrained == WEIGHTS
    assert blat.get_model_config("aisfx-captioner").audio == cfg  # one tower for the captioner and the encoder
    assert (cfg.frontend.win_length, cfg.frontend.hop_length) == (1486, 743)  # 46.4 ms and 23.2 ms, as at 44.1 kHz


def test_batching_does_not_change_a_clip(real_clips):
    t = tower(32000)
    clips = [real_clips[k][:n] for k, n in zip(sorted(real_clips)[:5], (32000, 20000, 50000, 4000, 70001))]
    with torch.no_grad():
        alone = [t.frames(torch.from_numpy(c[None])) for c in clips]
        n = max(map(len, clips))
        wave = torch.stack([torch.nn.functional.pad(torch.from_numpy(c), (0, n - len(c))) for c in clips])
        frames, valid = t.frames(wave, torch.tensor([len(c) for c in clips]))
        pooled = t.pool(frames, valid)
    for i, (f, v) in enumerate(alone):
        assert int(valid[i]) == int(v[0])
        torch.testing.assert_close(frames[i, : int(v[0])], f[0, : int(v[0])], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(pooled[i], t.pool(f, v)[0], atol=1e-4, rtol=1e-4)


def test_short_clip_is_padded_to_one_frame():
    t = tower(32000)
    assert t.cfg.min_samples == 7 * 743  # 8 log-mel frames give one output frame
    with torch.no_grad():
        frames, valid = t.frames(0.1 * torch.randn(1, 100))
    assert frames.shape == (1, 1, 512) and int(valid[0]) == 1


def test_altered_weights_file_is_refused(tmp_path):
    from blat.models.text import resolve_path

    bad = tmp_path / "checkpoint.pth"
    data = bytearray(resolve_path(WEIGHTS).read_bytes())
    data[-100] ^= 1
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256"):
        read_aisfx_weights(str(bad))


def test_heads_only_checkpoint_rebuilds_the_model(tmp_path):
    torch.manual_seed(0)
    model = blat.create_model("aisfx-minilm").eval()
    with torch.no_grad():
        model.audio_proj.weight.mul_(1.5)  # a "trained" head
    path = save_checkpoint(model, tmp_path / "dual.safetensors", omit_pretrained=True, half=True)
    assert path.stat().st_size < 2_000_000  # both towers left out: they load from their packages
    loaded, _ = load_checkpoint(path)
    wave = 0.1 * torch.randn(2, 32000)
    with torch.no_grad():
        np.testing.assert_allclose(loaded.encode_audio(wave).numpy(), model.encode_audio(wave).numpy(), atol=2e-3)
        np.testing.assert_allclose(
            loaded.encode_texts(["a door slams"]).numpy(), model.encode_texts(["a door slams"]).numpy(), atol=2e-3
        )


def test_a_trained_tower_cannot_be_left_out(tmp_path):
    model = blat.create_model("aisfx-minilm")
    with torch.no_grad():
        model.audio_encoder.conv_block1.conv1.weight.add_(0.01)
    with pytest.raises(CheckpointError, match="differs from its pretrained source"):
        save_checkpoint(model, tmp_path / "x.safetensors", omit_pretrained=True)
    save_checkpoint(model, tmp_path / "full.safetensors")  # in full it is fine, and needs no package to load
    loaded, _ = load_checkpoint(tmp_path / "full.safetensors")
    assert loaded.cfg.audio.pretrained is None
    torch.testing.assert_close(
        loaded.audio_encoder.conv_block1.conv1.weight, model.audio_encoder.conv_block1.conv1.weight
    )
