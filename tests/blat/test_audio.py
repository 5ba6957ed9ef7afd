"""blat.audio: the log-mel front end against librosa's filterbank and a numpy STFT written here."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import torch

from blat.audio import LogMelFrontEnd, hz_to_mel_slaney, mel_filterbank, mel_to_hz_slaney
from blat_contract.audio import FrontEndConfig

CFG = FrontEndConfig()  # BLAT: 32 kHz, n_fft 1024, hop 320, 64 slaney mels, 50-14000 Hz


def librosa_fb(cfg: FrontEndConfig = CFG) -> np.ndarray:
    """(n_mels, n_freqs) float64 reference filterbank."""
    return librosa.filters.mel(
        sr=cfg.sample_rate,
        n_fft=cfg.n_fft,
        n_mels=cfg.n_mels,
        fmin=cfg.f_min,
        fmax=cfg.f_max,
        htk=False,
        norm="slaney",
        dtype=np.float64,
    )


def reference_log_mel(x: np.ndarray, cfg: FrontEndConfig = CFG) -> np.ndarray:
    """(N,) float64 waveform -> (T, n_mels) dB: centred reflect-padded frames, periodic Hann, |rfft|^2, mel, dB."""
    assert cfg.win_length == cfg.n_fft
    padded = np.pad(x, cfg.n_fft // 2, mode="reflect")
    n_frames = 1 + (len(padded) - cfg.n_fft) // cfg.hop_length
    idx = np.arange(cfg.n_fft)[None, :] + cfg.hop_length * np.arange(n_frames)[:, None]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(cfg.n_fft) / cfg.n_fft)  # periodic Hann
    power = np.abs(np.fft.rfft(padded[idx] * window, axis=1)) ** 2  # (T, F)
    mel = power @ librosa_fb(cfg).T  # (T, M)
    return 10.0 * np.log10(np.maximum(mel, 1e-10))


def chirp_signal(seconds: float = 3.0, seed: int = 0, sr: int = CFG.sample_rate) -> np.ndarray:
    """A 30 Hz -> 15 kHz log chirp plus a 440 Hz tone and white noise, with a silent gap."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f0, f1 = 30.0, 15_000.0
    phase = 2 * np.pi * f0 * seconds / np.log(f1 / f0) * ((f1 / f0) ** (t / seconds) - 1)
    x = 0.5 * np.sin(phase) + 0.1 * np.sin(2 * np.pi * 440 * t) + 0.01 * rng.standard_normal(len(t))
    x[int(1.0 * sr) : int(1.2 * sr)] = 0.0  # digital silence: exercises the -100 dB floor
    return x


def test_slaney_mel_scale_matches_librosa():
    hz = np.array([0.0, 50.0, 500.0, 999.0, 1000.0, 1001.0, 4000.0, 14_000.0, 16_000.0])
    np.testing.assert_allclose(hz_to_mel_slaney(hz), librosa.hz_to_mel(hz, htk=False), rtol=1e-12, atol=1e-12)
    mel = np.linspace(0, 60, 37)
    np.testing.assert_allclose(mel_to_hz_slaney(mel), librosa.mel_to_hz(mel, htk=False), rtol=1e-12, atol=1e-9)


def test_filterbank_matches_librosa():
    ours = mel_filterbank(CFG)
    ref = librosa_fb().T  # (n_freqs, n_mels)
    assert ours.shape == (513, 64) and ours.dtype == np.float32
    # float32 storage: relative error ~6e-8 of the largest weight
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6 * ref.max())
    assert (ours.sum(0) > 0).all()  # no empty filter


@pytest.mark.parametrize("n_mels,f_min,f_max", [(128, 0.0, 16_000.0), (32, 20.0, 8_000.0)])
def test_filterbank_matches_librosa_other_settings(n_mels, f_min, f_max):
    cfg = FrontEndConfig(n_mels=n_mels, f_min=f_min, f_max=f_max)
    ref = librosa_fb(cfg).T
    np.testing.assert_allclose(mel_filterbank(cfg), ref, rtol=1e-6, atol=1e-6 * ref.max())


def test_buffers_named_like_torchaudio():
    fe = LogMelFrontEnd(CFG)
    state = fe.state_dict()
    assert set(state) == {"spectrogram.window", "mel_scale.fb"}
    assert state["spectrogram.window"].shape == (1024,) and state["mel_scale.fb"].shape == (513, 64)


def _compare(ours: np.ndarray, ref: np.ndarray, tol_db: float, floor_db: float = -60.0) -> float:
    assert ours.shape == ref.shape
    mask = ref > floor_db
    assert mask.mean() > 0.5  # the comparison covers most of the spectrogram
    err = np.abs(ours - ref)[mask].max()
    assert err < tol_db, err
    return err


def exact_float64(fe: LogMelFrontEnd, cfg: FrontEndConfig = CFG) -> LogMelFrontEnd:
    """The module's algorithm in float64 with float64-exact buffers (the filterbank itself is checked against
    librosa above). `.double()` alone keeps the float32-rounded window, whose ~1e-7 relative error leaks a loud
    chirp into bins 60 dB down by ~2e-4 dB, which would hide real algorithmic errors of that size."""
    fe = fe.double()
    fe.spectrogram.window = torch.hann_window(cfg.win_length, periodic=True, dtype=torch.float64)
    fe.mel_scale.fb = torch.from_numpy(librosa_fb(cfg).T.copy())
    return fe


def test_log_mel_matches_numpy_reference_float64():
    """The algorithm itself, in float64: agreement to round-off."""
    x = chirp_signal()
    ref = reference_log_mel(x)
    fe = exact_float64(LogMelFrontEnd(CFG))
    ours = fe(torch.from_numpy(x)[None])[0].numpy()
    _compare(ours, ref, tol_db=1e-6)
    silent = ref.max(axis=1) <= -99.99  # frames inside the digital silence sit at the floor in both
    assert silent.any()
    np.testing.assert_allclose(ours[silent], -100.0, atol=1e-6)


def test_log_mel_matches_numpy_reference_float32():
    """What runs in practice. float32 round-off (FFT, window) scales with the frame's total energy, so quiet
    bins 60 dB below a loud chirp see relative errors near 1e-4 (2.6e-4 dB measured): 1e-3 dB holds with margin."""
    x = chirp_signal()
    ref = reference_log_mel(x)
    ours = LogMelFrontEnd(CFG)(torch.from_numpy(x.astype(np.float32))[None])[0].numpy()
    _compare(ours, ref, tol_db=1e-3)


@pytest.mark.parametrize("n", [320, 1000, 32_000, 32_001, 47_999, 48_000])
def test_frame_count(n):
    fe = LogMelFrontEnd(CFG)
    x = torch.from_numpy(chirp_signal(seconds=2.0)[:n].astype(np.float32))[None]
    out = fe(x)
    assert out.shape == (1, 1 + n // 320, 64)
    assert CFG.num_frames(n) == 1 + n // 320
    assert fe.num_frames(torch.tensor([n])).item() == 1 + n // 320


def test_padded_batch_equals_each_clip_alone():
    full = chirp_signal(seconds=1.5, seed=1).astype(np.float32)
    lengths = [48_000, 20_000, 9_600, 3_333, 700]
    fe = LogMelFrontEnd(CFG)
    batch = torch.zeros(len(lengths), max(lengths))
    for i, n in enumerate(lengths):
        batch[i, :n] = torch.from_numpy(full[i * 100 : i * 100 + n])
    out = fe(batch, torch.tensor(lengths))
    assert out.shape == (len(lengths), 1 + max(lengths) // 320, 64)
    for i, n in enumerate(lengths):
        alone = fe(batch[i : i + 1, :n])[0]
        T = 1 + n // 320
        assert alone.shape[0] == T
        torch.testing.assert_close(out[i, :T], alone, atol=2e-5, rtol=0)  # dB
        # and alone equals the independent reference (clips long enough for numpy's single reflection)
        ref = reference_log_mel(batch[i, :n].double().numpy())
        _compare(alone.numpy(), ref, tol_db=1e-3)


def test_short_window_centred_like_torch_stft():
    cfg = FrontEndConfig(win_length=640)
    x = torch.from_numpy(chirp_signal(seconds=0.5).astype(np.float64))[None]
    fe = exact_float64(LogMelFrontEnd(cfg), cfg)
    spec = (
        torch.stft(
            x,
            1024,
            320,
            640,
            torch.hann_window(640, periodic=True, dtype=torch.float64),
            center=True,
            pad_mode="reflect",
            return_complex=True,
        ).abs()
        ** 2
    )
    ref = 10 * torch.log10((spec.transpose(1, 2) @ torch.from_numpy(librosa_fb(cfg).T)).clamp(min=1e-10))
    mask = ref > -60
    assert (fe(x) - ref).abs()[mask].max() < 1e-6
