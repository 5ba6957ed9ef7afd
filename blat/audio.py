"""Log-mel front end as plain torch ops (exports to ONNX with the dynamo exporter).

Buffer names follow torchaudio's MelSpectrogram (`spectrogram.window`, `mel_scale.fb`) so the
released BLAT checkpoint loads into it unchanged.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from blat_contract.audio import FrontEndConfig


def hz_to_mel_slaney(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear (3 mels per 200 Hz) below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    return np.where(hz >= min_log_hz, min_log_mel + np.log(np.maximum(hz, 1e-10) / min_log_hz) / logstep, hz / f_sp)


def mel_to_hz_slaney(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    return np.where(mel >= min_log_mel, min_log_hz * np.exp(logstep * (mel - min_log_mel)), f_sp * mel)


def hz_to_mel_htk(hz: np.ndarray) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def mel_to_hz_htk(mel: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


_MEL_SCALES = {"slaney": (hz_to_mel_slaney, mel_to_hz_slaney), "htk": (hz_to_mel_htk, mel_to_hz_htk)}


def mel_filterbank(cfg: FrontEndConfig) -> np.ndarray:
    """(n_freqs, n_mels) triangular filters on `cfg.mel_scale`, normalised by `cfg.mel_norm` (librosa's layout).

    Bands above Nyquist (f_max > sample_rate / 2) get no FFT bin and stay zero."""
    to_mel, to_hz = _MEL_SCALES[cfg.mel_scale]
    fft_hz = np.linspace(0.0, cfg.sample_rate / 2, cfg.n_freqs)  # (F,)
    edges_hz = to_hz(np.linspace(to_mel(cfg.f_min), to_mel(cfg.f_max), cfg.n_mels + 2))
    lower, centre, upper = edges_hz[:-2, None], edges_hz[1:-1, None], edges_hz[2:, None]  # (M, 1) each
    rising = (fft_hz[None] - lower) / (centre - lower)
    falling = (upper - fft_hz[None]) / (upper - centre)
    fb = np.maximum(0.0, np.minimum(rising, falling))  # (M, F)
    if cfg.mel_norm == "slaney":
        fb *= 2.0 / (upper - lower)  # each filter integrates to the same area
    elif cfg.mel_norm == "l1":
        sums = fb.sum(axis=1, keepdims=True)
        fb = np.divide(fb, sums, out=np.zeros_like(fb), where=sums > 0)  # empty bands stay zero
    return fb.T.astype(np.float32)


class _Buffers(nn.Module):
    """A named holder of buffers, so state-dict keys read `spectrogram.window`, `mel_scale.fb`."""

    def __init__(self, **tensors: torch.Tensor):
        super().__init__()
        for name, t in tensors.items():
            self.register_buffer(name, t)


class LogMelFrontEnd(nn.Module):
    """(B, N) waveform and (B,) valid lengths -> (B, T, n_mels) log-mel, T = `cfg.num_frames(N)`.

    Centred frames are padded at *each clip's own* end (not the batch's), so a clip padded into a batch gets exactly
    the frames it gets alone; uncentred frames see zeros past each clip's end, so the same holds for them.
    """

    def __init__(self, cfg: FrontEndConfig):
        super().__init__()
        self.cfg = cfg
        window = torch.hann_window(cfg.win_length, periodic=True)
        self.spectrogram = _Buffers(window=window)
        self.mel_scale = _Buffers(fb=torch.from_numpy(mel_filterbank(cfg)))

    def forward(self, waveform: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        cfg = self.cfg
        B, N = waveform.shape
        if lengths is None:
            lengths = torch.full((B,), N, dtype=torch.long, device=waveform.device)
        pad = cfg.n_fft // 2 if cfg.centered else 0
        inside = torch.arange(N, device=waveform.device)[None, :] < lengths[:, None]  # (B, N)
        if cfg.peak_normalize:  # each clip by its own peak, so batching does not change it
            peak = (waveform.abs() * inside).amax(dim=1, keepdim=True)  # (B, 1)
            waveform = waveform / torch.where(peak > 0, peak, torch.ones_like(peak))
        if not cfg.centered:  # window i starts at sample i * hop: its FFT frame starts (n_fft - win) // 2 earlier
            left = (cfg.n_fft - cfg.win_length) // 2
            padded = nn.functional.pad(waveform * inside, (left, cfg.n_fft - cfg.win_length - left))
        elif cfg.pad_mode == "constant":
            padded = nn.functional.pad(waveform * inside, (pad, pad))  # zeros before and after each clip
        else:
            # Index of every sample of the padded signal, reflected at 0 and at each clip's last sample.
            idx = torch.arange(N + 2 * pad, device=waveform.device).unsqueeze(0) - pad  # (1, N + 2p)
            idx = idx.abs()
            last = (lengths - 1).clamp(min=0).unsqueeze(1)  # (B, 1)
            idx = torch.where(idx > last, 2 * last - idx, idx).clamp(0, N - 1)  # (B, N + 2p)
            padded = torch.gather(waveform, 1, idx)

        window = self.spectrogram.window
        if cfg.win_length < cfg.n_fft:  # centre a short window inside the FFT frame, as torch.stft does
            left = (cfg.n_fft - cfg.win_length) // 2
            window = nn.functional.pad(window, (left, cfg.n_fft - cfg.win_length - left))
        spec = torch.stft(padded, cfg.n_fft, cfg.hop_length, cfg.n_fft, window, center=False, return_complex=True)
        power = spec.real.square() + spec.imag.square()  # (B, F, T)
        if cfg.power_gain != 1.0:
            power = power * cfg.power_gain
        if cfg.magnitude:
            power = power.sqrt()
        mel = torch.matmul(power.transpose(1, 2), self.mel_scale.fb)  # (B, T, M)
        if cfg.compression == "log1p":
            return torch.log10(1.0 + cfg.log_gain * mel) / cfg.log_divisor
        if cfg.compression == "log":
            return torch.log(mel + cfg.log_offset)
        return 10.0 * torch.log10(mel.clamp(min=cfg.amin))

    def num_frames(self, lengths: torch.Tensor) -> torch.Tensor:
        if not self.cfg.centered:
            return 1 + torch.div(lengths - self.cfg.win_length, self.cfg.hop_length, rounding_mode="floor")
        return 1 + torch.div(lengths, self.cfg.hop_length, rounding_mode="floor")
