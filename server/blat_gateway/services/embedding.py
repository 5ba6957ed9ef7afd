"""Embeddings of uploaded audio and of texts, in the bundle's shared space (/v1/embed/*, EmbedAudio, EmbedText, and
the OpenAI-compatible /v1/embeddings)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from blat_gateway.errors import BadRequest
from blat_gateway.services.context import Context


class EmbeddingService:
    def __init__(self, ctx: Context):
        self.ctx = ctx

    def audio(self, data: bytes) -> np.ndarray:
        """Encoded audio bytes -> (D,) unit-norm embedding."""
        return self.ctx.analyze(self.ctx.decode(data).samples)[0]

    def audios(self, clips: Sequence[bytes]) -> np.ndarray:
        """Encoded clips -> (n, D) unit-norm embeddings (the limits of `Context.decode_clips`). The clips join the
        audio batcher's batches together."""
        ctx = self.ctx
        samples = ctx.decode_clips(clips, "input")
        futures = [ctx.audio_batcher.submit_future(x, ctx.timeout) for x in samples]
        return np.stack([ctx.result(f)[0] for f in futures])

    def texts(self, texts: Sequence[str], name: str = "texts") -> np.ndarray:
        """Texts -> (n, D) unit-norm embeddings; the texts join the text batcher's batches together. `name`: what
        the caller calls them, in error messages (search_texts' "queries")."""
        ctx = self.ctx
        if not isinstance(texts, (list, tuple)) or not texts:
            raise BadRequest(f"{name} must be a non-empty list of strings")
        if len(texts) > ctx.limits.max_texts:
            raise BadRequest(f"at most {ctx.limits.max_texts} {name} per request, got {len(texts)}")
        checked = [ctx.check_text(t, f"{name}[{i}]") for i, t in enumerate(texts)]
        futures = [ctx.text_batcher.submit_future(t, ctx.timeout) for t in checked]
        return np.stack([ctx.result(f) for f in futures])
