"""A frozen audio tower (tower_lr_scale = 0): eval mode, no gradients, and its outputs computed once per clip, so
training the heads on top does not re-run the CNN every epoch. Only valid when clips are never cropped (every clip
fits the training crop), since a cached output is of the whole clip."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from blat.pipeline.data import batch_audio
from blat_contract.config import to_dict


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
        groups.append(
            {
                "params": [p for p in tower.parameters() if p.requires_grad],
                "lr": lr * tower_lr_scale,
                "lr_scale": tower_lr_scale,
            }
        )
    return groups


def tower_digest(tower: nn.Module) -> str:
    """sha256 of a tower's config (less where its weights came from) and every tensor: what it computes."""
    cfg = {k: v for k, v in to_dict(tower.cfg).items() if k != "pretrained"}
    h = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode())
    for k, v in sorted(tower.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def clip_key(path: str | Path) -> str:
    """A clip's cache key: its path, size and modification time (a rewritten file gets a new key)."""
    st = os.stat(path)
    return f"{Path(path).resolve()}:{st.st_size}:{st.st_mtime_ns}"


@torch.no_grad()
def per_clip_outputs(
    fn: Callable,
    waves: Sequence[np.ndarray],
    min_samples: int,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    desc: str = "frozen tower",
    keys: Sequence[str] | None = None,
    cache: Path | None = None,
) -> list[torch.Tensor]:
    """fn(waveform (B, N), lengths (B,)) for every clip, alone in effect (the towers mask by length), batched by
    similar length. fn returns (B, E) pooled outputs, or (frames (B, T, C), valid (B,)) -> each clip's (T_i, C).

    With `cache` (a file) and `keys` (clip_key per clip), outputs found there are reused and new ones added: the
    caller names the file after the tower's digest and fn, so stages, variants and seeds share one computation."""
    stored: dict[str, torch.Tensor] = torch.load(cache) if cache is not None and cache.is_file() else {}
    out: list[torch.Tensor | None] = [stored.get(k) for k in keys] if keys is not None else [None] * len(waves)
    todo = [i for i in np.argsort([len(w) for w in waves]) if out[i] is None]
    for k in tqdm(range(0, len(todo), batch_size), desc=desc, unit="batch", leave=False):
        idx = todo[k : k + batch_size]
        wave, lengths = batch_audio([waves[i] for i in idx], None, min_samples)
        result = fn(torch.from_numpy(wave).to(device), torch.from_numpy(lengths).to(device))
        for j, i in enumerate(idx):
            out[i] = result[0][j, : int(result[1][j])].cpu() if isinstance(result, tuple) else result[j].cpu()
    if cache is not None and keys is not None and todo:
        stored.update(zip(keys, out))
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".tmp{os.getpid()}")
        torch.save(stored, tmp)
        os.replace(tmp, cache)
    return out


def cache_file(cache_dir: str | Path | None, tower: nn.Module, what: str) -> Path | None:
    """<cache_dir>/<what>-<tower digest>.pt, or None without a cache folder."""
    return Path(cache_dir) / f"{what}-{tower_digest(tower)[:16]}.pt" if cache_dir else None


def pad_frames(frames: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-clip (T_i, C) frames -> (B, T, C) zero-padded and (B,) valid lengths."""
    valid = torch.tensor([len(f) for f in frames], dtype=torch.long)
    out = frames[0].new_zeros(len(frames), int(valid.max()), frames[0].shape[1])
    for i, f in enumerate(frames):
        out[i, : len(f)] = f
    return out, valid
