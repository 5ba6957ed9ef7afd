"""Typed model configs. The files in `model_configs/` are these dataclasses as JSON (`kind` picks the class)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from blat_contract.audio import FrontEndConfig
from blat_contract.config import ConfigError, from_dict, to_dict
from blat_contract.labels import NUM_AUDIOSET_CLASSES
from blat_contract.vocab import MAX_CAPTION_TOKENS

AUDIO_ARCHS = ("cnn14", "aisfx", "yamnet")  # blat/models/towers.py builds each
PATCH_ARCHS = ("yamnet",)  # towers that run on fixed log-mel patches, one output frame per patch


@dataclass(frozen=True)
class AudioEncoderConfig:
    """An audio tower over a log-mel front end.

    `arch` picks the tower: "cnn14" (PANNs / BLAT: double-conv blocks, each but the last followed by 2x2 average
    pooling, BatchNorm over mel bins, max + mean over time, fc1 + ReLU), "aisfx" (Ma & Lerch, ISMIR 2022: the same
    blocks with max pooling, max over time, no fc; `embed_dim` = last width) or "yamnet" (Google's MobileNet-v1
    AudioSet tagger: `channels` are its 14 layer widths, run on `patch_frames`-frame patches every `patch_hop`
    frames, one output frame per patch, mean over patches).
    """

    frontend: FrontEndConfig = field(default_factory=FrontEndConfig)
    channels: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048)  # output width of each conv block
    embed_dim: int = 2048  # width of the pooled clip embedding (cnn14: fc1)
    dropout: float = 0.2  # after each block (training only)
    arch: str = "cnn14"  # one of AUDIO_ARCHS
    pretrained: str | None = None  # tower weights loaded when it is built: a file or "package:<module>/<path>"
    patch_frames: int = 0  # patch towers: log-mel frames per patch (0 for the others)
    patch_hop: int = 0  # patch towers: log-mel frames between patch starts = frames per output frame
    # A supervised AudioSet head on the tower: a CSV (file or "package:...") with a `mid` column, one row per class in
    # the head's output order. None: the tower has no head (tagging is zero-shot only).
    head_classes: str | None = None

    def __post_init__(self):
        if self.arch not in AUDIO_ARCHS:
            raise ConfigError(f"audio.arch must be one of {AUDIO_ARCHS}, got {self.arch!r}")
        if not self.channels:
            raise ConfigError("channels must name at least one block")
        if self.is_patch_tower:
            if not 0 < self.patch_hop <= self.patch_frames:
                raise ConfigError(
                    f"{self.arch} needs 0 < patch_hop <= patch_frames, got {self.patch_hop}, {self.patch_frames}"
                )
            if self.frontend.centered:
                raise ConfigError(f"{self.arch} frames its patches from uncentred frames (frontend.centered=false)")
        elif self.frontend.n_mels % (2**self.num_pools):
            raise ConfigError(
                f"n_mels={self.frontend.n_mels} must be divisible by 2**{self.num_pools} (one per pooling)"
            )
        if self.arch == "aisfx" and self.embed_dim != self.out_channels:
            raise ConfigError(f"aisfx has no fc: embed_dim must equal the last width {self.out_channels}")

    @property
    def is_patch_tower(self) -> bool:
        return self.arch in PATCH_ARCHS

    @property
    def num_pools(self) -> int:
        return len(self.channels) - 1

    @property
    def time_stride(self) -> int:
        """Log-mel frames per output frame."""
        return self.patch_hop if self.is_patch_tower else 2**self.num_pools

    @property
    def out_channels(self) -> int:
        """Width C of the (B, T', C) frame features."""
        return self.channels[-1]

    @property
    def min_samples(self) -> int:
        """Shortest clip that yields one output frame; shorter clips are zero-padded to it."""
        if self.is_patch_tower:  # one whole patch of uncentred frames
            return self.frontend.win_length + (self.patch_frames - 1) * self.frontend.hop_length
        return (self.time_stride - 1) * self.frontend.hop_length

    @property
    def frame_seconds(self) -> float:
        """Seconds of audio per output frame."""
        return self.time_stride * self.frontend.hop_length / self.frontend.sample_rate


@dataclass(frozen=True)
class TextEncoderConfig:
    """A Hugging Face BERT-family encoder, from a local folder or built from `hf_config` with random weights."""

    pretrained: str | None = None  # local HF folder, or "package:<module>/<subdir>" inside an installed package
    hf_config: dict[str, Any] | None = None  # HF config fields (incl. model_type) for a freshly initialised model
    tokenizer: str | None = (
        None  # tokenizer.json path or "package:..."; default <pretrained>/tokenizer.json (checkpoints embed it)
    )
    pooling: str = "cls"  # "cls": [CLS] of the last layer (BLAT); "mean": masked mean (sentence-transformers)
    max_tokens: int = 30  # word pieces incl. [CLS]/[SEP]

    def __post_init__(self):
        if (self.pretrained is None) == (self.hf_config is None):
            raise ConfigError("set exactly one of text.pretrained and text.hf_config")
        if self.pooling not in ("cls", "mean"):
            raise ConfigError(f"text.pooling must be 'cls' or 'mean', got {self.pooling!r}")


@dataclass(frozen=True)
class DualEncoderConfig:
    """Contrastive audio-text model: both towers projected to `embed_dim` and L2-normalised."""

    audio: AudioEncoderConfig
    text: TextEncoderConfig
    embed_dim: int = 1024  # shared space
    logit_scale_init: float = math.log(1 / 0.07)
    # 0: linear heads (BLAT). N > 0: each head is Linear(in, N) -> GELU -> Linear(N, embed_dim), a non-linear adapter
    # for frozen pretrained towers (on the demo run it did not beat the linear heads: zero-shot 0.270 vs 0.275).
    projection_hidden: int = 0
    kind: str = "dual_encoder"


@dataclass(frozen=True)
class CaptionerConfig:
    """Tag-guided captioner: CNN14 frames -> Transformer decoder whose word embeddings get the mean tag embedding."""

    audio: AudioEncoderConfig
    d_model: int = 256
    n_layers: int = 2
    n_heads: int = 0  # 0 means d_model // 64, BLAT's choice
    ffn_dim: int = 0  # 0 means 4 * d_model
    dropout: float = 0.2
    vocab_size: int = 0  # set from the vocabulary when the model is built
    n_tags: int = NUM_AUDIOSET_CLASSES
    use_tags: bool = True  # False gives the ablation "captioner without tags"
    max_tokens: int = MAX_CAPTION_TOKENS  # words per caption
    kind: str = "captioner"

    def __post_init__(self):
        if self.n_heads == 0:
            object.__setattr__(self, "n_heads", max(1, self.d_model // 64))
        if self.ffn_dim == 0:
            object.__setattr__(self, "ffn_dim", 4 * self.d_model)
        if self.d_model % self.n_heads:
            raise ConfigError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")


ModelConfig = DualEncoderConfig | CaptionerConfig
_KINDS = {"dual_encoder": DualEncoderConfig, "captioner": CaptionerConfig}


def config_from_dict(data: dict[str, Any], where: str = "config") -> ModelConfig:
    kind = data.get("kind")
    if kind not in _KINDS:
        raise ConfigError(f"{where}: 'kind' must be one of {sorted(_KINDS)}, got {kind!r}")
    return from_dict(_KINDS[kind], data, where=where)


def config_to_dict(cfg: ModelConfig) -> dict[str, Any]:
    return to_dict(cfg)
