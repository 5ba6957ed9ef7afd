"""Self-describing checkpoints: one safetensors file whose header carries the config, the tokenizer or
vocabulary and free-form metadata, so the file alone rebuilds the model (no source folders needed)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tokenizers import Tokenizer
from torch import nn

from blat.config import ModelConfig, config_from_dict, config_to_dict
from blat.models import DualEncoder, TagGuidedCaptioner, build_model
from blat.models.text import configure_tokenizer
from contract.vocab import Vocabulary

FORMAT = "blat-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file is not ours, or its tensors do not fit the model."""


def model_config(model: nn.Module) -> ModelConfig:
    """The config that rebuilds `model` without any source folder (the text tower as plain HF fields)."""
    cfg = model.cfg
    if isinstance(model, DualEncoder):
        text = dataclasses.replace(model.cfg.text, pretrained=None, tokenizer=None,
                                   hf_config=model.text_encoder.hf_config_dict())
        cfg = dataclasses.replace(cfg, text=text)
    return cfg


def save_checkpoint(model: nn.Module, path: str | Path, meta: Mapping[str, Any] | None = None) -> Path:
    """Write weights + config (+ tokenizer.json or caption vocabulary) + `meta` (JSON-able) to `path`."""
    header = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "config": json.dumps(config_to_dict(model_config(model))),
        "meta": json.dumps(dict(meta or {})),
    }
    if isinstance(model, DualEncoder):
        header["tokenizer"] = model.text_encoder.tokenizer.to_str()
    if isinstance(model, TagGuidedCaptioner):
        header["vocab"] = model.vocab.to_json()
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(tensors, str(tmp), metadata=header)
    tmp.replace(path)  # readers never see a half-written checkpoint
    return path


def read_header(path: str | Path) -> dict[str, str]:
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except Exception as e:  # not a safetensors file at all
        raise CheckpointError(f"{path}: not a safetensors checkpoint ({e})") from None
    if header.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a {FORMAT} file (header format={header.get('format')!r})")
    try:
        version = int(header.get("format_version", 0))
    except ValueError:
        raise CheckpointError(f"{path}: bad format_version {header['format_version']!r} in the header") from None
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: format version {header['format_version']} is newer than this code ({FORMAT_VERSION})")
    if "config" not in header:
        raise CheckpointError(f"{path}: the header has no model config")
    return header


def load_state_strict(module: nn.Module, tensors: Mapping[str, torch.Tensor], source: str) -> None:
    """Copy `tensors` into `module`, failing with the lists of missing, unexpected and mis-shaped keys."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    shapes = sorted(f"{k}: file {tuple(tensors[k].shape)} vs model {tuple(expected[k].shape)}"
                    for k in set(expected) & set(tensors) if tensors[k].shape != expected[k].shape)
    if missing or unexpected or shapes:
        lines = [f"{source} does not fit {type(module).__name__}:"]
        for title, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
            if keys:
                lines.append(f"  {title} ({len(keys)}): " + ", ".join(keys))
        raise CheckpointError("\n".join(lines))
    module.load_state_dict(dict(tensors), strict=True)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """-> (model in eval mode, meta dict). The file alone is enough."""
    header = read_header(path)
    cfg = config_from_dict(json.loads(header["config"]), where=f"{path}:config")
    tokenizer = None
    if "tokenizer" in header:
        tokenizer = configure_tokenizer(Tokenizer.from_str(header["tokenizer"]), cfg.text.max_tokens)
    vocab = Vocabulary.from_json(header["vocab"]) if "vocab" in header else None
    model = build_model(cfg, vocab=vocab, tokenizer=tokenizer)
    with safe_open(str(path), framework="pt", device=str(map_location)) as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    load_state_strict(model, tensors, str(path))
    return model.eval(), json.loads(header.get("meta", "{}"))
