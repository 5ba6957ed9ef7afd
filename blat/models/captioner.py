"""Tag-guided captioner (BLAT stage 1): audio-tower frames (CNN14 in the paper) -> 2-layer post-LN Transformer decoder.

The clip's AudioSet tags are a 527-d multi-hot vector; the mean of their learned embeddings is
added to every decoder input word embedding, before the positional encoding.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from blat.config import CaptionerConfig
from blat.models.towers import build_audio_tower
from blat_contract.beam import DecodingOptions, Hypothesis, beam_search
from blat_contract.vocab import PAD, Vocabulary

MAX_POSITIONS = 64  # positional table size; captions are capped far below it


def sinusoid_table(n: int, d: int) -> torch.Tensor:
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10000.0) / d))
    table = torch.zeros(n, d)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)
    return table  # (n, d)


class TagGuidedCaptioner(nn.Module):
    def __init__(self, cfg: CaptionerConfig, vocab: Vocabulary):
        super().__init__()
        if cfg.vocab_size not in (0, len(vocab)):
            raise ValueError(f"config vocab_size={cfg.vocab_size} but the vocabulary has {len(vocab)} tokens")
        self.cfg, self.vocab = dataclasses.replace(cfg, vocab_size=len(vocab)), vocab
        d = cfg.d_model
        self.audio_encoder = build_audio_tower(cfg.audio)
        self.audio_proj = nn.Sequential(
            nn.Linear(cfg.audio.out_channels, d), nn.ReLU(), nn.Dropout(cfg.dropout), nn.LayerNorm(d)
        )
        self.word_emb = nn.Embedding(len(vocab), d, padding_idx=PAD)
        self.tag_table = nn.Parameter(torch.randn(cfg.n_tags, d) * 0.02) if cfg.use_tags else None  # (527, d)
        self.register_buffer("pos_table", sinusoid_table(MAX_POSITIONS, d), persistent=False)
        self.emb_dropout = nn.Dropout(cfg.dropout)
        layer = nn.TransformerDecoderLayer(d, cfg.n_heads, cfg.ffn_dim, cfg.dropout, batch_first=True, norm_first=False)
        self.decoder = nn.TransformerDecoder(layer, cfg.n_layers)
        self.classifier = nn.Linear(d, len(vocab))

    def tag_vector(self, tags: torch.Tensor | None, batch: int, device) -> torch.Tensor:
        """(B, 527) multi-hot -> (B, d): the mean embedding of the clip's tags (zeros without tags)."""
        if self.tag_table is None or tags is None:
            return torch.zeros(batch, self.cfg.d_model, device=device)
        return tags @ self.tag_table / tags.sum(-1, keepdim=True).clamp(min=1.0)

    def encode(self, waveform: torch.Tensor, lengths: torch.Tensor | None = None, tags: torch.Tensor | None = None):
        """-> memory (B, T', d), memory_valid (B,) frames, tag vector (B, d)."""
        return self.encode_frames(*self.audio_encoder.frames(waveform, lengths), tags)

    def encode_frames(self, frames: torch.Tensor, valid: torch.Tensor, tags: torch.Tensor | None = None):
        """The tower's (B, T', C) frames and (B,) valid frames -> memory, memory_valid, tag vector."""
        return self.audio_proj(frames), valid, self.tag_vector(tags, frames.shape[0], frames.device)

    def decode(
        self, tokens: torch.Tensor, memory: torch.Tensor, memory_valid: torch.Tensor, tag_vec: torch.Tensor
    ) -> torch.Tensor:
        """(B, L) tokens starting with <start> -> (B, L, V) next-token logits."""
        L = tokens.shape[1]
        x = self.word_emb(tokens) + tag_vec[:, None, :]  # tags join every input word, before positions
        x = self.emb_dropout(x + self.pos_table[:L])
        causal = torch.triu(torch.ones(L, L, dtype=torch.bool, device=tokens.device), diagonal=1)
        mem_pad = torch.arange(memory.shape[1], device=memory.device)[None, :] >= memory_valid[:, None]
        h = self.decoder(
            x,
            memory,
            tgt_mask=causal,
            tgt_key_padding_mask=tokens == PAD,
            memory_key_padding_mask=mem_pad,
            tgt_is_causal=True,
        )  # stated, not detected: export-safe
        return self.classifier(h)

    def forward(self, waveform, lengths, tags, tokens):
        """Teacher forcing: logits (B, L, V) for predicting tokens[:, 1:] from tokens[:, :-1] is the caller's shift."""
        return self.decode(tokens, *self.encode(waveform, lengths, tags))

    @torch.no_grad()
    def generate(
        self, waveform, lengths=None, tags=None, options: DecodingOptions | None = None
    ) -> list[list[Hypothesis]]:
        """Beam search (options.beam_size=1 is greedy; default beam 3 and the config's max_tokens); n-best per clip."""
        return self.generate_encoded(self.encode(waveform, lengths, tags), options)

    @torch.no_grad()
    def generate_encoded(self, encoded, options: DecodingOptions | None = None) -> list[list[Hypothesis]]:
        """Beam search from `encode` / `encode_frames` output (memory, valid frames, tag vectors)."""
        options = options or DecodingOptions(max_tokens=self.cfg.max_tokens)
        memory, valid, tag_vec = encoded

        def step(seqs: np.ndarray, origin: np.ndarray) -> np.ndarray:
            rows = torch.from_numpy(origin).to(memory.device)
            toks = torch.from_numpy(seqs).to(memory.device)
            logits = self.decode(toks, memory[rows], valid[rows], tag_vec[rows])[:, -1]
            return torch.log_softmax(logits.float(), dim=-1).cpu().numpy()

        return beam_search(step, memory.shape[0], options)

    def caption(self, waveform, lengths=None, tags=None, options: DecodingOptions | None = None) -> list[str]:
        """The best caption per clip, as text."""
        return [self.vocab.decode(h[0].tokens) if h else "" for h in self.generate(waveform, lengths, tags, options)]

    def greedy(self, waveform, lengths=None, tags=None, max_tokens: int | None = None) -> list[str]:
        return self.caption(
            waveform, lengths, tags, DecodingOptions(beam_size=1, max_tokens=max_tokens or self.cfg.max_tokens)
        )


def tags_tensor(tag_lists: Sequence[Sequence[str]], device=None) -> torch.Tensor:
    """Lists of AudioSet display names -> (B, 527) float multi-hot."""
    from blat_contract.labels import tags_to_multi_hot

    return torch.from_numpy(np.stack([tags_to_multi_hot(t) for t in tag_lists])).to(device)
