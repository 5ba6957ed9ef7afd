"""What the REST adapters share: the JSON answer, the audio body, the search filter in a query string."""

from __future__ import annotations

import base64
import binascii
import json

from fastapi import Query, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile

from blat_gateway.audio import read_limited_async
from blat_gateway.errors import BadAudio, BadRequest, ServiceError
from blat_gateway.index import SearchFilter
from blat_gateway.index.records import iso_time
from blat_gateway.service import Gateway
from blat_gateway.services.search import Found

# The raw upload of an audio route, as /openapi.json describes it (FastAPI cannot infer it from a dependency).
AUDIO_BODY = {
    "requestBody": {
        "required": True,
        "description": "an encoded clip: WAV, FLAC, OGG (Vorbis/Opus) or MP3",
        "content": {
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "audio/*": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {  # curl -F file=@clip.wav: one file part, under any field name
                "schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}}}
            },
        },
    }
}


def answer(content: dict, status: int = 200) -> JSONResponse:
    """A route's JSON answer, encoded at once by json.dumps. Returned as a Response, FastAPI does not first walk it
    with jsonable_encoder, which held the GIL 14.7 % of the time under text-search load (BENCHMARKS.md)."""
    return JSONResponse(content, status_code=status)


def hits_json(gw: Gateway, found: Found) -> dict:
    return {
        "hits": [{"id": h.id, "score": h.score, "item": h.item.to_dict()} for h in found.hits],
        "bundle": gw.manifest.id,
        "index_version": found.index_version,
    }


def window_json(w) -> dict:
    """A TagWindow as /v1/tag's `windows` and /v1/tag/stream's messages carry it."""
    return {"start_s": w.start_s, "end_s": w.end_s, "tags": [vars(t) for t in w.tags]}


def job_json(p) -> dict:
    """A rebuild's progress in blat.proto's Job vocabulary (proto_io.job builds the message from this)."""
    return {
        "job_id": p.version,
        "state": p.state,
        "done": p.done,
        "total": p.total,
        "error": p.error or "",
        "version": p.version,
        "added": p.added,
        "skipped": p.skipped,
        "skipped_reasons": list(p.skipped_reasons),
        "recall": p.recall,
        "started_at": iso_time(p.started_at),
        "finished_at": iso_time(p.finished_at),
        "unreadable": p.unreadable,
    }


def stats_json(s) -> dict:
    """Index statistics in blat.proto's StatsResponse vocabulary (proto_io.stats builds the message from this)."""
    return {
        "items": s.count,
        "deleted_pending": s.tombstones,
        "index_kind": s.kind,
        "index_version": s.version,
        "bundle": s.bundle_id,
        "dim": s.dim,
        "previous_version": s.previous_version or "",
        "index_engine": s.engine,
        "serving_bundle": s.serving_bundle_id,
        "bundle_mismatch": s.bundle_mismatch,
        "index_type": s.index_type,
        "index_total": s.index_total,
        "writes_since_snapshot": s.writes_since_snapshot,
        "needs_compaction": s.needs_compaction,
        "params": s.params,
        "gpu": s.gpu,
        "rebuild": job_json(s.rebuild) if s.rebuild is not None else None,
    }


def error_json(e: ServiceError) -> dict:
    """The inner object of an error body (errors.ServiceError.to_json), as batch answers carry it per item."""
    return e.to_json()["error"]


def base64_audio(value: str, where: str) -> bytes:
    """An encoded clip sent in JSON: base64, or a data: URI holding base64. URLs are not fetched."""
    if value.startswith(("http://", "https://", "s3://", "file:")):
        raise BadRequest(f"{where}: the gateway does not fetch URLs; send the audio base64-encoded")
    if value.startswith("data:"):
        head, _, value = value.partition(",")
        if not head.endswith(";base64"):
            raise BadRequest(f"{where}: a data: URI must be base64 (data:audio/wav;base64,...)")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"{where}: not base64") from None


async def audio_body(request: Request) -> bytes:
    """The upload, read within limits.max_upload_bytes (the front door already checked the declared length): the
    raw body, or the one file of a multipart form (`curl -F file=@clip.wav`)."""
    gw: Gateway = request.app.state.gateway
    if request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        data = await _form_file(request)
    else:
        data = await read_limited_async(request.stream(), gw.limits.max_upload_bytes)
    if not data:  # 422 like any other unusable upload (what decode_audio answers for zero bytes)
        raise BadAudio("empty request body: send the audio file as the body")
    return data


async def _form_file(request: Request) -> bytes:
    try:
        form = await request.form(max_files=1, max_fields=16)
    except Exception as e:  # malformed multipart, or more parts than allowed
        detail = getattr(e, "detail", None) or getattr(e, "message", None) or str(e)
        raise BadRequest(f"multipart upload: {detail}; send one file part (curl -F file=@clip.wav)") from None
    try:
        files = [v for v in form.values() if isinstance(v, UploadFile)]
        if len(files) != 1:
            raise BadRequest(f"a multipart upload carries exactly one file part, got {len(files)}")
        return await files[0].read()
    finally:
        await form.close()


def query_filter(
    tags_any: list[str] = Query([]),
    tags_all: list[str] = Query([]),
    source_prefix: str | None = None,
    min_duration_s: float | None = None,
    max_duration_s: float | None = None,
    extra: str | None = Query(None, description='conditions on extra keys, as JSON: {"licence": {"in": ["CC0-1.0"]}}'),
) -> SearchFilter:
    conditions = json_object(extra, "extra") if extra else {}
    return SearchFilter(tuple(tags_any), tuple(tags_all), source_prefix, min_duration_s, max_duration_s, conditions)


def json_object(text: str, name: str) -> dict:
    """A JSON object sent as one query-string or form field (`extra`)."""
    try:
        value = json.loads(text)
    except ValueError as e:
        raise BadRequest(f"{name} is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise BadRequest(f"{name} must be a JSON object, got {type(value).__name__}")
    return value
