"""Error types of the gateway and the one table that maps them to HTTP statuses and gRPC codes.

Services raise these; the REST and gRPC faces translate them with `http_status` / `grpc_code`, so the
two APIs answer the same failure the same way.
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base class: `code` is a stable machine-readable name, the message is for people."""

    code = "internal"
    http_status = 500
    grpc_code = "INTERNAL"  # a grpc.StatusCode member name (kept as text: this module does not import grpc)

    def __init__(self, message: str, **details):
        # Messages quote client input: a lone surrogate in it could not be sent as UTF-8 (JSON body, gRPC details).
        message = message.encode("utf-8", "backslashreplace").decode("utf-8")
        super().__init__(message)
        self.message = message
        self.details = details

    def to_json(self) -> dict:
        return {
            "error": {"code": self.code, "message": self.message, **({"details": self.details} if self.details else {})}
        }


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
