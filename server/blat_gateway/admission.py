"""Admission control: a bounded gate per model input type, and the request's deadline.

Every call that runs a model passes its input type's gate ("audio" or "text", as each endpoint declares it in
server/blat_gateway/api/) before any work is done for it, body reading and decoding included. A full gate answers
Overloaded (429 / RESOURCE_EXHAUSTED, with Retry-After) at once, so a flood is shed in microseconds instead of
queueing in thread pools past its deadline. Admission stamps the request's deadline; work that is still waiting
when it passes is dropped (504), never run.

The deadline travels in a context variable: set by the face (REST middleware, gRPC interceptor) in the request's
context, it follows the call into the thread pool (anyio copies the context) and is read by `remaining()`.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import time
from collections.abc import Iterator

from blat_gateway.errors import DeadlineExceeded, Overloaded

# Threads the faces' pools keep beyond what the gates admit: item reads, stats, health checks and refusals never
# wait behind admitted work.
THREADS_WITHOUT_MODEL = 32
_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("blat_deadline", default=None)


class Gate:
    """At most `capacity` requests admitted at once (running or waiting for a model); the rest are refused."""

    def __init__(self, name: str, capacity: int, retry_after_s: float = 1.0):
        if capacity < 1:
            raise ValueError(f"gate {name}: capacity must be >= 1")
        self.name, self.capacity, self.retry_after_s = name, capacity, retry_after_s
        self._held = 0
        self._lock = threading.Lock()
        self.refused = 0  # requests shed since start (for /metrics)

    @property
    def held(self) -> int:
        return self._held

    def try_enter(self) -> None:
        with self._lock:
            if self._held >= self.capacity:
                self.refused += 1
                raise Overloaded(
                    f"{self.name} models: {self.capacity} requests already admitted; retry shortly",
                    retry_after_s=self.retry_after_s,
                )
            self._held += 1

    def leave(self) -> None:
        with self._lock:
            self._held -= 1

    @contextlib.contextmanager
    def admitted(self) -> Iterator[None]:
        self.try_enter()
        try:
            yield
        finally:
            self.leave()


def set_deadline(timeout_s: float) -> contextvars.Token:
    """Start the current request's clock: it must be answered within `timeout_s` from now."""
    return _deadline.set(time.monotonic() + timeout_s)


def reset_deadline(token: contextvars.Token) -> None:
    _deadline.reset(token)


def remaining(default_s: float) -> float:
    """Seconds left before the current request's deadline (`default_s` outside any request); DeadlineExceeded when
    none are left."""
    deadline = _deadline.get()
    if deadline is None:
        return default_s
    left = deadline - time.monotonic()
    if left <= 0:
        raise DeadlineExceeded("the request's deadline passed before its model call")
    return left
