"""Items: store an upload or a server-side file under an id (or up to max_clips_per_request of them in one call,
each stored or refused on its own), list them a page at a time, read one, its audio, or
delete it."""

# (no `from __future__ import annotations`: FastAPI reads the handlers' annotations, which name per-app models)

import asyncio
from typing import Annotated

from fastapi import Depends, Query
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, JSONResponse
from starlette.concurrency import run_in_threadpool

from blat_gateway.api import proto_io
from blat_gateway.api.json_io import answer, audio_body, base64_audio, error_json, json_object, query_filter
from blat_gateway.endpoint import AUDIO_ERRORS, READ, WRITE, endpoint
from blat_gateway.index import SearchFilter
from blat_gateway.schema import ID, AddItemsOut, DeletedOut, ItemOut, ItemsPageOut
from blat_gateway.uploads import media_type
from blat_wire import blat_pb2 as pb

ITEM_ERRORS = (400, 401, 403, 404)

add_item = endpoint(
    "add_item",
    route="POST /v1/items",
    rpc="AddItem",  # over gRPC, one method takes the audio or a server-side path
    scope=WRITE,
    gate="audio",
    body="audio",
    status=201,
    ok=ItemOut,
    errors=(*AUDIO_ERRORS, 409),
    tag="items",
)
add_item_from_path = endpoint(
    "add_item_from_path",
    route="POST /v1/items/from-path",
    scope=WRITE,
    gate="audio",
    body="json",
    status=201,
    ok=ItemOut,
    errors=(*AUDIO_ERRORS, 404, 409),
    tag="items",
)
list_items = endpoint(
    "list_items",
    route="GET /v1/items",
    rpc="ListItems",
    scope=READ,
    ok=ItemsPageOut,
    errors=(400, 401, 403),
    tag="items",
)
get_item = endpoint(
    "get_item",
    route="GET /v1/items/{item_id:path}",
    rpc="GetItem",
    scope=READ,
    ok=ItemOut,
    errors=ITEM_ERRORS,
    tag="items",
)
delete_item = endpoint(
    "delete_item",
    route="DELETE /v1/items/{item_id:path}",
    rpc="DeleteItem",
    scope=WRITE,
    ok=DeletedOut,
    errors=ITEM_ERRORS,
    tag="items",
)
item_audio = endpoint(
    "item_audio",
    route="GET /v1/audio/{item_id:path}",
    scope=READ,
    errors=ITEM_ERRORS,
    tag="items",
    openapi={
        "response_class": FileResponse,
        "responses": {
            200: {
                "description": "the item's audio file (Range requests answer 206)",
                "content": {"audio/*": {"schema": {"type": "string", "format": "binary"}}},
            }
        },
    },
)


@add_item.rest
def _(gw, m):
    async def add_item(
        data: Annotated[bytes, Depends(audio_body)],
        id: str = Query(**ID),
        tags: list[m.Tag] = Query([], **m.stored.tags),
        caption: str = Query("", **m.stored.caption),
        source_uri: str = Query("", **m.stored.source_uri),
        upsert: bool = False,
        extra: str = Query("", description="as JSON text: " + m.written.extra["description"]),
        dedupe: bool = Query(False, **m.written.dedupe),
    ) -> JSONResponse:
        """Store an uploaded clip under `id` (durable when this answers)."""
        fields = json_object(extra, "extra") if extra else {}
        item = await run_in_threadpool(
            gw.items.add, id, data, None, tags, caption, source_uri, upsert, extra=fields, dedupe=dedupe
        )
        return answer(item.to_dict(), 201)

    return add_item


@add_item.grpc
def _(gw, req):
    return proto_io.item(gw.items.add(**proto_io.add_item(req)))


@add_item_from_path.rest
def _(gw, m):
    async def add_item_from_path(req: m.AddFromPathBody) -> JSONResponse:
        """Store a server-side file (only under the configured ingest roots)."""
        item = await run_in_threadpool(
            lambda: gw.items.add(
                req.id, None, req.path, req.tags, req.caption, req.source_uri, req.upsert, req.extra, req.dedupe
            )
        )
        return answer(item.to_dict(), 201)

    return add_item_from_path


@list_items.rest
def _(gw, m):
    async def list_items(
        flt: Annotated[SearchFilter, Depends(query_filter)],
        limit: int = Query(100, **m.limit),
        cursor: str = Query("", max_length=1024, description="next_cursor of the previous page; empty: the first"),
    ) -> JSONResponse:
        """Stored items in id order, a page at a time, with the same filters as search: pass each answer's
        `next_cursor` as `cursor` until it comes back empty. Writes and index swaps meanwhile never make a page skip
        or repeat an item that stays stored."""
        page = await run_in_threadpool(gw.items.list, flt, limit, cursor)
        return answer(
            {
                "items": [it.to_dict() for it in page.items],
                "next_cursor": page.next_cursor,
                "index_version": page.index_version,
            }
        )

    return list_items


@list_items.grpc
def _(gw, req):
    limit = req.limit if req.HasField("limit") else 100
    page = gw.items.list(proto_io.search_filter(req.filter), limit, req.cursor)
    return pb.ItemsPage(
        items=[proto_io.item(it) for it in page.items], next_cursor=page.next_cursor, index_version=page.index_version
    )


@get_item.rest
def _(gw, m):
    async def get_item(item_id: str = PathParam(**ID)) -> JSONResponse:
        return answer((await run_in_threadpool(gw.items.get, item_id)).to_dict())

    return get_item


@get_item.grpc
def _(gw, req):
    return proto_io.item(gw.items.get(req.id))


@delete_item.rest
def _(gw, m):
    async def delete_item(item_id: str = PathParam(**ID)) -> JSONResponse:
        item = await run_in_threadpool(gw.items.delete, item_id)
        return answer({"deleted": True, "item": item.to_dict()})

    return delete_item


@delete_item.grpc
def _(gw, req):
    return pb.DeleteItemResponse(deleted=True, item=proto_io.item(gw.items.delete(req.id)))


@item_audio.rest
def _(gw, m):
    async def item_audio(item_id: str = PathParam(**ID)) -> FileResponse:
        """The stored item's audio: the uploaded file, or its source file while that is inside the ingest roots."""
        path = await run_in_threadpool(gw.items.audio, item_id)
        return FileResponse(
            path,
            media_type=await run_in_threadpool(media_type, path),
            headers={"Cache-Control": "private, max-age=300"},
        )

    return item_audio


add_items = endpoint(
    "add_items",
    route="POST /v1/items/batch",
    rpc="AddItems",
    scope=WRITE,
    gate="audio",
    body="audio_json",
    ok=AddItemsOut,
    errors=AUDIO_ERRORS,
    tag="items",
)


def _result_json(item_id, stored, error) -> dict:
    return {"id": item_id, "item": stored.to_dict() if stored else None, "error": error_json(error) if error else None}


@add_items.rest
def _(gw, m):
    async def add_items(req: m.AddItemsBody) -> JSONResponse:
        """Store up to limits.max_clips_per_request items in one call (each an upload in `audio`, base64, or a
        server-side `path`). Each is stored or refused on its own, as POST /v1/items would: the answer holds one
        result per item, in order, with the stored item or the error (the same error object as a refused call's
        body). A stored item is durable when the answer comes."""
        entries = []
        for i, it in enumerate(req.items):
            entries.append(
                {
                    "item_id": it.id,
                    "data": base64_audio(it.audio.data, f"items[{i}].audio") if it.audio else None,
                    "path": it.path,
                    "tags": it.tags,
                    "caption": it.caption,
                    "source_uri": it.source_uri,
                    "upsert": it.upsert,
                    "extra": it.extra,
                    "dedupe": it.dedupe,
                }
            )
        results = await asyncio.to_thread(gw.items.add_many, entries)
        return answer({"results": [_result_json(*r) for r in results]})

    return add_items


@add_items.grpc
def _(gw, req):
    results = gw.items.add_many([proto_io.add_item(it) for it in req.items])
    return pb.AddItemsResponse(
        results=[
            pb.ItemResult(
                id=item_id, item=proto_io.item(stored) if stored else None, error=proto_io.error(e) if e else None
            )
            for item_id, stored, e in results
        ]
    )
