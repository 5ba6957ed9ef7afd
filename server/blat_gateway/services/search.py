"""Search: items near a text query, an uploaded clip, or a stored item. Search by stored id touches only the index,
so it keeps working while the model backend is down."""

from __future__ import annotations

from blat_gateway.index import Hit, SearchFilter
from blat_gateway.services.context import Context
from blat_gateway.services.embedding import EmbeddingService


class SearchService:
    def __init__(self, ctx: Context, embedding: EmbeddingService):
        self.ctx, self.embedding = ctx, embedding

    def text(self, query: str, k: int = 10, flt: SearchFilter | None = None) -> list[Hit]:
        ctx = self.ctx
        ctx.check_k(k)
        vec = ctx.text_batcher.submit(ctx.check_text(query, "query"), ctx.timeout)
        return ctx.store.search(vec, k, flt)[0]

    def audio(self, data: bytes, k: int = 10, flt: SearchFilter | None = None) -> list[Hit]:
        self.ctx.check_k(k)
        return self.ctx.store.search(self.embedding.audio(data), k, flt)[0]

    def item(self, item_id: str, k: int = 10, flt: SearchFilter | None = None) -> list[Hit]:
        """Neighbours of a stored item, from its stored embedding: no model call."""
        return self.ctx.store.search_by_id(item_id, self.ctx.check_k(k), flt)
