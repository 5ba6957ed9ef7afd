"""Who may call what, and through which admission gate: one table for the REST routes and the gRPC methods.

Each entry names the API-key scope a call needs ("read", "write" or "public"), the admission gate of the model
input it feeds ("audio", "text" or None: no model call) and, for REST, the body it carries ("audio": raw upload,
capped at limits.max_upload_bytes; "json": capped at limits.max_json_bytes; None: no body). A route or method that
is not in the table is refused (403 / PERMISSION_DENIED): a new endpoint is closed until it is declared here.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from blat_gateway.errors import Forbidden, ReadOnly, Unauthorized


@dataclass(frozen=True)
class Access:
    scope: str  # "public", "read" or "write"
    gate: str | None = None  # "audio" or "text": the admission gate of the model input; None: no model call
    body: str | None = None  # REST only: "audio", "json" or None


READ, WRITE, PUBLIC = "read", "write", "public"

REST: dict[tuple[str, str], Access] = {
    ("POST", "/v1/search/text"): Access(READ, "text", "json"),
    ("POST", "/v1/search/audio"): Access(READ, "audio", "audio"),
    ("POST", "/v1/search/item"): Access(READ, None, "json"),
    ("POST", "/v1/tag"): Access(READ, "audio", "audio"),
    ("POST", "/v1/caption"): Access(READ, "audio", "audio"),
    ("POST", "/v1/embed/audio"): Access(READ, "audio", "audio"),
    ("POST", "/v1/embed/text"): Access(READ, "text", "json"),
    ("POST", "/v1/items"): Access(WRITE, "audio", "audio"),
    ("POST", "/v1/items/from-path"): Access(WRITE, "audio", "json"),
    ("GET", "/v1/items/{item_id:path}"): Access(READ),
    ("DELETE", "/v1/items/{item_id:path}"): Access(WRITE),
    ("POST", "/v1/index/rebuild"): Access(WRITE, None, "json"),
    ("GET", "/v1/index/rebuild/{job_id}"): Access(READ),
    ("POST", "/v1/index/rebuild/{job_id}/cancel"): Access(WRITE),
    ("POST", "/v1/index/rollback"): Access(WRITE),
    ("GET", "/v1/index/stats"): Access(READ),
    ("GET", "/v1/info"): Access(READ),
    ("GET", "/healthz"): Access(PUBLIC),
    ("GET", "/readyz"): Access(PUBLIC),
    ("GET", "/metrics"): Access(PUBLIC),
    ("GET", "/v1/audio/{item_id:path}"): Access(READ),
    ("GET", "/openapi.json"): Access(PUBLIC),
    ("GET", "/docs"): Access(PUBLIC),
    ("GET", "/docs/assets/{name}"): Access(PUBLIC),
    ("GET", "/redoc"): Access(PUBLIC),
    ("GET", "/"): Access(PUBLIC),  # the web page holds no data: its calls carry the key typed into it
    ("GET", "/web/{name}"): Access(PUBLIC),
}

GRPC: dict[str, Access] = {
    "SearchText": Access(READ, "text"),
    "SearchAudio": Access(READ, "audio"),
    "SearchItem": Access(READ),
    "Tag": Access(READ, "audio"),
    "StreamTag": Access(READ),  # a long call: capped by limits.max_streams; each window is admitted on its own
    "Caption": Access(READ, "audio"),
    "EmbedAudio": Access(READ, "audio"),
    "EmbedText": Access(READ, "text"),
    "AddItem": Access(WRITE, "audio"),
    "GetItem": Access(READ),
    "DeleteItem": Access(WRITE),
    "StartRebuild": Access(WRITE),
    "GetRebuild": Access(READ),
    "CancelRebuild": Access(WRITE),
    "RollbackIndex": Access(WRITE),
    "Stats": Access(READ),
    "Info": Access(READ),
}

UNDECLARED = Access("undeclared")


def rest_access(method: str, path_template: str) -> Access:
    # HEAD is answered like GET (Starlette routes it there)
    return REST.get(("GET" if method == "HEAD" else method, path_template), UNDECLARED)


def grpc_access(method: str) -> Access:
    return GRPC.get(method, UNDECLARED)


def presented_key(headers_or_metadata) -> str:
    """The API key sent as `authorization: Bearer <key>` or `x-api-key: <key>` (HTTP headers or gRPC metadata)."""
    auth = headers_or_metadata.get("authorization", "")
    return auth[7:] if auth.lower().startswith("bearer ") else headers_or_metadata.get("x-api-key", "")


def authorize(access: Access, keys: dict[str, list[str]], key: str, what: str, read_only: bool = False) -> None:
    """Unauthorized (401) or Forbidden (403) unless `key` may make a call that needs `access`; on a `read_only`
    replica (settings.read_only) every call that needs the write scope is refused (403 read_only)."""
    if access is UNDECLARED:
        raise Forbidden(f"{what} is not open to clients")
    if access.scope != PUBLIC and keys:
        if key not in keys:
            raise Unauthorized(
                "send an API key as 'Authorization: Bearer <key>' or 'X-API-Key: <key>' "
                "(gRPC: metadata 'authorization' or 'x-api-key')"
            )
        if access.scope not in keys[key]:
            raise Forbidden(f"this key lacks the '{access.scope}' scope")
    if read_only and access.scope == WRITE:
        raise ReadOnly(
            "this replica is read-only (settings.read_only): send writes, rebuilds and rollbacks to the writer"
        )


def redact(key: str) -> str:
    """A key as it may appear in logs: a short digest, never any of its characters."""
    return "key:" + hashlib.sha256(key.encode("utf-8", "backslashreplace")).hexdigest()[:8]
