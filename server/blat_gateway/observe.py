"""What operators see: per request, a request id (taken from `x-request-id` when the caller sends a usable one,
made here otherwise; echoed on the answer, REST header or gRPC initial metadata, and carried by every log line
written while the request runs) and one access line (logger `blat_gateway.access`); and nothing but JSON lines on
stderr, native libraries' own messages included (`capture_native_stderr`)."""

from __future__ import annotations

import contextvars
import logging
import os
import re
import sys
import threading
import uuid

from blat_gateway.access import presented_key, redact

HEADER = "x-request-id"
USABLE = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")  # what a proxy or tracer sends; anything else is replaced
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
access = logging.getLogger("blat_gateway.access")


def choose_request_id(given: str | None) -> str:
    return given if given and USABLE.fullmatch(given) else uuid.uuid4().hex


class RequestIdFilter(logging.Filter):
    """Adds the running request's id to every record written in its context (pool threads included: the faces run
    handlers in copies of the request's context)."""

    def filter(self, record: logging.LogRecord) -> bool:
        rid = request_id.get()
        if rid and not hasattr(record, "request_id"):
            record.request_id = rid
        return True


def install_request_ids() -> None:
    """Put the filter on the root logger's handlers (the JSON handler of blat_contract.logs.setup_logging)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RequestIdFilter) for f in handler.filters):
            handler.addFilter(RequestIdFilter())


def log_access(**fields) -> None:
    """The access line of one request (callers check settings.access_log first: the fields cost work)."""
    access.info("request", extra=fields)


def key_digest(headers_or_metadata) -> str:
    """The presented API key as a digest (access.redact), "" without one: which key called, never the key."""
    key = presented_key(headers_or_metadata)
    return redact(key) if key else ""


def capture_native_stderr() -> None:
    """Native libraries (libsndfile's mpg123 prints "Note: Trying to resync..." on bad MP3s) write to file
    descriptor 2 directly. Point fd 2 at a pipe whose lines are logged as JSON (logger `blat_gateway.native`), and
    Python's own stderr (the JSON handler, tracebacks) at a copy of the real one. Call before setup_logging."""
    real = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="backslashreplace")
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    sys.stderr = real
    native = logging.getLogger("blat_gateway.native")

    def pump() -> None:  # never stops reading: a full pipe would block the library that writes to it
        with os.fdopen(read_end, "r", encoding="utf-8", errors="backslashreplace") as lines:
            for line in lines:
                try:
                    if line.strip():
                        native.warning(line.rstrip()[:2000])
                except Exception:
                    pass

    threading.Thread(target=pump, name="native-stderr", daemon=True).start()
