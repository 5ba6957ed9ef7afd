"""The mask and length helpers every audio tower shares: clips of different lengths batched together must give each
clip the frames it gives alone."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def time_mask(x: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Zero the frames past each clip's end. x: (B, C, T, M); valid: (B,) frames."""
    if valid is None:
        return x
    keep = torch.arange(x.shape[2], device=x.device)[None, :] < valid[:, None]  # (B, T)
    return x * keep[:, None, :, None].to(x.dtype)


def pad_clips(
    waveform: torch.Tensor, lengths: torch.Tensor | None, min_samples: int
) -> tuple[torch.Tensor, torch.Tensor]:
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
