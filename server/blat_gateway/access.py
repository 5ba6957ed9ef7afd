"""Who may call what: the API key a call presents, checked against the scope its endpoint declares
(server/blat_gateway/endpoint.py), on both faces; and how a key may appear in logs.
"""

from __future__ import annotations

import base64
import hashlib

from blat_gateway.endpoint import PUBLIC, UNDECLARED, WRITE, Endpoint
from blat_gateway.errors import Forbidden, ReadOnly, Unauthorized


def presented_key(headers_or_metadata) -> str:
    """The API key sent as `authorization: Bearer <key>` or `x-api-key: <key>` (HTTP headers or gRPC metadata), or,
    from a browser's WebSocket (which cannot set headers), as the offered subprotocol `bearer.<base64url(key)>`."""
    auth = headers_or_metadata.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:]
    return headers_or_metadata.get("x-api-key", "") or _subprotocol_key(headers_or_metadata)


def _subprotocol_key(headers) -> str:
    for offered in headers.get("sec-websocket-protocol", "").split(","):
        name, _, encoded = offered.strip().partition(".")
        if name == "bearer" and encoded:
            try:
                return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
            except (ValueError, UnicodeDecodeError):
                return "\x00undecodable"  # no configured key: refused as an unknown one
    return ""


def authorize(access: Endpoint, keys: dict[str, list[str]], key: str, what: str, read_only: bool = False) -> None:
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
