"""Model registry: architectures are JSON files in `blat/model_configs/`; adding a size is adding a file."""

from __future__ import annotations

import json
from importlib import resources

from tokenizers import Tokenizer
from torch import nn

from blat.config import CaptionerConfig, DualEncoderConfig, ModelConfig, config_from_dict
from blat.models.aisfx import AisfxTower
from blat.models.captioner import TagGuidedCaptioner
from blat.models.cnn14 import Cnn14
from blat.models.dual import DualEncoder
from blat.models.text import TextEncoder
from blat.models.towers import build_audio_tower
from blat_contract.vocab import Vocabulary

__all__ = [
    "AisfxTower",
    "Cnn14",
    "build_audio_tower",
    "DualEncoder",
    "TagGuidedCaptioner",
    "TextEncoder",
    "list_models",
    "get_model_config",
    "build_model",
    "create_model",
]


def _config_dir():
    return resources.files("blat") / "model_configs"


def list_models() -> list[str]:
    """Names of the architectures shipped in `blat/model_configs/`."""
    return sorted(p.name[: -len(".json")] for p in _config_dir().iterdir() if p.name.endswith(".json"))


def get_model_config(name: str) -> ModelConfig:
    if name not in list_models():
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    path = _config_dir() / f"{name}.json"
    return config_from_dict(json.loads(path.read_text()), where=f"model_configs/{name}.json")


def build_model(cfg: ModelConfig, *, vocab: Vocabulary | None = None, tokenizer: Tokenizer | None = None) -> nn.Module:
    """A freshly initialised model for `cfg`. A captioner needs its vocabulary."""
    if isinstance(cfg, DualEncoderConfig):
        return DualEncoder(cfg, tokenizer)
    if isinstance(cfg, CaptionerConfig):
        if vocab is None:
            raise ValueError("a captioner needs a vocabulary (blat_contract.vocab.Vocabulary)")
        return TagGuidedCaptioner(cfg, vocab)
    raise TypeError(f"not a model config: {type(cfg).__name__}")


def create_model(name: str, *, vocab: Vocabulary | None = None) -> nn.Module:
    """Build a registry architecture with fresh weights (a pretrained text tower loads from its local folder)."""
    return build_model(get_model_config(name), vocab=vocab)
