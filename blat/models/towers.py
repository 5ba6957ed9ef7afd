"""The audio-tower seam: every tower turns (B, N) waveforms into frame features and a pooled clip embedding.

A tower exposes `frames(waveform, lengths) -> (B, T', C) features, (B,) valid frames`, `pool(frames, valid) ->
(B, embed_dim)`, and `forward = pool(frames(...))`; its config gives `min_samples`, `time_stride` (log-mel frames
per output frame), `out_channels` (C) and `embed_dim`. A tower with a supervised AudioSet head (`head_classes` on
its config) also gives `class_probs(frames, valid) -> (B, K)`. Adding a tower is one module plus a config file.
"""

from __future__ import annotations

from torch import nn

from blat.config import AudioEncoderConfig
from blat.models.aisfx import AisfxTower
from blat.models.cnn14 import Cnn14
from blat.models.yamnet import YamNetTower


def build_audio_tower(cfg: AudioEncoderConfig) -> nn.Module:
    """The tower `cfg.arch` names, with `cfg.pretrained` weights loaded when set."""
    tower = {"cnn14": Cnn14, "aisfx": AisfxTower, "yamnet": YamNetTower}[cfg.arch](cfg)
    if cfg.pretrained:
        tower.load_pretrained(cfg.pretrained)
    return tower
