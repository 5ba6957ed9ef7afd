"""REST face of the gateway (FastAPI): serves every declared endpoint (server/blat_gateway/api/) that has a REST
adapter, with the errors rendered by server/blat_gateway/errors.py and the OpenAPI document drawn from the
declarations."""

import contextlib

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from blat_gateway.admission import THREADS_WITHOUT_MODEL
from blat_gateway.api import ENDPOINTS
from blat_gateway.api.json_io import AUDIO_BODY
from blat_gateway.endpoint import Endpoint
from blat_gateway.errors import BadRequest, MethodNotAllowed, NotFound, ServiceError, field_problems, http_answer
from blat_gateway.front_door import FrontDoor
from blat_gateway.schema import request_models
from blat_gateway.service import Gateway
from blat_gateway.web import TITLE

API_DESCRIPTION = """REST face of the gateway (FastAPI), under /v1. Routes only parse, call one service method
(`gw.search`, `gw.tagging`, ...; server/blat_gateway/services/), and shape JSON.

Audio is sent as the raw request body (`curl --data-binary @clip.wav`), parameters in the query string; the
body's size limit is enforced while it is read. Errors are JSON {"error": {"code", "message"}} with the status
from server/blat_gateway/errors.py.
"""
ERROR_SCHEMA = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}, "details": {"type": "object"}},
        }
    },
}
ERROR_TEXT = {
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


def openapi_responses(ep: Endpoint) -> dict:
    """The OpenAPI answers of an endpoint: its success model, its error statuses, and what it states on its own."""
    documented = {ep.status: {"model": ep.ok, "description": "OK"}} if ep.ok else {}
    for s in ep.errors:
        documented[s] = {"description": ERROR_TEXT[s], "content": {"application/json": {"schema": ERROR_SCHEMA}}}
    return {**documented, **ep.openapi.get("responses", {})}


def error_response(e: ServiceError) -> Response:
    status, headers, body = http_answer(e)
    return Response(body, status_code=status, headers={k.decode(): v.decode("latin-1") for k, v in headers})


def add_route(app: FastAPI, gw: Gateway, models, ep: Endpoint) -> None:
    if ep.method == "WS":  # a WebSocket (OpenAPI cannot describe one: README documents it)
        app.add_api_websocket_route(ep.path, ep.make_rest(gw, models), name=ep.name)
        return
    app.add_api_route(
        ep.path,
        ep.make_rest(gw, models),
        methods=[ep.method],
        name=ep.name,
        status_code=ep.status,
        response_model=None,
        response_class=ep.openapi.get("response_class", JSONResponse),
        responses=openapi_responses(ep),
        openapi_extra=AUDIO_BODY if ep.body == "audio" else None,
        tags=[ep.tag] if ep.tag else None,
        include_in_schema=ep.tag is not None,
    )


def create_app(gateway: Gateway) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        # Admitted requests wait for models in pool threads: give the pool room for every gate at once (plus the
        # calls that use no model), so an admitted request never waits for a thread behind another kind of request.
        limiter = anyio.to_thread.current_default_thread_limiter()
        limiter.total_tokens = gateway.admissible + THREADS_WITHOUT_MODEL
        yield

    # /docs and /redoc come from local files (api/pages.py), not from FastAPI's CDN links.
    app = FastAPI(
        title=TITLE, version="1", description=API_DESCRIPTION, lifespan=lifespan, docs_url=None, redoc_url=None
    )
    app.state.gateway = gateway
    app.add_middleware(FrontDoor, gateway=gateway, router=app.router)  # auth, body caps, admission: before any body
    models = request_models(gateway.limits)
    for ep in ENDPOINTS:
        if ep.route and ep.make_rest:
            add_route(app, gateway, models, ep)

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

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError):
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        """Starlette's own errors (no such route 404, wrong method 405) in the same JSON shape as the others."""
        if isinstance(exc.__cause__, ServiceError):  # FastAPI wraps errors raised while it reads a JSON body (413)
            return error_response(exc.__cause__)
        status = exc.status_code
        error = {404: NotFound, 405: MethodNotAllowed}.get(status, ServiceError)(
            f"{request.method} {request.url.path}: {exc.detail}"
        )
        if status not in (404, 405):
            error.code, error.http_status = f"http_{status}", status
        error.headers = tuple((k.lower().encode(), v.encode("latin-1")) for k, v in (exc.headers or {}).items())
        return error_response(error)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        return error_response(BadRequest("invalid request: " + field_problems(exc.errors())))

    return app
