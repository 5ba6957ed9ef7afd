"""Search: items near a text query, an uploaded clip, or a stored item. Search by stored id touches only the index,
so it keeps working while the model backend is down. `offset` skips the first hits, so an application can show
page 2 (k=10, offset=10) of the same ranking."""

from __future__ import annotations

from dataclasses import dataclass

from blat_gateway.errors import BadRequest
from blat_gateway.index import Hit, SearchFilter
from blat_gateway.index.records import MAX_K
from blat_gateway.services.context import Context
from blat_gateway.services.embedding import EmbeddingService


@dataclass(frozen=True)
class Found:
    hits: list[Hit]
    index_version: str  # the version that answered (read with the search: a swap cannot come between)


class SearchService:
    def __init__(self, ctx: Context, embedding: EmbeddingService):
        self.ctx, self.embedding = ctx, embedding

    def _depth(self, k: int, offset: int) -> int:
        """How many hits to rank: k after `offset` skipped ones, within the store's MAX_K."""
        self.ctx.check_k(k)
        if not isinstance(offset, int) or not 0 <= offset <= MAX_K - k:
            raise BadRequest(f"offset must be an integer in [0, {MAX_K} - k] = [0, {MAX_K - k}], got {offset!r}")
        return k + offset

    def text(self, query: str, k: int = 10, flt: SearchFilter | None = None, offset: int = 0) -> Found:
        ctx = self.ctx
        depth = self._depth(k, offset)
        vec = ctx.text_batcher.submit(ctx.check_text(query, "query"), ctx.timeout)
        hits, version = ctx.store.search_at(vec, depth, flt)
        return Found(hits[0][offset:], version)

    def texts(self, queries: list[str], k: int = 10, flt: SearchFilter | None = None, offset: int = 0) -> list[Found]:
        """Several text queries in one call (at most limits.max_texts): embedded together by the text batcher and
        searched as one matrix, against one index version."""
        depth = self._depth(k, offset)
        hits, version = self.ctx.store.search_at(self.embedding.texts(queries, "queries"), depth, flt)
        return [Found(h[offset:], version) for h in hits]

    def audio(self, data: bytes, k: int = 10, flt: SearchFilter | None = None, offset: int = 0) -> Found:
        depth = self._depth(k, offset)
        hits, version = self.ctx.store.search_at(self.embedding.audio(data), depth, flt)
        return Found(hits[0][offset:], version)

    def item(self, item_id: str, k: int = 10, flt: SearchFilter | None = None, offset: int = 0) -> Found:
        """Neighbours of a stored item, from its stored embedding: no model call."""
        hits, version = self.ctx.store.search_by_id_at(item_id, self._depth(k, offset), flt)
        return Found(hits[offset:], version)
