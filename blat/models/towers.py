"""The audio-tower seam: every tower turns (B, N) waveforms into frame features and a pooled clip embedding.

A tower exposes `frames(waveform, lengths) -> (B, T', C) features, (B,) valid frames`, `pool(frames, valid) ->
(B, embed_dim)`, and `forward = pool(frames(...))`; its config gives `min_samples`, `time_stride` (log-mel frames
per output frame), `out_channels` (C) and `embed_dim`. A tower with a supervised AudioSet head (`head_classes` on
its config) also gives `class_probs(frames, valid) -> (B, K)`. Adding a tower is one module plus a config file.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from blat.config import AudioEncoderConfig


def time_mask(x: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Zero the frames past each clip's end. x: (B, C, T, M); valid: (B,) frames."""
    if valid is None:
        return x
    keep = torch.arange(x.shape[2], device=x.device)[None, :] < valid[:, None]  # (B, T)
    return x * keep[:, None, :, None].to(x.dtype)


def pad_clips(waveform: torch.Tensor, lengths: torch.Tensor | None, min_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero every sample past each clip's end and pad to `min_samples`. -> waveform (B, N'), lengths (B,).

    A clip shorter than min_samples is heard as itself plus zeros up to min_samples; left at its own length, all
    its frames would be masked away by the poolings and its embedding would ignore its content."""
    B, N = waveform.shape
    if lengths is None:
        lengths = torch.full((B,), N, dtype=torch.long, device=waveform.device)
    if N < min_samples:
        waveform = F.pad(waveform, (0, min_samples - N))
    beyond = torch.arange(waveform.shape[1], device=waveform.device)[None, :] >= lengths[:, None]
    return waveform.masked_fill(beyond, 0.0), lengths.clamp(min=min_samples)


def valid_mask(frames: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, T', 1) bool: which rows of (B, T', C) frames lie inside each clip."""
    return (torch.arange(frames.shape[1], device=frames.device)[None, :] < valid[:, None]).unsqueeze(-1)


def read_head_classes(source: str) -> tuple[str, ...]:
    """The AudioSet `mid` of every output of a supervised head, in order, from a CSV file or package data."""
    import csv

    from blat.models.text import resolve_path

    with open(resolve_path(source), newline="") as f:
        return tuple(row["mid"] for row in csv.DictReader(f))


def build_audio_tower(cfg: AudioEncoderConfig) -> nn.Module:
    """The tower `cfg.arch` names, with `cfg.pretrained` weights loaded when set."""
    from blat.models.aisfx import AisfxTower
    from blat.models.cnn14 import Cnn14
    from blat.models.yamnet import YamNetTower

    tower = {"cnn14": Cnn14, "aisfx": AisfxTower, "yamnet": YamNetTower}[cfg.arch](cfg)
    if cfg.pretrained:
        tower.load_pretrained(cfg.pretrained)
    return tower
