"""The model side (torch): BLAT architectures, checkpoints and the training pipeline.

import blat
blat.list_models()                       # architectures in blat/model_configs/
model = blat.load_model("tiny-dual")     # a registry name (fresh weights) or a checkpoint path
"""

from __future__ import annotations

from pathlib import Path

from blat.checkpoint import load_checkpoint, save_checkpoint
from blat.models import build_model, create_model, get_model_config, list_models

__all__ = [
    "build_model",
    "create_model",
    "get_model_config",
    "list_models",
    "load_checkpoint",
    "load_model",
    "save_checkpoint",
]


def load_model(name_or_path: str | Path, map_location: str = "cpu"):
    """A checkpoint file (ours) or a registry architecture name; an unknown name lists the valid ones."""
    path = Path(name_or_path)
    if path.is_file():
        return load_checkpoint(path, map_location)[0]
    if str(name_or_path) in list_models():
        return create_model(str(name_or_path)).eval()
    raise ValueError(
        f"{name_or_path!r} is neither a checkpoint file nor a model name; models: {', '.join(list_models())}"
    )
