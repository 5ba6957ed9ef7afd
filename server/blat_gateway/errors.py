"""Error types of the gateway, the one table that maps them to HTTP statuses and gRPC codes, and the one place that
renders them for a face (`http_answer`, `grpc_answer`).

Services raise these; every refusal on the REST side (a route, the front door, the HTTP protocol guard) and every
gRPC abort renders through this module, so the two APIs answer the same failure in one vocabulary:

- `code`: the gRPC canonical status name ("NOT_FOUND", "INVALID_ARGUMENT", ...), the one code set of both faces;
- `http_status`: the HTTP status REST answers with (several can share a code: 400, 414 and 431 are all
  INVALID_ARGUMENT; 415 and 422 too, for audio);
- `reason`: the finer, stable name of the failure ("bad_audio", "read_only", "overloaded", ...);
- `message` for people, and `details` (a JSON object) where there are any.

REST sends {"error": {"code", "http_status", "reason", "message", "details"?}}; gRPC sends the status code and the
message, with `blat-error-reason`, `blat-http-status` and `blat-error-details` (JSON) as trailing metadata. An
overload's retry hint is the Retry-After header or `retry-after` trailing metadata.
"""

from __future__ import annotations

import json


class ServiceError(Exception):
    """Base class: `grpc_code` is the code both faces send, `code` the finer reason, the message is for people."""

    code = "internal"  # the reason
    http_status = 500
    grpc_code = "INTERNAL"  # a grpc.StatusCode member name (kept as text: this module does not import grpc)

    headers: tuple[tuple[bytes, bytes], ...] = ()  # REST only: headers the answer carries (Allow on a 405)

    def __init__(self, message: str, **details):
        # Messages quote client input: a lone surrogate in it could not be sent as UTF-8 (JSON body, gRPC details).
        message = message.encode("utf-8", "backslashreplace").decode("utf-8")
        super().__init__(message)
        self.message = message
        self.details = details

    def to_json(self) -> dict:
        error = {"code": self.grpc_code, "http_status": self.http_status, "reason": self.code, "message": self.message}
        return {"error": {**error, **({"details": self.details} if self.details else {})}}


def http_answer(e: ServiceError, close: bool = False) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """(status, headers, body) of the REST answer to `e`. `close`: the connection ends after it (also for 408 and
    413, where the rest of the body was not read and the connection cannot go on)."""
    body = json.dumps(e.to_json()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if isinstance(e, Overloaded):
        headers.append((b"retry-after", str(max(1, round(e.retry_after_s))).encode()))
    if close or e.http_status in (408, 413):
        headers.append((b"connection", b"close"))
    return e.http_status, headers + list(e.headers), body


def grpc_answer(e: ServiceError) -> tuple[str, str, tuple[tuple[str, str], ...]]:
    """(status code name, details, trailing metadata) of the gRPC answer to `e`."""
    trailing = [("blat-error-reason", e.code), ("blat-http-status", str(e.http_status))]
    if e.details:
        trailing.append(("blat-error-details", json.dumps(e.details, default=str)))  # ASCII: metadata must be
    if isinstance(e, Overloaded):
        trailing.append(("retry-after", str(max(1, round(e.retry_after_s)))))
    return e.grpc_code, e.message, tuple(trailing)


class BadRequest(ServiceError):
    code, http_status, grpc_code = "bad_request", 400, "INVALID_ARGUMENT"


class BadAudio(BadRequest):
    """The upload is not decodable audio, or its content is unusable (NaN samples, zero length...)."""

    code, http_status = "bad_audio", 422


class UnsupportedFormat(BadAudio):
    code, http_status = "unsupported_format", 415


class TooLarge(ServiceError):
    """An upload, a clip's duration or a text exceeds a stated limit."""

    code, http_status, grpc_code = "too_large", 413, "OUT_OF_RANGE"


class RequestTimeout(ServiceError):
    """The client stopped sending its request (a stalled body)."""

    code, http_status, grpc_code = "request_timeout", 408, "DEADLINE_EXCEEDED"


class Unauthorized(ServiceError):
    code, http_status, grpc_code = "unauthorized", 401, "UNAUTHENTICATED"


class Forbidden(ServiceError):
    """A valid key without the needed scope, or a path outside the configured roots."""

    code, http_status, grpc_code = "forbidden", 403, "PERMISSION_DENIED"


class ReadOnly(Forbidden):
    """A write to a replica configured `read_only`: writes go to the writer."""

    code = "read_only"


class ForeignOrigin(Forbidden):
    """A state-changing request from a web page of another origin (the browser's Origin header): browser.cors_origins
    names the pages that may call."""

    code = "forbidden_origin"


class MisdirectedRequest(ServiceError):
    """A Host header this gateway does not answer to (a DNS name rebound to its address): browser.allowed_hosts."""

    code, http_status, grpc_code = "misdirected_request", 421, "PERMISSION_DENIED"


class NotFound(ServiceError):
    code, http_status, grpc_code = "not_found", 404, "NOT_FOUND"


class MethodNotAllowed(ServiceError):
    """A REST path that exists, called with a method it does not take (the answer's Allow header lists those)."""

    code, http_status, grpc_code = "method_not_allowed", 405, "UNIMPLEMENTED"


class UriTooLong(ServiceError):
    code, http_status, grpc_code = "uri_too_long", 414, "INVALID_ARGUMENT"


class HeadersTooLarge(ServiceError):
    code, http_status, grpc_code = "headers_too_large", 431, "INVALID_ARGUMENT"


class Conflict(ServiceError):
    """For example, the same audio content already stored under another id."""

    code, http_status, grpc_code = "conflict", 409, "ALREADY_EXISTS"


class Overloaded(ServiceError):
    code, http_status, grpc_code = "overloaded", 429, "RESOURCE_EXHAUSTED"

    def __init__(self, message: str, retry_after_s: float = 1.0, **details):
        super().__init__(message, **details)
        self.retry_after_s = retry_after_s


class BackendDown(ServiceError):
    code, http_status, grpc_code = "backend_unavailable", 503, "UNAVAILABLE"


class DeadlineExceeded(ServiceError):
    code, http_status, grpc_code = "deadline_exceeded", 504, "DEADLINE_EXCEEDED"


class BackendError(ServiceError):
    """The model backend answered with an error for a well-formed request (a bundle/backend mismatch, a crash)."""

    code, http_status, grpc_code = "backend_error", 502, "INTERNAL"


class IndexDamaged(ServiceError):
    """A stored index version fails its integrity check at open (a damaged items.sqlite): nothing is served from it.
    The message names the file and the way back (an offline rollback, or a rebuild)."""

    code, http_status, grpc_code = "index_damaged", 500, "DATA_LOSS"


def unexpected(e: Exception, log, where: str) -> ServiceError:
    """What a face answers for an exception that is not a ServiceError: a model wait past the request's deadline is
    DeadlineExceeded (504); anything else is logged with its traceback here and answered as an internal error."""
    if isinstance(e, TimeoutError):
        return DeadlineExceeded("the request's deadline passed while its work was running")
    log.error("unhandled error in %s", where, exc_info=e)
    return ServiceError("internal error (the gateway's log has the details)")


def field_problems(errors) -> str:
    """pydantic's validation errors as one line: "loc.path: message; ..." (REST bodies, the WebSocket's config)."""
    return "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg', '')}" for e in errors)
