"""Embeddings of uploaded audio and of texts, in the bundle's shared space (/v1/embed/*, EmbedAudio, EmbedText, and
the OpenAI-compatible /v1/embeddings)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from blat_gateway.errors import BadRequest, ServiceError, TooLarge
from blat_gateway.services.context import Context


class EmbeddingService:
    def __init__(self, ctx: Context):
        self.ctx = ctx

    def audio(self, data: bytes) -> np.ndarray:
        """Encoded audio bytes -> (D,) unit-norm embedding."""
        return self.ctx.analyze(self.ctx.decode(data).samples)[0]

    def audios(self, clips: Sequence[bytes]) -> np.ndarray:
        """Encoded clips -> (n, D) unit-norm embeddings: at most limits.max_clips_per_request clips, together at
        most limits.max_audio_seconds (the memory one upload may take). The clips join the audio batcher's batches
        together; an error names the clip (`input[2]: ...`)."""
        ctx = self.ctx
        if not clips:
            raise BadRequest("give at least one clip")
        if len(clips) > ctx.limits.max_clips_per_request:
            raise BadRequest(f"at most {ctx.limits.max_clips_per_request} clips per request, got {len(clips)}")
        samples, seconds = [], 0.0
        for i, data in enumerate(clips):
            try:
                audio = ctx.decode(data)
            except ServiceError as e:
                e.message = f"input[{i}]: {e.message}"
                e.args = (e.message,)
                raise
            seconds += audio.duration_s
            if seconds > ctx.limits.max_audio_seconds:
                raise TooLarge(
                    f"the clips of one request last {seconds:.1f} s or more; together at most "
                    f"{ctx.limits.max_audio_seconds:g} s (limits.max_audio_seconds)"
                )
            samples.append(audio.samples)
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
