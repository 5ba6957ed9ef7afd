"""REST face of the gateway (FastAPI), under /v1. Routes only parse, call one service method
(`gw.search`, `gw.tagging`, ...; server/blat_gateway/services/), and shape JSON.

Audio is sent as the raw request body (`curl --data-binary @clip.wav`), parameters in the query string; the
body's size limit is enforced while it is read. Errors are JSON {"error": {"code", "message"}} with the status
from server/blat_gateway/errors.py.
"""

import contextlib
from typing import Annotated

import anyio
from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from blat_gateway.admission import THREADS_WITHOUT_MODEL
from blat_gateway.audio import read_limited_async
from blat_gateway.errors import BadAudio, BadRequest, ServiceError
from blat_gateway.front_door import FrontDoor
from blat_gateway.index import Hit, ItemRecord, SearchFilter
from blat_gateway.index.records import MAX_TAGS
from blat_gateway.schema import (
    ID,
    AudioEmbeddingOut,
    CaptionsOut,
    DeletedOut,
    HealthOut,
    HitsOut,
    InfoOut,
    ItemOut,
    JobOut,
    ReadyOut,
    StatsOut,
    TagsOut,
    TextEmbeddingsOut,
    request_models,
)
from blat_gateway.service import Gateway
from blat_gateway.services.captioning import MAX_BEAM
from blat_gateway.web import add_web_routes

AUDIO_BODY = {
    "requestBody": {
        "required": True,
        "description": "an encoded clip: WAV, FLAC, OGG (Vorbis/Opus) or MP3",
        "content": {
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "audio/*": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
ERROR_SCHEMA = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}, "details": {"type": "object"}},
        }
    },
}


def ok(model, status: int = 200) -> dict:
    """The OpenAPI entry of a route's success answer (documented, not validated per request: see schema.py)."""
    return {status: {"model": model, "description": "OK"}}


def _errors(*statuses: int) -> dict:
    text = {
        400: "invalid parameters",
        401: "missing or unknown API key",
        403: "key lacks the scope, or path outside the ingest roots",
        408: "the request body stopped arriving",
        404: "not found",
        409: "id or audio content already stored",
        413: "upload or clip duration over its limit",
        415: "not WAV, FLAC, OGG or MP3",
        422: "undecodable or unusable audio",
        429: "overloaded (see Retry-After)",
        502: "model backend error",
        503: "model backend down",
        504: "deadline exceeded",
    }
    return {s: {"description": text[s], "content": {"application/json": {"schema": ERROR_SCHEMA}}} for s in statuses}


AUDIO_ERRORS = _errors(400, 401, 403, 408, 413, 415, 422, 429, 502, 503, 504)
READ_ERRORS = _errors(400, 401, 403, 408, 413, 429, 502, 503, 504)


def hit_json(h: Hit) -> dict:
    return {"id": h.id, "score": h.score, "item": h.item.to_dict()}


def hits_json(gw: Gateway, hits: list[Hit]) -> dict:
    return {"hits": [hit_json(h) for h in hits], "bundle": gw.manifest.id, "index_version": gw.store.version}


def answer(content: dict, status: int = 200) -> JSONResponse:
    """A route's JSON answer, encoded at once by json.dumps. Returned as a Response, FastAPI does not first walk it
    with jsonable_encoder, which held the GIL 14.7 % of the time under text-search load (BENCHMARKS.md)."""
    return JSONResponse(content, status_code=status)


def create_app(gateway: Gateway) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        # Admitted requests wait for models in pool threads: give the pool room for every gate at once (plus the
        # calls that use no model), so an admitted request never waits for a thread behind another kind of request.
        limiter = anyio.to_thread.current_default_thread_limiter()
        limiter.total_tokens = gateway.admissible + THREADS_WITHOUT_MODEL
        yield

    # /docs and /redoc come from local files (server/blat_gateway/web.py), not from FastAPI's CDN links.
    app = FastAPI(
        title="BLAT gateway", version="1", description=__doc__, lifespan=lifespan, docs_url=None, redoc_url=None
    )
    app.state.gateway = gw = gateway
    m, lim = request_models(gateway.limits), gateway.limits
    k_query, id_query, id_path = Query(10, **m.k), Query(**ID), Path(**ID)

    def seconds_query():  # one Query object per parameter: FastAPI keeps per-parameter state on it
        return Query(0.0, ge=0, le=lim.max_audio_seconds, description="0: none (hop_s 0: the window)")

    app.add_middleware(FrontDoor, gateway=gateway, router=app.router)  # auth, body caps, admission: before any body
    default_openapi = app.openapi

    def openapi() -> dict:
        """FastAPI documents a 422 "Validation Error" on every route with parameters, but invalid parameters answer
        400 here (see `invalid` below): drop that entry; 422 stays where a route documents it (unusable audio)."""
        if app.openapi_schema is None:
            for ops in default_openapi().get("paths", {}).values():
                for op in ops.values():
                    if op.get("responses", {}).get("422", {}).get("description") == "Validation Error":
                        del op["responses"]["422"]
        return app.openapi_schema

    app.openapi = openapi

    async def body(request: Request) -> bytes:
        data = await read_limited_async(request.stream(), gw.limits.max_upload_bytes)  # FrontDoor checked the header
        if not data:  # 422 like any other unusable upload (what decode_audio answers for zero bytes)
            raise BadAudio("empty request body: send the audio file as the body")
        return data

    def query_filter(
        tags_any: list[str] = Query([]),
        tags_all: list[str] = Query([]),
        source_prefix: str | None = None,
        min_duration_s: float | None = None,
        max_duration_s: float | None = None,
    ) -> SearchFilter:
        return SearchFilter(tuple(tags_any), tuple(tags_all), source_prefix, min_duration_s, max_duration_s)

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError):
        headers = {"Retry-After": str(max(1, round(exc.retry_after_s)))} if hasattr(exc, "retry_after_s") else {}
        if exc.http_status in (408, 413):  # the rest of the body was not read: this connection cannot go on
            headers["Connection"] = "close"
        return JSONResponse(exc.to_json(), status_code=exc.http_status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        """Starlette's own errors (no such route 404, wrong method 405) in the same JSON shape as the others."""
        if isinstance(exc.__cause__, ServiceError):  # FastAPI wraps errors raised while it reads a JSON body (413)
            return await service_error(request, exc.__cause__)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, f"http_{exc.status_code}")
        return JSONResponse(
            {"error": {"code": code, "message": f"{request.method} {request.url.path}: {exc.detail}"}},
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        details = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()]
        return JSONResponse(
            BadRequest(
                "invalid request: " + "; ".join(f"{'.'.join(map(str, d['loc']))}: {d['msg']}" for d in details)
            ).to_json(),
            status_code=400,
        )

    # -- search ----------------------------------------------------------------------------------------------------
    @app.post("/v1/search/text", response_model=None, responses={**ok(HitsOut, 200), **READ_ERRORS}, tags=["search"])
    async def search_text(req: m.SearchTextBody) -> JSONResponse:
        """Items whose audio matches a text query (cosine similarity in the shared space)."""
        flt = req.filter.to_filter() if req.filter else None
        return answer(hits_json(gw, await run_in_threadpool(gw.search.text, req.query, req.k, flt)))

    @app.post(
        "/v1/search/audio",
        response_model=None,
        responses={**ok(HitsOut, 200), **AUDIO_ERRORS},
        openapi_extra=AUDIO_BODY,
        tags=["search"],
    )
    async def search_audio(
        data: Annotated[bytes, Depends(body)], flt: Annotated[SearchFilter, Depends(query_filter)], k: int = k_query
    ) -> JSONResponse:
        """Items that sound like the uploaded clip."""
        return answer(hits_json(gw, await run_in_threadpool(gw.search.audio, data, k, flt)))

    @app.post(
        "/v1/search/item",
        response_model=None,
        responses={**ok(HitsOut, 200), **_errors(400, 401, 403, 404)},
        tags=["search"],
    )
    async def search_item(req: m.SearchItemBody) -> JSONResponse:
        """Neighbours of a stored item (uses its stored embedding: works while the model backend is down)."""
        flt = req.filter.to_filter() if req.filter else None
        return answer(hits_json(gw, await run_in_threadpool(gw.search.item, req.id, req.k, flt)))

    # -- models ----------------------------------------------------------------------------------------------------
    @app.post(
        "/v1/tag",
        response_model=None,
        responses={**ok(TagsOut, 200), **AUDIO_ERRORS},
        openapi_extra=AUDIO_BODY,
        tags=["models"],
    )
    async def tag(
        data: Annotated[bytes, Depends(body)],
        labels: list[str] = Query([], max_length=lim.max_labels),
        top_k: int = Query(10, ge=1, le=lim.max_labels),
        window_s: float = seconds_query(),
        hop_s: float = seconds_query(),
    ) -> JSONResponse:
        """Tags with independent per-label scores: the 527 AudioSet labels, or `labels`; `window_s` > 0 adds tags per
        window over time. Each tag says its `scorer`: the bundle's supervised AudioSet tagger for the classes it was
        trained on (`tagger+zero_shot` where the bundle mixes in the zero-shot score), zero-shot (the label's prompt
        against the audio embedding) for any other label."""
        clip, windows = await run_in_threadpool(gw.tagging.tag, data, labels or None, top_k, window_s, hop_s)
        windows_json = [{"start_s": w.start_s, "end_s": w.end_s, "tags": [vars(t) for t in w.tags]} for w in windows]
        return answer({"tags": [vars(t) for t in clip], "windows": windows_json})

    @app.post(
        "/v1/caption",
        response_model=None,
        responses={**ok(CaptionsOut, 200), **AUDIO_ERRORS},
        openapi_extra=AUDIO_BODY,
        tags=["models"],
    )
    async def caption(
        data: Annotated[bytes, Depends(body)],
        tags: list[str] = Query([], max_length=MAX_TAGS),
        n_best: int = Query(1, ge=1, le=MAX_BEAM),
        beam_size: int = Query(0, ge=0, le=MAX_BEAM, description="0: the bundle's default"),
    ) -> JSONResponse:
        """Captions for the clip, optionally guided by AudioSet tags (display names); n-best by beam search."""
        result = await run_in_threadpool(gw.captioning.caption, data, tags, n_best, beam_size)
        return answer({"captions": [vars(c) for c in result]})

    @app.post(
        "/v1/embed/audio",
        response_model=None,
        responses={**ok(AudioEmbeddingOut, 200), **AUDIO_ERRORS},
        openapi_extra=AUDIO_BODY,
        tags=["models"],
    )
    async def embed_audio(data: Annotated[bytes, Depends(body)]) -> JSONResponse:
        vec = await run_in_threadpool(gw.embedding.audio, data)
        return answer({"embedding": vec.tolist(), "dim": len(vec), "bundle": gw.manifest.id})

    @app.post(
        "/v1/embed/text", response_model=None, responses={**ok(TextEmbeddingsOut, 200), **READ_ERRORS}, tags=["models"]
    )
    async def embed_text(req: m.EmbedTextBody) -> JSONResponse:
        vecs = await run_in_threadpool(gw.embedding.texts, req.texts)
        return answer({"embeddings": vecs.tolist(), "dim": vecs.shape[1], "bundle": gw.manifest.id})

    # -- items -----------------------------------------------------------------------------------------------------
    @app.post(
        "/v1/items",
        response_model=None,
        responses={**ok(ItemOut, 201), **AUDIO_ERRORS, **_errors(409)},
        openapi_extra=AUDIO_BODY,
        status_code=201,
        tags=["items"],
    )
    async def add_item(
        data: Annotated[bytes, Depends(body)],
        id: str = id_query,
        tags: list[m.Tag] = Query([], **m.stored.tags),
        caption: str = Query("", **m.stored.caption),
        source_uri: str = Query("", **m.stored.source_uri),
        upsert: bool = False,
    ) -> JSONResponse:
        """Store an uploaded clip under `id` (durable when this answers)."""
        item = await run_in_threadpool(gw.items.add, id, data, None, tags, caption, source_uri, upsert)
        return answer(item.to_dict(), 201)

    @app.post(
        "/v1/items/from-path",
        response_model=None,
        responses={**ok(ItemOut, 201), **AUDIO_ERRORS, **_errors(404, 409)},
        status_code=201,
        tags=["items"],
    )
    async def add_item_from_path(req: m.AddFromPathBody) -> JSONResponse:
        """Store a server-side file (only under the configured ingest roots)."""
        item = await run_in_threadpool(
            gw.items.add, req.id, None, req.path, req.tags, req.caption, req.source_uri, req.upsert
        )
        return answer(item.to_dict(), 201)

    @app.get(
        "/v1/items/{item_id:path}",
        response_model=None,
        responses={**ok(ItemOut, 200), **_errors(400, 401, 403, 404)},
        tags=["items"],
    )
    async def get_item(item_id: str = id_path) -> JSONResponse:
        return answer((await run_in_threadpool(gw.items.get, item_id)).to_dict())

    @app.delete(
        "/v1/items/{item_id:path}",
        response_model=None,
        responses={**ok(DeletedOut, 200), **_errors(400, 401, 403, 404)},
        tags=["items"],
    )
    async def delete_item(item_id: str = id_path) -> JSONResponse:
        item: ItemRecord = await run_in_threadpool(gw.items.delete, item_id)
        return answer({"deleted": True, "item": item.to_dict()})

    # -- index -----------------------------------------------------------------------------------------------------
    @app.post(
        "/v1/index/rebuild",
        response_model=None,
        responses={**ok(JobOut, 202), **_errors(400, 401, 403, 404, 409)},
        status_code=202,
        tags=["index"],
    )
    async def start_rebuild(req: m.RebuildBody) -> JSONResponse:
        """Rebuild the index from a folder or manifest in the background; searches use the old version until the
        new one validates, then it swaps (see /v1/index/rollback)."""
        job = await run_in_threadpool(gw.ingest.start_rebuild, req.folder, req.manifest, embeddings=req.embeddings)
        return answer(job.to_dict(), 202)

    @app.get(
        "/v1/index/rebuild/{job_id}",
        response_model=None,
        responses={**ok(JobOut, 200), **_errors(401, 403, 404)},
        tags=["index"],
    )
    async def rebuild_status(job_id: str) -> JSONResponse:
        return answer(gw.ingest.rebuild_status(job_id).to_dict())

    @app.post(
        "/v1/index/rebuild/{job_id}/cancel",
        response_model=None,
        responses={**ok(JobOut, 200), **_errors(401, 403, 404)},
        tags=["index"],
    )
    async def cancel_rebuild(job_id: str) -> JSONResponse:
        return answer(gw.ingest.cancel_rebuild(job_id).to_dict())

    @app.post(
        "/v1/index/rollback",
        response_model=None,
        responses={**ok(StatsOut, 200), **_errors(401, 403, 404, 409)},
        tags=["index"],
    )
    async def rollback() -> JSONResponse:
        return answer((await run_in_threadpool(gw.ingest.rollback)).to_dict())

    @app.get(
        "/v1/index/stats", response_model=None, responses={**ok(StatsOut, 200), **_errors(401, 403)}, tags=["index"]
    )
    async def stats() -> JSONResponse:
        return answer((await run_in_threadpool(gw.stats)).to_dict())

    @app.get("/v1/info", response_model=None, responses={**ok(InfoOut, 200), **_errors(401, 403)}, tags=["index"])
    async def info() -> JSONResponse:
        """The model bundle (bundle.json), the backend, and the limits."""
        return answer(gw.info())

    # -- the web page, /docs and item audio ------------------------------------------------------------------------
    add_web_routes(app, gw, _errors(400, 401, 403, 404))

    # -- operations ------------------------------------------------------------------------------------------------
    @app.get("/healthz", response_model=None, responses=ok(HealthOut, 200), tags=["ops"])
    async def healthz() -> JSONResponse:
        """Liveness: the process answers."""
        return answer({"status": "ok"})

    @app.get(
        "/readyz",
        response_model=None,
        tags=["ops"],
        responses={
            **ok(ReadyOut, 200),
            503: {"description": "backend not ready or index not loaded", "model": ReadyOut},
        },
    )
    async def readyz():
        ok, why = await run_in_threadpool(gw.ready)
        return JSONResponse({"ready": ok, "detail": why}, status_code=200 if ok else 503)

    @app.get(
        "/metrics",
        tags=["ops"],
        response_class=Response,
        responses={
            200: {
                "description": "Prometheus text exposition format",
                "content": {gw.metrics.content_type: {"schema": {"type": "string"}}},
            }
        },
    )
    async def metrics() -> Response:
        return Response(gw.metrics.render(), media_type=gw.metrics.content_type)

    return app
