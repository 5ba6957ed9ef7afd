"""Micro-batching: concurrent requests for one model merge into a single call, up to a size or a wait.

One worker thread per batcher takes the first queued request and everything queued behind it (up to `max_batch`),
and runs them together. The wait adapts to the load: a request that finds the queue empty runs at once, since the
model is idle and waiting would only add latency (the requests that arrive while it runs form the next batch); a
request with others queued behind it waits at most `max_wait_s` for the batch to fill. The queue is bounded: a full
queue answers `Overloaded` at once (HTTP 429 with Retry-After) instead of letting latency grow without limit. A job
past its deadline is dropped (DeadlineExceeded), never run. A batch that fails is retried one item at a time, so one
bad item fails alone and its batch-mates still get their results.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from blat_gateway.errors import BackendDown, BadRequest, DeadlineExceeded, Overloaded, ServiceError

T = TypeVar("T")
R = TypeVar("R")
log = logging.getLogger(__name__)
# Failures that say nothing about the items: retrying them one at a time would only repeat the failure.
WHOLE_BATCH_ERRORS = (BackendDown, DeadlineExceeded, Overloaded)


@dataclass
class _Job(Generic[T]):
    item: T
    deadline: float  # time.monotonic() after which the result is useless
    future: Future = field(default_factory=Future)


class MicroBatcher(Generic[T, R]):
    def __init__(
        self,
        name: str,
        run_batch: Callable[[Sequence[T]], Sequence[R]],
        max_batch: int = 16,
        max_wait_s: float = 0.005,
        max_queue: int = 64,
        on_batch: Callable[[str, int], None] | None = None,
        on_idle: Callable[[], None] | None = None,
    ):
        self.name, self.run_batch = name, run_batch
        self.max_batch, self.max_wait_s = max_batch, max_wait_s
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=max_queue)
        self._on_batch, self._on_idle = on_batch, on_idle  # on_idle: after a batch that leaves the queue empty
        self._thread = threading.Thread(target=self._loop, name=f"batcher-{name}", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def submit_future(self, item: T, timeout_s: float) -> Future:
        job = _Job(item, time.monotonic() + timeout_s)
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise Overloaded(
                f"{self.name}: {self._queue.maxsize} requests already queued; retry shortly",
                retry_after_s=max(1.0, self.max_wait_s * 10),
            ) from None
        return job.future

    def submit(self, item: T, timeout_s: float) -> R:
        """Blocking: the result for `item`, or DeadlineExceeded after `timeout_s`."""
        fut = self.submit_future(item, timeout_s)
        try:
            return fut.result(timeout=timeout_s)
        except TimeoutError:
            fut.cancel()
            raise DeadlineExceeded(f"{self.name}: no result within {timeout_s:g} s") from None

    async def submit_async(self, item: T, timeout_s: float) -> R:
        fut = asyncio.wrap_future(self.submit_future(item, timeout_s))
        try:
            return await asyncio.wait_for(fut, timeout_s)
        except TimeoutError:
            raise DeadlineExceeded(f"{self.name}: no result within {timeout_s:g} s") from None

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)

    def _collect(self) -> list[_Job] | None:
        first = self._queue.get()
        if first is None:
            return None
        jobs = [first]
        if self._queue.empty():  # no load: run now
            return jobs
        until = time.monotonic() + self.max_wait_s
        while len(jobs) < self.max_batch:
            left = until - time.monotonic()
            try:
                job = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                self._queue.put(None)  # keep the stop signal for the outer loop
                break
            jobs.append(job)
        return jobs

    def _loop(self) -> None:
        while (jobs := self._collect()) is not None:
            now = time.monotonic()
            live = []
            for job in jobs:
                if job.future.cancelled():
                    continue
                if job.deadline < now:
                    job.future.set_exception(DeadlineExceeded(f"{self.name}: waited past the deadline in the queue"))
                else:
                    live.append(job)
            if not live:
                continue
            if self._on_batch:
                self._on_batch(self.name, len(live))
            self._run(live)
            if self._on_idle and self._queue.empty():
                self._on_idle()

    def _run(self, live: list[_Job]) -> None:
        try:
            results = self.run_batch([j.item for j in live])
        except Exception as e:
            if len(live) > 1 and not isinstance(e, WHOLE_BATCH_ERRORS):
                self._run_alone(live, e)
                return
            if not isinstance(e, ServiceError):
                log.exception("batch failed", extra={"batcher": self.name, "size": len(live)})
            for job in live:
                if not job.future.done():
                    job.future.set_exception(e)
            return
        for job, res in zip(live, results):
            if not job.future.done():
                job.future.set_result(res)

    def _run_alone(self, live: list[_Job], batch_error: Exception) -> None:
        """A batch failed: run its items one at a time, so only the item that causes the failure fails. An item that
        fails alone while others succeed is the input's fault (400 unless the error says otherwise)."""
        log.warning(
            "batch failed; retrying its items one at a time",
            extra={"batcher": self.name, "size": len(live), "error": repr(batch_error)[:300]},
        )
        outcomes: list[tuple[_Job, object, Exception | None]] = []
        for job in live:
            if job.future.done():
                continue
            if job.deadline < time.monotonic():
                outcomes.append((job, None, DeadlineExceeded(f"{self.name}: past the deadline before its retry")))
                continue
            try:
                outcomes.append((job, self.run_batch([job.item])[0], None))
            except Exception as e:
                outcomes.append((job, None, e))
        some_ok = any(err is None for _, _, err in outcomes)
        for job, result, err in outcomes:
            if err is None:
                job.future.set_result(result)
            elif isinstance(err, ServiceError):
                job.future.set_exception(err)
            elif some_ok:
                job.future.set_exception(
                    BadRequest(f"{self.name}: this input could not be processed ({type(err).__name__}: {err})")
                )
            else:
                log.error("item failed alone", extra={"batcher": self.name, "error": repr(err)[:300]})
                job.future.set_exception(err)
