"""One exception for every failed call, with the same meaning on both transports."""

from __future__ import annotations

import json
from typing import Any

# The HTTP status the REST face answers for the failure a gRPC code stands for, where the server did not say (a
# proxy's answer, or a status the gateway's own errors table does not send).
GRPC_TO_HTTP = {
    "INVALID_ARGUMENT": 400,
    "OUT_OF_RANGE": 413,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "RESOURCE_EXHAUSTED": 429,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNKNOWN": 500,
    "FAILED_PRECONDITION": 400,
    "CANCELLED": 499,
    "ABORTED": 409,
    "DATA_LOSS": 500,
}
# The gRPC code for an HTTP status from something other than the gateway (a proxy in front of it).
HTTP_TO_GRPC = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                409: "ALREADY_EXISTS", 413: "OUT_OF_RANGE", 429: "RESOURCE_EXHAUSTED", 499: "CANCELLED",
                501: "UNIMPLEMENTED", 502: "UNAVAILABLE", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}  # fmt: skip
RETRYABLE = (429, 503)  # refused before any work was done: overloaded, or the model backend is down
# No answer, but nothing done either: the connection was reset while the request was still being sent.
RETRYABLE_REASONS = ("connection_reset",)


class ClientError(Exception):
    """An error answer from the gateway, or no answer at all. The same failure reads the same on both transports.

    status: the HTTP status the gateway answers (over gRPC too); 0 when no answer came
    code: the gRPC canonical status name ("NOT_FOUND", "INVALID_ARGUMENT", ...), the gateway's one code set
    reason: the finer name ("not_found", "bad_audio", "read_only", "overloaded", ...); with status 0, from the
          client itself: "unreachable" (UNAVAILABLE: no connection), "timeout" (DEADLINE_EXCEEDED: no answer in
          time), "connection_reset" (UNAVAILABLE: the server closed before reading the whole request, as a refusal
          under load can; retried like a 429), "unsupported" (UNIMPLEMENTED: a call the transport lacks)
    message: the server's explanation; details: the error's details (a dict, often empty)
    retry_after: seconds the server asked to wait (429 / RESOURCE_EXHAUSTED), or None
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: dict[str, Any] | None = None,
        retry_after: float | None = None,
        reason: str = "",
    ):
        super().__init__(f"{status} {code} ({reason}): {message}" if status else f"{code} ({reason}): {message}")
        self.status, self.code, self.message = status, code, message
        self.reason = reason or code.lower()
        self.details = details or {}
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        return self.status in RETRYABLE or (self.status == 0 and self.reason in RETRYABLE_REASONS)


def no_answer(reason: str, message: str) -> ClientError:
    """A failure without an answer from the gateway (status 0), with the gRPC code that stands for it."""
    code = {"timeout": "DEADLINE_EXCEEDED", "unsupported": "UNIMPLEMENTED"}.get(reason, "UNAVAILABLE")
    return ClientError(0, code, message, reason=reason)


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (the HTTP-date form is not used by the gateway and is ignored)."""
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def parse_details(value: str | None) -> dict[str, Any]:
    """`blat-error-details` trailing metadata (JSON), or {}."""
    try:
        details = json.loads(value) if value else {}
    except ValueError:
        return {}
    return details if isinstance(details, dict) else {}
