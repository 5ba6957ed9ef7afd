"""Text tower: any Hugging Face BERT-family encoder with [CLS] or masked-mean pooling.

Tokenisation uses a `tokenizers` tokenizer.json, the same file the server loads, so both sides
split text identically.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer
from torch import nn

from blat.config import TextEncoderConfig

PACKAGE_PREFIX = "package:"


def resolve_path(spec: str) -> Path:
    """A plain path, or "package:<module>/<sub/path>" for data shipped inside an installed package."""
    if not spec.startswith(PACKAGE_PREFIX):
        return Path(spec).expanduser()
    module, _, sub = spec[len(PACKAGE_PREFIX) :].partition("/")
    found = importlib.util.find_spec(module)  # finds a top-level package without importing it
    if found is None or not found.submodule_search_locations:
        raise FileNotFoundError(f"{spec}: Python package {module!r} is not installed")
    return Path(list(found.submodule_search_locations)[0]) / sub


def load_tokenizer(source: str | Path, max_tokens: int) -> Tokenizer:
    """Load tokenizer.json (a file, or a folder holding one) with truncation to `max_tokens` and batch padding."""
    path = resolve_path(str(source))
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"no tokenizer.json at {path}")
    return configure_tokenizer(Tokenizer.from_file(str(path)), max_tokens)


def configure_tokenizer(tok: Tokenizer, max_tokens: int) -> Tokenizer:
    tok.enable_truncation(max_length=max_tokens)
    pad_id = tok.token_to_id("[PAD]")
    tok.enable_padding(pad_id=0 if pad_id is None else pad_id, pad_token="[PAD]")
    return tok


def build_hf_model(cfg: TextEncoderConfig) -> nn.Module:
    from transformers import AutoConfig, AutoModel  # heavy import, only when a text tower is built

    if cfg.pretrained is not None:
        path = resolve_path(cfg.pretrained)
        if not path.is_dir():
            raise FileNotFoundError(f"text encoder folder not found: {path} (models load only from local files)")
        model = AutoModel.from_pretrained(str(path), attn_implementation="eager")
    else:
        fields = dict(cfg.hf_config or {})
        hf_cfg = AutoConfig.for_model(fields.pop("model_type"), **fields)
        hf_cfg._attn_implementation = "eager"
        model = AutoModel.from_config(hf_cfg)
    if getattr(model, "pooler", None) is not None:
        model.pooler = None  # BLAT pools [CLS] of the last layer, never the pooler; unused weights break DDP
    return model


class TextEncoder(nn.Module):
    """(B, L) input_ids and attention_mask -> (B, hidden) sentence vector."""

    def __init__(self, cfg: TextEncoderConfig, tokenizer: Tokenizer | None = None):
        super().__init__()
        self.cfg = cfg
        self.model = build_hf_model(cfg)
        if tokenizer is None and not (cfg.tokenizer or cfg.pretrained):
            raise ValueError("a text encoder built from hf_config needs text.tokenizer (or a tokenizer object)")
        if tokenizer is None:
            tokenizer = load_tokenizer(cfg.tokenizer or cfg.pretrained, cfg.max_tokens)
        self.tokenizer = configure_tokenizer(tokenizer, cfg.max_tokens)  # truncation is part of the model's contract

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    def hf_config_dict(self) -> dict:
        """The HF config as plain fields, enough to rebuild the architecture without the source folder."""
        d = self.model.config.to_diff_dict()
        d["model_type"] = self.model.config.model_type
        for k in (
            "architectures",
            "_name_or_path",
            "transformers_version",
            "torch_dtype",
            "dtype",
            "_attn_implementation_autoset",
        ):
            d.pop(k, None)
        return d

    def tokenize(self, texts: Sequence[str], device: torch.device | None = None) -> dict[str, torch.Tensor]:
        enc = self.tokenizer.encode_batch(list(texts))
        ids = torch.tensor([e.ids for e in enc], dtype=torch.long, device=device)
        mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.long, device=device)
        return {"input_ids": ids, "attention_mask": mask}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, L, H)
        if self.cfg.pooling == "cls":
            return hidden[:, 0]
        keep = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * keep).sum(1) / keep.sum(1).clamp(min=1e-9)
