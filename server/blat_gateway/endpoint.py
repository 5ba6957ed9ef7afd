"""What an endpoint is: one declaration that the REST face, the gRPC face and the access checks all read.

An `Endpoint` names its REST route and/or its gRPC method, the API-key scope it needs ("read", "write" or
"public"), the admission gate of the model input it feeds ("audio", "text" or None: no model call), the body it
carries over REST ("audio": raw upload, capped at limits.max_upload_bytes; "json": capped at limits.max_json_bytes;
"audio_json": JSON carrying base64 audio, capped at 4/3 of max_upload_bytes plus max_json_bytes; None: no body), its
success status and response model and the error statuses it documents. Its adapters turn a
face's request into one service call and the answer back:

    search_text = endpoint("search_text", route="POST /v1/search/text", rpc="SearchText", scope=READ, ...)

    @search_text.rest
    def _(gw, m):               # m: the request models made from the configured limits (schema.py)
        async def search_text(req: m.SearchTextBody) -> JSONResponse: ...
        return search_text

    @search_text.grpc
    def _(gw, req: pb.SearchTextRequest) -> pb.SearchResponse: ...

A route or method that is not declared is refused on both faces (403 / PERMISSION_DENIED), even without keys.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

READ, WRITE, PUBLIC = "read", "write", "public"

# The error statuses a route documents in /openapi.json (their descriptions: rest.py).
AUDIO_ERRORS = (400, 401, 403, 408, 413, 415, 422, 429, 502, 503, 504)  # a route that decodes an upload
READ_ERRORS = (400, 401, 403, 408, 413, 429, 502, 503, 504)  # a route that runs a model on JSON input


@dataclass
class Endpoint:
    name: str  # the REST handler's name (its OpenAPI operation), or the RPC's for a gRPC-only call
    scope: str  # READ, WRITE or PUBLIC
    route: str | None = None  # "METHOD /path/{param}" as Starlette matches it ("WS /path": a WebSocket); None: gRPC
    rpc: str | None = None  # the method of blat.v1.Blat (blat_wire/blat.proto); None: REST only
    gate: str | None = None  # "audio" or "text": the admission gate of the model input; None: no model call
    body: str | None = None  # REST only: "audio", "json", "audio_json" or None
    status: int = 200  # REST success status
    ok: Any = None  # the REST success model (schema.py), documented in /openapi.json
    errors: tuple[int, ...] = ()  # the REST error statuses documented
    tag: str | None = None  # the OpenAPI group; None: left out of /openapi.json
    openapi: dict = field(default_factory=dict)  # any other FastAPI route option (response_class, responses)
    stream: bool = False  # gRPC: a bidirectional stream (capped by limits.max_streams, paced by the face)
    make_rest: Callable | None = None  # (gateway, request models) -> the FastAPI handler
    serve_grpc: Callable | None = None  # (gateway, request or request iterator) -> response or response iterator

    @property
    def method(self) -> str | None:
        return self.route.split(" ", 1)[0] if self.route else None

    @property
    def path(self) -> str | None:
        return self.route.split(" ", 1)[1] if self.route else None

    def rest(self, make: Callable) -> Callable:
        """Decorator: the factory of this endpoint's REST handler."""
        self.make_rest = make
        return make

    def grpc(self, serve: Callable) -> Callable:
        """Decorator: this endpoint's gRPC handler."""
        self.serve_grpc = serve
        return serve


ENDPOINTS: list[Endpoint] = []  # in declaration order, which is the REST routes' matching order


def endpoint(name: str, **declared) -> Endpoint:
    ep = Endpoint(name, **declared)
    if any(e.name == name or (ep.route and e.route == ep.route) or (ep.rpc and e.rpc == ep.rpc) for e in ENDPOINTS):
        raise ValueError(f"endpoint {name} ({ep.route}, {ep.rpc}) is declared twice")
    ENDPOINTS.append(ep)
    return ep


UNDECLARED = Endpoint("undeclared", scope="undeclared")
