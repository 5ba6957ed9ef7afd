"""Self-describing checkpoints: one safetensors file whose header carries the config, the tokenizer or
vocabulary and free-form metadata, so the file alone rebuilds the model (no source folders needed)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tokenizers import Tokenizer
from torch import nn

from blat.config import ModelConfig, config_from_dict, config_to_dict
from blat.models import DualEncoder, TagGuidedCaptioner, build_model
from blat.models.text import configure_tokenizer
from blat_contract.vocab import Vocabulary

FORMAT = "blat-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file is not ours, or its tensors do not fit the model."""


def model_config(model: nn.Module, keep_pretrained: bool = False) -> ModelConfig:
    """The config that rebuilds `model` without any source folder (the text tower as plain HF fields), or with
    `keep_pretrained` the config as it is, whose towers load their weights from their `pretrained` sources."""
    cfg = model.cfg
    if keep_pretrained:
        return cfg
    cfg = dataclasses.replace(cfg, audio=dataclasses.replace(cfg.audio, pretrained=None))
    if isinstance(model, DualEncoder):
        text = dataclasses.replace(
            model.cfg.text, pretrained=None, tokenizer=None, hf_config=model.text_encoder.hf_config_dict()
        )
        cfg = dataclasses.replace(cfg, text=text)
    return cfg


def pretrained_prefixes(model: nn.Module) -> list[str]:
    """State-dict prefixes of the towers whose weights come from a `pretrained` source (a file or a package)."""
    prefixes = ["audio_encoder."] if model.cfg.audio.pretrained else []
    if isinstance(model, DualEncoder) and model.cfg.text.pretrained:
        prefixes.append("text_encoder.")
    return prefixes


def _check_untouched(model: nn.Module, prefixes: list[str]) -> None:
    """Omitted towers must still hold exactly their source's weights, or loading would change the model."""
    fresh = build_model(model.cfg, vocab=getattr(model, "vocab", None)).state_dict()
    for k, v in model.state_dict().items():
        if any(k.startswith(p) for p in prefixes) and not torch.equal(v.cpu(), fresh[k]):
            raise CheckpointError(f"{k} differs from its pretrained source: the tower was trained; save it in full")


def save_checkpoint(
    model: nn.Module,
    path: str | Path,
    meta: Mapping[str, Any] | None = None,
    omit_pretrained: bool = False,
    half: bool = False,
) -> Path:
    """Write weights + config (+ tokenizer.json or caption vocabulary) + `meta` (JSON-able) to `path`.

    omit_pretrained: leave out the towers that load from a `pretrained` source (they must be untouched), so the
    file holds only what was trained; loading rebuilds them from their sources. half: floats stored as fp16."""
    omitted = pretrained_prefixes(model) if omit_pretrained else []
    if omitted:
        _check_untouched(model, omitted)
    header = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "config": json.dumps(config_to_dict(model_config(model, keep_pretrained=omit_pretrained))),
        "meta": json.dumps(dict(meta or {})),
        "omitted": json.dumps(omitted),
    }
    if isinstance(model, DualEncoder):
        header["tokenizer"] = model.text_encoder.tokenizer.to_str()
    if isinstance(model, TagGuidedCaptioner):
        header["vocab"] = model.vocab.to_json()
    tensors = {
        k: v.detach().cpu().contiguous()
        for k, v in model.state_dict().items()
        if not any(k.startswith(p) for p in omitted)
    }
    if half:
        tensors = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
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
        raise CheckpointError(
            f"{path}: format version {header['format_version']} is newer than this code ({FORMAT_VERSION})"
        )
    if "config" not in header:
        raise CheckpointError(f"{path}: the header has no model config")
    return header


def load_state_strict(
    module: nn.Module, tensors: Mapping[str, torch.Tensor], source: str, supplied: tuple[str, ...] = ()
) -> None:
    """Copy `tensors` into `module`, failing with the lists of missing, unexpected and mis-shaped keys. Keys under
    the `supplied` prefixes may be missing: the module already holds them (towers loaded from their sources)."""
    expected = module.state_dict()
    missing = sorted(k for k in set(expected) - set(tensors) if not k.startswith(supplied))
    unexpected = sorted(set(tensors) - set(expected))
    shapes = sorted(
        f"{k}: file {tuple(tensors[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(expected) & set(tensors)
        if tensors[k].shape != expected[k].shape
    )
    if missing or unexpected or shapes:
        lines = [f"{source} does not fit {type(module).__name__}:"]
        for title, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
            if keys:
                lines.append(f"  {title} ({len(keys)}): " + ", ".join(keys))
        raise CheckpointError("\n".join(lines))
    module.load_state_dict(dict(tensors), strict=not supplied)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """-> (model in eval mode, meta dict). The file alone is enough, but for towers it omitted: those load from
    their `pretrained` sources (installed packages), named in its config."""
    header = read_header(path)
    cfg = config_from_dict(json.loads(header["config"]), where=f"{path}:config")
    tokenizer = None
    if "tokenizer" in header:
        tokenizer = configure_tokenizer(Tokenizer.from_str(header["tokenizer"]), cfg.text.max_tokens)
    vocab = Vocabulary.from_json(header["vocab"]) if "vocab" in header else None
    model = build_model(cfg, vocab=vocab, tokenizer=tokenizer)
    omitted = tuple(json.loads(header.get("omitted", "[]")))
    if set(omitted) - set(pretrained_prefixes(model)):
        raise CheckpointError(f"{path}: omits {sorted(omitted)} but its config names no source for them")
    with safe_open(str(path), framework="pt", device=str(map_location)) as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    load_state_strict(model, tensors, str(path), supplied=omitted)
    return model.eval(), json.loads(header.get("meta", "{}"))
