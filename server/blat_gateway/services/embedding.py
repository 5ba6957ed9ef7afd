"""Embeddings of uploaded audio and of texts, in the bundle's shared space (/v1/embed/*, EmbedAudio, EmbedText)."""

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

    def texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> (n, D) unit-norm embeddings; the texts join the text batcher's batches together."""
        ctx = self.ctx
        if not isinstance(texts, (list, tuple)) or not texts:
            raise BadRequest("texts must be a non-empty list of strings")
        if len(texts) > ctx.limits.max_texts:
            raise BadRequest(f"at most {ctx.limits.max_texts} texts per request, got {len(texts)}")
        checked = [ctx.check_text(t, f"texts[{i}]") for i, t in enumerate(texts)]
        futures = [ctx.text_batcher.submit_future(t, ctx.timeout) for t in checked]
        return np.stack([ctx.result(f) for f in futures])
