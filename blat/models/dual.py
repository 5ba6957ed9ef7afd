"""The contrastive audio-text model: an audio tower (CNN14, aisfx) + a BERT tower, linear (or MLP) heads, L2 norm,
learnable temperature."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import nn

from blat.config import DualEncoderConfig
from blat.models.text import TextEncoder
from blat.models.towers import build_audio_tower

NORM_EPS = 1e-7


def projection_head(d_in: int, d_out: int, hidden: int = 0) -> nn.Module:
    """(B, d_in) -> (B, d_out): one linear map, or with `hidden` a two-layer MLP with a GELU between."""
    if not hidden:
        return nn.Linear(d_in, d_out)
    return nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, d_out))


class DualEncoder(nn.Module):
    """State-dict keys match the released BLAT checkpoint: audio_encoder.*, text_encoder.model.*,
    audio_proj, text_proj, logit_scale."""

    def __init__(self, cfg: DualEncoderConfig, tokenizer: Tokenizer | None = None):
        super().__init__()
        self.cfg = cfg
        self.audio_encoder = build_audio_tower(cfg.audio)
        self.text_encoder = TextEncoder(cfg.text, tokenizer)
        self.audio_proj = projection_head(cfg.audio.embed_dim, cfg.embed_dim, cfg.projection_hidden)
        self.text_proj = projection_head(self.text_encoder.hidden_size, cfg.embed_dim, cfg.projection_hidden)
        self.logit_scale = nn.Parameter(torch.tensor(cfg.logit_scale_init))  # log of 1 / temperature

    def encode_audio(self, waveform: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N) waveform [, (B,) lengths] -> (B, embed_dim), unit norm."""
        return self.project_audio(self.audio_encoder(waveform, lengths))

    def project_audio(self, pooled: torch.Tensor) -> torch.Tensor:
        """The audio tower's (B, audio.embed_dim) pooled output -> (B, embed_dim), unit norm."""
        return F.normalize(self.audio_proj(pooled), dim=-1, eps=NORM_EPS)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, L) token ids and mask -> (B, embed_dim), unit norm."""
        return F.normalize(self.text_proj(self.text_encoder(input_ids, attention_mask)), dim=-1, eps=NORM_EPS)

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Convenience: raw strings -> (B, embed_dim)."""
        return self.encode_text(**self.text_encoder.tokenize(texts, device=self.logit_scale.device))

    def forward(self, waveform, lengths, input_ids, attention_mask):
        """-> audio (B, E), text (B, E), logit scale (scalar, already exponentiated)."""
        return self.encode_audio(waveform, lengths), self.encode_text(input_ids, attention_mask), self.logit_scale.exp()
