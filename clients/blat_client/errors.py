"""One exception for every failed call, with the same meaning on both transports."""

from __future__ import annotations

# The HTTP status the REST face answers for the failure a gRPC code stands for (the server's errors table, inverted).
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
RETRYABLE = (429, 503)  # refused before any work was done: overloaded, or the model backend is down
# No answer, but nothing done either: the connection was reset while the request was still being sent.
RETRYABLE_CODES = ("connection_reset",)


class ClientError(Exception):
    """An error answer from the gateway, or no answer at all.

    status: HTTP status; over gRPC, the status REST answers for the same failure; 0 when no answer came
    code: REST's error code ("bad_audio", "not_found", ...) or the gRPC status name ("NOT_FOUND", ...);
          with status 0: "unreachable" (no connection), "timeout" (no answer in time), "connection_reset" (the
          server closed before reading the whole request, as a refusal under load can: retried like a 429),
          "unsupported" (a call the transport lacks)
    message: the server's explanation; details: REST's error details
    retry_after: seconds the server asked to wait (429 / RESOURCE_EXHAUSTED), or None
    """

    def __init__(
        self, status: int, code: str, message: str, details: dict | None = None, retry_after: float | None = None
    ):
        super().__init__(f"{status} {code}: {message}" if status else f"{code}: {message}")
        self.status, self.code, self.message = status, code, message
        self.details = details or {}
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        return self.status in RETRYABLE or (self.status == 0 and self.code in RETRYABLE_CODES)


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (the HTTP-date form is not used by the gateway and is ignored)."""
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None
