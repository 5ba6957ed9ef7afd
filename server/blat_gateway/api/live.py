"""Live tagging: raw PCM streamed in, the tags of each window streamed back as soon as its audio has arrived.

One endpoint, two faces that share everything but the transport: StreamTag over gRPC, and `/v1/tag/stream` over a
WebSocket for browsers (which cannot open gRPC streams). Both open one TagStream (server/blat_gateway/services/
tagging.py: decoding, resampling, windowing, scoring as /v1/tag scores, the min-real-time rule), hold one place of
limits.max_streams for their life (the gateway's `streams` gate: taken by the gRPC face and the front door), admit
each window through the audio gate, and wait at most limits.stream_idle_s for a message and limits.stream_max_s in
all.

The WebSocket's messages (subprotocol `blat.tag.v1`):

    client -> server   text   {"encoding": "f32le"|"s16le", "sample_rate": 48000, "window_s": 2, "hop_s": 1,
                               "top_k": 5, "labels": []}           first, once (StreamConfig's fields and defaults)
                       binary raw mono PCM, any number of messages (each at most limits.max_upload_bytes + 64 KiB,
                                as a gRPC message)
                       text   {"end": true}                        no more audio: the last windows, then the close
    server -> client   text   {"start_s", "end_s", "tags": [{"label", "score", "scorer"}]}   one per window
                       text   {"end": true, "windows": N}          after {"end": true}; then close 1000
                       text   {"error": {"code", "http_status", "reason", "message"}}        then close 4000+status
"""

# (no `from __future__ import annotations`: FastAPI reads the handler's annotations)

import asyncio
import json
import logging
import time
from collections.abc import Iterator

from fastapi import WebSocket, WebSocketDisconnect
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from blat_gateway.api import proto_io
from blat_gateway.api.json_io import window_json
from blat_gateway.endpoint import READ, endpoint
from blat_gateway.errors import BadRequest, DeadlineExceeded, ServiceError, field_problems, unexpected
from blat_wire import blat_pb2 as pb

SUBPROTOCOL = "blat.tag.v1"
log = logging.getLogger(__name__)

# A long call: one place of limits.max_streams for its life; each window is admitted through the audio gate.
stream_tag = endpoint("StreamTag", route="WS /v1/tag/stream", rpc="StreamTag", scope=READ, stream=True)


def _open(gw, encoding: str, sample_rate: int, window_s: float, hop_s: float, labels, top_k: int):
    return gw.tagging.stream(
        encoding, sample_rate, window_s, hop_s, labels or None, top_k, admit=lambda: gw.admitted("audio")
    )


@stream_tag.grpc
def _(gw, requests: Iterator[pb.StreamTagRequest]) -> Iterator[pb.TagWindow]:
    """Chunks of raw mono PCM in; one TagWindow out per hop once a window of audio has arrived (the face paces the
    stream and holds its place: server/blat_gateway/grpc_service.py)."""
    first = next(requests, None)
    if first is None or first.WhichOneof("payload") != "config":
        raise BadRequest("the first StreamTag message must carry the config")
    cfg = first.config
    stream = _open(
        gw, cfg.encoding, cfg.sample_rate, cfg.window_s or 2.0, cfg.hop_s or 1.0, list(cfg.labels), cfg.top_k or 5
    )
    for msg in requests:
        if msg.WhichOneof("payload") != "pcm":
            raise BadRequest("only PCM chunks may follow the config")
        yield from map(proto_io.tag_window, stream.feed(msg.pcm))
    yield from map(proto_io.tag_window, stream.finish())


class _Inbox:
    """The socket's messages with the stream's time limits: DeadlineExceeded after limits.stream_idle_s without a
    message or limits.stream_max_s in all; WebSocketDisconnect when the client went away."""

    def __init__(self, ws: WebSocket, idle_s: float, max_s: float):
        self.ws, self.idle_s, self.max_s = ws, idle_s, max_s
        self.ends_at = time.monotonic() + max_s

    async def next(self) -> dict:
        left = self.ends_at - time.monotonic()
        if left <= 0:
            raise DeadlineExceeded(f"the stream lasted longer than stream_max_s ({self.max_s:g} s)")
        try:
            message = await asyncio.wait_for(self.ws.receive(), min(self.idle_s, left))
        except TimeoutError:
            if time.monotonic() >= self.ends_at:
                raise DeadlineExceeded(f"the stream lasted longer than stream_max_s ({self.max_s:g} s)") from None
            raise DeadlineExceeded(f"no message for stream_idle_s ({self.idle_s:g} s): the stream was closed") from None
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1000))
        return message


def _json_message(message: dict, what: str) -> dict:
    text = message.get("text")
    try:
        value = json.loads(text) if text is not None else None
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise BadRequest(f"expected {what} as a JSON object in a text message")
    return value


def _all(windows: Iterator) -> list:
    """A TagStream's windows for one message, scored in a pool thread (the generator runs where it is consumed)."""
    return list(windows)


async def _fail(ws: WebSocket, e: ServiceError) -> None:
    """The error in the REST envelope, then a close with 4000 + its HTTP status (4400, 4504...) and its code."""
    try:
        await ws.send_text(json.dumps(e.to_json()))
        await ws.close(code=4000 + e.http_status, reason=e.grpc_code)
    except Exception:  # the client is gone: nobody to tell
        pass


@stream_tag.rest
def _(gw, m):
    async def stream_tag(ws: WebSocket) -> None:
        """Live tagging over a WebSocket (the protocol: server/blat_gateway/api/live.py's docstring and README)."""
        await ws.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in ws.scope.get("subprotocols", ()) else None)
        limits = gw.limits
        inbox = _Inbox(ws, limits.stream_idle_s, limits.stream_max_s)
        try:
            config = _json_message(await inbox.next(), "the config")
            try:
                cfg = m.StreamConfigBody.model_validate(config)
            except ValidationError as e:
                raise BadRequest(f"invalid config: {field_problems(e.errors())}") from None
            stream = await run_in_threadpool(
                _open, gw, cfg.encoding, cfg.sample_rate, cfg.window_s, cfg.hop_s, cfg.labels, cfg.top_k
            )
            sent = 0
            while True:
                message = await inbox.next()
                pcm = message.get("bytes")
                if pcm is not None:
                    windows = await run_in_threadpool(_all, stream.feed(pcm))
                elif _json_message(message, '{"end": true} or binary PCM') == {"end": True}:
                    windows = await run_in_threadpool(_all, stream.finish())
                else:
                    raise BadRequest('after the config: binary PCM messages, then {"end": true}')
                for w in windows:
                    await ws.send_text(json.dumps(window_json(w)))
                sent += len(windows)
                if pcm is None:
                    await ws.send_text(json.dumps({"end": True, "windows": sent}))
                    await ws.close(1000)
                    return
        except WebSocketDisconnect:
            return  # the client left: nothing to answer
        except ServiceError as e:
            await _fail(ws, e)
        except Exception as e:  # a window's model wait past its deadline (504), or a bug (logged)
            await _fail(ws, unexpected(e, log, "the /v1/tag/stream WebSocket"))

    return stream_tag
