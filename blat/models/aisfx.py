"""The aiSFX audio tower (Ma & Lerch, "Representation Learning for the Automatic Indexing of Sound Effects
Libraries", ISMIR 2022; weights CC BY 4.0, shipped in the PyPI package `aisfx`), masked by each clip's length.

Its network: four double-conv blocks (64, 128, 256, 512), 2x2 max pooling after the first three, mean over
frequency, max over time -> 512-d. It was trained on 44.1 kHz log-mel input; `aisfx_frontend(rate)` gives the same
band layout and frame timing at another rate (the window and hop scale with the rate, the power is rescaled
for the shorter window), so the tower runs on the project's 32 kHz audio without resampling.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from torch import nn

from blat.audio import LogMelFrontEnd
from blat.config import AudioEncoderConfig
from blat.models.cnn14 import ConvBlock
from blat.models.masking import pad_clips, valid_mask
from blat.models.text import resolve_path
from blat_contract.audio import FrontEndConfig

TRAINED_RATE = 44_100  # Hz, the package's preprocessing
TRAINED_FFT = 2048  # samples at TRAINED_RATE: window = FFT size (46.4 ms)
TRAINED_HOP = 1024  # samples at TRAINED_RATE (23.2 ms)
N_MELS = 96  # HTK mel bands with L1-normalised filters, 0 Hz to TRAINED_RATE / 2
LOG_GAIN = 1e4  # log10(1 + LOG_GAIN * power) ...
LOG_MAX = 9.457798957824707  # ... / LOG_MAX: the package's "original" min-max normalisation (min 0)
CHANNELS = (64, 128, 256, 512)
WEIGHTS = "package:aisfx/models/checkpoint.pth"  # aisfx 0.1.2; a (state_dict, datasets) tuple
WEIGHTS_SHA256 = "499ea75909c932a2f94c35fa722fa4fabc5bcb7e84917209cc5f7402627b7eb5"
ATTRIBUTION = (
    "aiSFX pre-trained model by A. B. Ma and A. Lerch (ISMIR 2022), CC BY 4.0, from the PyPI package aisfx 0.1.2"
)


def aisfx_frontend(sample_rate: int = 32_000) -> FrontEndConfig:
    """The package's front end at `sample_rate`: same durations, same bands, same loudness scale."""
    ratio = sample_rate / TRAINED_RATE
    return FrontEndConfig(
        sample_rate=sample_rate,
        n_fft=TRAINED_FFT,
        win_length=round(TRAINED_FFT * ratio),
        hop_length=round(TRAINED_HOP * ratio),
        n_mels=N_MELS,
        f_min=0.0,
        f_max=TRAINED_RATE / 2,
        mel_scale="htk",
        mel_norm="l1",
        pad_mode="constant",
        compression="log1p",
        log_gain=LOG_GAIN,
        log_divisor=LOG_MAX,
        power_gain=(1 / ratio) ** 2,
        peak_normalize=True,
    )


def read_aisfx_weights(source: str = WEIGHTS, sha256: str | None = WEIGHTS_SHA256) -> dict[str, torch.Tensor]:
    """The embedding network's tensors from the package checkpoint, without full unpickling (its header pickles
    numpy scalars, which are the only extra types allowed)."""
    path = resolve_path(source)
    data = path.read_bytes()
    if sha256 and hashlib.sha256(data).hexdigest() != sha256:
        raise ValueError(f"{path}: sha256 is not aisfx 0.1.2's {sha256[:12]}... (install aisfx==0.1.2)")
    allowed = [np.core.multiarray.scalar, np.dtype, type(np.dtype(np.int64))]
    with torch.serialization.safe_globals(allowed):
        state, _datasets = torch.load(path, map_location="cpu", weights_only=True)
    prefix = "embedding_net."
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


class AisfxTower(nn.Module):
    """(B, N) waveform at `frontend.sample_rate` -> (B, 512). Frames past each clip's end are zeroed before every
    convolution and the max over time skips them, so a clip padded into a batch gets its lone embedding."""

    def __init__(self, cfg: AudioEncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.melspec_extractor = LogMelFrontEnd(cfg.frontend)
        widths = (1, *cfg.channels)
        for i in range(len(cfg.channels)):
            block = ConvBlock(widths[i], widths[i + 1], pool=i < cfg.num_pools, max_pool=True)
            self.add_module(f"conv_block{i + 1}", block)
        self.dropout = nn.Dropout(cfg.dropout)

    @property
    def blocks(self) -> list[ConvBlock]:
        return [getattr(self, f"conv_block{i + 1}") for i in range(len(self.cfg.channels))]

    def load_pretrained(self, source: str) -> None:
        weights = read_aisfx_weights(source, WEIGHTS_SHA256 if source == WEIGHTS else None)
        blocks = {k: v for k, v in self.state_dict().items() if k.startswith("conv_block")}
        if set(weights) != set(blocks) or any(weights[k].shape != blocks[k].shape for k in blocks):
            raise ValueError(f"{source}: its tensors do not fit an aisfx tower with channels {self.cfg.channels}")
        self.load_state_dict(weights, strict=False)

    def frames(self, waveform: torch.Tensor, lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Frame features (B, T', 512) at `time_stride` log-mel frames each, and (B,) valid frames."""
        waveform, lengths = pad_clips(waveform, lengths, self.cfg.min_samples)
        x = self.melspec_extractor(waveform, lengths).unsqueeze(1)  # (B, 1, T, 96)
        valid = self.melspec_extractor.num_frames(lengths)  # (B,)
        for block in self.blocks:
            x = self.dropout(block(x, valid))  # masks x past `valid` before each conv
            if block.pool:
                valid = torch.div(valid, 2, rounding_mode="floor")
        return x.mean(dim=3).transpose(1, 2), valid.clamp(min=1)  # (B, T', C): mean over frequency

    def pool(self, frames: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Masked max over time: (B, T', C) -> (B, C)."""
        return frames.masked_fill(~valid_mask(frames, valid), float("-inf")).amax(dim=1)

    def forward(self, waveform: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        return self.pool(*self.frames(waveform, lengths))
