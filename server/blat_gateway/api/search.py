"""Search: items that match a text, sound like an upload, or neighbour a stored item; `offset` pages the ranking."""

# (no `from __future__ import annotations`: FastAPI reads the handlers' annotations, which name per-app models)

from typing import Annotated

from fastapi import Depends, Query
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from blat_gateway.api import proto_io
from blat_gateway.api.json_io import answer, audio_body, hits_json, query_filter
from blat_gateway.endpoint import AUDIO_ERRORS, READ, READ_ERRORS, endpoint
from blat_gateway.index import SearchFilter
from blat_gateway.schema import HitsOut, SearchResultsOut
from blat_wire import blat_pb2 as pb

search_text = endpoint(
    "search_text",
    route="POST /v1/search/text",
    rpc="SearchText",
    scope=READ,
    gate="text",
    body="json",
    ok=HitsOut,
    errors=READ_ERRORS,
    tag="search",
)
search_texts = endpoint(
    "search_texts",
    route="POST /v1/search/texts",
    rpc="SearchTexts",
    scope=READ,
    gate="text",
    body="json",
    ok=SearchResultsOut,
    errors=READ_ERRORS,
    tag="search",
)
search_audio = endpoint(
    "search_audio",
    route="POST /v1/search/audio",
    rpc="SearchAudio",
    scope=READ,
    gate="audio",
    body="audio",
    ok=HitsOut,
    errors=AUDIO_ERRORS,
    tag="search",
)
search_item = endpoint(
    "search_item",
    route="POST /v1/search/item",
    rpc="SearchItem",
    scope=READ,
    body="json",
    ok=HitsOut,
    errors=(400, 401, 403, 404),
    tag="search",
)


@search_text.rest
def _(gw, m):
    async def search_text(req: m.SearchTextBody) -> JSONResponse:
        """Items whose audio matches a text query (cosine similarity in the shared space)."""
        flt = req.filter.to_filter() if req.filter else None
        return answer(hits_json(gw, await run_in_threadpool(gw.search.text, req.query, req.k, flt, req.offset)))

    return search_text


@search_text.grpc
def _(gw, req):
    return proto_io.hits(gw, gw.search.text(req.query, *proto_io.k_filter_offset(req)))


@search_texts.rest
def _(gw, m):
    async def search_texts(req: m.SearchTextsBody) -> JSONResponse:
        """Several text queries in one call, each answered as /v1/search/text answers it, from one index version:
        the texts are embedded together and searched as one batch."""
        flt = req.filter.to_filter() if req.filter else None
        found = await run_in_threadpool(gw.search.texts, req.queries, req.k, flt, req.offset)
        return answer({"results": [hits_json(gw, f) for f in found]})

    return search_texts


@search_texts.grpc
def _(gw, req):
    k, flt, offset = proto_io.k_filter_offset(req)
    return pb.SearchTextsResponse(
        results=[proto_io.hits(gw, f) for f in gw.search.texts(list(req.queries), k, flt, offset)]
    )


@search_audio.rest
def _(gw, m):
    async def search_audio(
        data: Annotated[bytes, Depends(audio_body)],
        flt: Annotated[SearchFilter, Depends(query_filter)],
        k: int = Query(10, **m.k),
        offset: int = Query(0, **m.offset),
    ) -> JSONResponse:
        """Items that sound like the uploaded clip."""
        return answer(hits_json(gw, await run_in_threadpool(gw.search.audio, data, k, flt, offset)))

    return search_audio


@search_audio.grpc
def _(gw, req):
    return proto_io.hits(gw, gw.search.audio(req.audio.data, *proto_io.k_filter_offset(req)))


@search_item.rest
def _(gw, m):
    async def search_item(req: m.SearchItemBody) -> JSONResponse:
        """Neighbours of a stored item (uses its stored embedding: works while the model backend is down)."""
        flt = req.filter.to_filter() if req.filter else None
        return answer(hits_json(gw, await run_in_threadpool(gw.search.item, req.id, req.k, flt, req.offset)))

    return search_item


@search_item.grpc
def _(gw, req):
    return proto_io.hits(gw, gw.search.item(req.id, *proto_io.k_filter_offset(req)))
