"""CNN14 audio encoder (PANNs), with every layer masked so padded batches equal clips run alone."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from blat.audio import LogMelFrontEnd
from blat.config import AudioEncoderConfig
from blat.models.masking import pad_clips, time_mask, valid_mask


class ConvBlock(nn.Module):
    """Two 3x3 conv + BatchNorm + ReLU, then (optionally) 2x2 average or max pooling."""

    def __init__(self, c_in: int, c_out: int, pool: bool, max_pool: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.pool, self.max_pool = pool, max_pool

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        # Masking before each conv makes frames past the end read as the zero padding a lone clip sees.
        x = F.relu(self.bn1(self.conv1(time_mask(x, valid))))
        x = F.relu(self.bn2(self.conv2(time_mask(x, valid))))
        if not self.pool:
            return x
        return F.max_pool2d(x, 2) if self.max_pool else F.avg_pool2d(x, 2)


class Cnn14(nn.Module):
    """(B, N) waveform at `frontend.sample_rate` -> (B, embed_dim) clip embedding.

    Submodule names match PANNs and BLAT checkpoints: melspec_extractor, bn0, conv_block1..n, fc1.
    """

    def __init__(self, cfg: AudioEncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.melspec_extractor = LogMelFrontEnd(cfg.frontend)
        self.bn0 = nn.BatchNorm2d(cfg.frontend.n_mels)  # normalises each mel bin
        widths = (1, *cfg.channels)
        for i in range(len(cfg.channels)):
            pool = i < cfg.num_pools
            self.add_module(f"conv_block{i + 1}", ConvBlock(widths[i], widths[i + 1], pool))
        self.fc1 = nn.Linear(cfg.out_channels, cfg.embed_dim)
        self.dropout = nn.Dropout(cfg.dropout)

    @property
    def blocks(self) -> list[ConvBlock]:
        return [getattr(self, f"conv_block{i + 1}") for i in range(len(self.cfg.channels))]

    def load_pretrained(self, source: str) -> None:
        raise ValueError(f"cnn14 weights come from a checkpoint (blat.convert.import_panns_cnn14), not {source!r}")

    def frames(self, waveform: torch.Tensor, lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Frame features (B, T', C) at `time_stride` log-mel frames each, and (B,) valid frames."""
        waveform, lengths = pad_clips(waveform, lengths, self.cfg.min_samples)
        x = self.melspec_extractor(waveform, lengths)  # (B, T, M)
        valid = self.melspec_extractor.num_frames(lengths)  # (B,)
        x = self.bn0(x.transpose(1, 2).unsqueeze(-1)).squeeze(-1).transpose(1, 2)  # BN over mel bins
        x = x.unsqueeze(1)  # (B, 1, T, M)
        for block in self.blocks:
            x = self.dropout(block(x, valid))
            if block.pool:
                valid = torch.div(valid, 2, rounding_mode="floor")
        x = x.mean(dim=3).transpose(1, 2)  # (B, T', C): mean over frequency
        return x, valid.clamp(min=1)

    def pool(self, frames: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Masked max + mean over time, then fc1 + ReLU. frames: (B, T', C) -> (B, embed_dim)."""
        keep = valid_mask(frames, valid)
        peak = frames.masked_fill(~keep, float("-inf")).amax(dim=1)
        mean = (frames * keep).sum(dim=1) / valid[:, None].to(frames.dtype)
        return self.dropout(F.relu(self.fc1(self.dropout(peak + mean))))

    def forward(self, waveform: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        return self.pool(*self.frames(waveform, lengths))
