"""A frozen audio tower (tower_lr_scale = 0): eval mode, no gradients, and its outputs computed once per clip, so
training the heads on top does not re-run the CNN every epoch. Only valid when clips are never cropped (every clip
fits the training crop), since a cached output is of the whole clip."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from blat.pipeline.data import batch_audio


def freeze(module: nn.Module) -> nn.Module:
    """No gradients, and eval mode (BatchNorm statistics stay the pretrained ones). Call again after .train()."""
    module.requires_grad_(False)
    return module.eval()


def tower_params(model: nn.Module, lr: float, tower_lr_scale: float) -> list[dict]:
    """Adam parameter groups: the audio tower at lr * tower_lr_scale (frozen at 0), everything else at lr."""
    tower = model.audio_encoder
    if tower_lr_scale == 0:
        freeze(tower)
    tower_ids = {id(p) for p in tower.parameters()}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in tower_ids]
    groups = [{"params": rest, "lr": lr, "lr_scale": 1.0}]
    if tower_lr_scale > 0:
        groups.append({"params": [p for p in tower.parameters() if p.requires_grad], "lr": lr * tower_lr_scale,
                       "lr_scale": tower_lr_scale})
    return groups


@torch.no_grad()
def per_clip_outputs(fn: Callable, waves: Sequence[np.ndarray], min_samples: int, batch_size: int = 16,
                     device: torch.device | str = "cpu", desc: str = "frozen tower") -> list[torch.Tensor]:
    """fn(waveform (B, N), lengths (B,)) for every clip, alone in effect (the towers mask by length), batched by
    similar length. fn returns (B, E) pooled outputs, or (frames (B, T, C), valid (B,)) -> each clip's (T_i, C)."""
    order = np.argsort([len(w) for w in waves])
    out: list[torch.Tensor | None] = [None] * len(waves)
    for k in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", leave=False):
        idx = order[k:k + batch_size]
        wave, lengths = batch_audio([waves[i] for i in idx], None, min_samples)
        result = fn(torch.from_numpy(wave).to(device), torch.from_numpy(lengths).to(device))
        for j, i in enumerate(idx):
            out[i] = result[0][j, :int(result[1][j])].cpu() if isinstance(result, tuple) else result[j].cpu()
    return out


def pad_frames(frames: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-clip (T_i, C) frames -> (B, T, C) zero-padded and (B,) valid lengths."""
    valid = torch.tensor([len(f) for f in frames], dtype=torch.long)
    out = frames[0].new_zeros(len(frames), int(valid.max()), frames[0].shape[1])
    for i, f in enumerate(frames):
        out[i, :len(f)] = f
    return out, valid
