"""Batches: tag several clips in one call, and store several items in one call (each stored or refused on its own).

Both carry their clips in JSON, base64-encoded as proto3's JSON writes bytes, so the REST body is the JSON form of
the gRPC request; together the clips stay within one upload's limits (the front door caps an "audio_json" body).
"""

# (no `from __future__ import annotations`: FastAPI reads the handlers' annotations, which name per-app models)

import asyncio

from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from blat_gateway.api import proto_io
from blat_gateway.api.json_io import answer, base64_audio, error_json
from blat_gateway.endpoint import AUDIO_ERRORS, READ, WRITE, endpoint
from blat_gateway.schema import AddItemsOut, TagClipsOut
from blat_wire import blat_pb2 as pb

tag_clips = endpoint(
    "tag_clips",
    route="POST /v1/tag/clips",
    rpc="TagClips",
    scope=READ,
    gate="audio",
    body="audio_json",
    ok=TagClipsOut,
    errors=AUDIO_ERRORS,
    tag="models",
)
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


def _tags_json(clip, windows) -> dict:
    windows_json = [{"start_s": w.start_s, "end_s": w.end_s, "tags": [vars(t) for t in w.tags]} for w in windows]
    return {"tags": [vars(t) for t in clip], "windows": windows_json}


@tag_clips.rest
def _(gw, m):
    async def tag_clips(req: m.TagClipsBody) -> JSONResponse:
        """`/v1/tag` for up to limits.max_clips_per_request clips at once, with the same options for each: one result
        per clip, in order. All or nothing: a clip that does not decode fails the call and the error names it."""
        clips = [base64_audio(a.data, f"audios[{i}]") for i, a in enumerate(req.audios)]
        results = await run_in_threadpool(
            gw.tagging.tag_clips, clips, req.labels or None, req.top_k, req.window_s, req.hop_s
        )
        return answer({"results": [_tags_json(clip, windows) for clip, windows in results]})

    return tag_clips


@tag_clips.grpc
def _(gw, req):
    results = gw.tagging.tag_clips(
        [a.data for a in req.audios], list(req.labels) or None, req.top_k or 10, req.window_s, req.hop_s
    )
    return pb.TagClipsResponse(
        results=[
            pb.TagResponse(tags=proto_io.scores(clip), windows=[proto_io.tag_window(w) for w in windows])
            for clip, windows in results
        ]
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
