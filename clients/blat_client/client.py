"""The facade: `Client` (blocking) and `AsyncClient` (asyncio), over REST or gRPC, chosen by the target:

    Client("http://127.0.0.1:8080")   # REST
    Client("grpc://127.0.0.1:50051")  # gRPC ("host:port" alone also means gRPC)

Every method is written once, in `_Api`: it asks the transport to describe the call and hands that to `_send`,
which `Client` runs at once and `AsyncClient` returns as a coroutine. Both retry what the server refused before
doing any work (429 overloaded, 503 backend down) with exponential backoff, waiting at least what Retry-After
asks, and give every call a timeout.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from blat_client.audio import Audio
from blat_client.errors import ClientError
from blat_client.filters import Filter
from blat_client.grpc_transport import GrpcTransport
from blat_client.rest import RestTransport
from blat_client.types import AddReport, Caption, Info, Item, ItemsPage, Job, SearchResult, Stats, Tags, TagWindow

DEFAULT_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Retry:
    """Attempts after the first, and the backoff between them: base_s * 2**n (with jitter), capped at max_s, but never
    less than the server's Retry-After."""

    attempts: int = 3
    base_s: float = 0.25
    max_s: float = 10.0

    def delay(self, attempt: int, error: ClientError) -> float:
        backoff = min(self.max_s, self.base_s * 2**attempt) * random.uniform(0.5, 1.0)
        return max(backoff, min(self.max_s, error.retry_after or 0.0))


NO_RETRY = Retry(attempts=0)


def make_transport(target: str, api_key: str | None, timeout: float) -> RestTransport | GrpcTransport:
    if target.startswith(("http://", "https://")):
        return RestTransport(target, api_key, timeout)
    if target.startswith("grpc://"):
        return GrpcTransport(target.removeprefix("grpc://"), api_key, timeout)
    if "://" in target:
        raise ValueError(f"unknown scheme in {target!r}: use http(s)://host:port (REST) or grpc://host:port (gRPC)")
    raise ValueError(f"{target!r} has no scheme: say which API, http://{target} (REST) or grpc://{target} (gRPC)")


class _Api:
    def __init__(
        self, target: str, api_key: str | None = None, timeout: float = DEFAULT_TIMEOUT_S, retry: Retry = Retry()
    ):
        self.target, self.retry = target, retry
        self.transport = make_transport(target, api_key, timeout)

    def _send(self, call):
        raise NotImplementedError

    @property
    def transport_name(self) -> str:
        return self.transport.name

    # -- search ----------------------------------------------------------------------------------------------------
    def search_text(self, query: str, k: int = 10, filter: Filter | None = None, offset: int = 0) -> SearchResult:
        """Stored items whose audio matches a text query, best first; `offset` skips that many (page 2: offset=k)."""
        return self._send(self.transport.search_text(query, k, filter, offset))

    def search_texts(
        self, queries: Sequence[str], k: int = 10, filter: Filter | None = None, offset: int = 0
    ) -> list[SearchResult]:
        """Several text queries in one call (at most the server's limits.max_texts), one result per query."""
        return self._send(self.transport.search_texts(list(queries), k, filter, offset))

    def search_audio(self, audio: Audio, k: int = 10, filter: Filter | None = None, offset: int = 0) -> SearchResult:
        """Stored items that sound like `audio` (file bytes or a path)."""
        return self._send(self.transport.search_audio(audio, k, filter, offset))

    def search_item(self, item_id: str, k: int = 10, filter: Filter | None = None, offset: int = 0) -> SearchResult:
        """Neighbours of a stored item, by its stored embedding."""
        return self._send(self.transport.search_item(item_id, k, filter, offset))

    # -- models ----------------------------------------------------------------------------------------------------
    def tag(
        self, audio: Audio, labels: Sequence[str] = (), top_k: int = 10, window_s: float = 0.0, hop_s: float = 0.0
    ) -> Tags:
        """Zero-shot tags over the 527 AudioSet labels (or `labels`); window_s > 0 adds tags per window."""
        return self._send(self.transport.tag(audio, labels, top_k, window_s, hop_s))

    def caption(self, audio: Audio, tags: Sequence[str] = (), n_best: int = 1, beam_size: int = 0) -> list[Caption]:
        """Captions, best first, optionally guided by AudioSet tags (display names)."""
        return self._send(self.transport.caption(audio, tags, n_best, beam_size))

    def embed_audio(self, audio: Audio) -> list[float]:
        return self._send(self.transport.embed_audio(audio))

    def embed_text(self, texts: Sequence[str] | str) -> list[list[float]]:
        return self._send(self.transport.embed_text([texts] if isinstance(texts, str) else list(texts)))

    # -- items -----------------------------------------------------------------------------------------------------
    def add_item(
        self,
        item_id: str,
        audio: Audio | None = None,
        *,
        path: str | None = None,
        tags: Sequence[str] = (),
        caption: str = "",
        source_uri: str = "",
        upsert: bool = False,
    ) -> Item:
        """Store a clip under `item_id`: uploaded `audio`, or a server-side `path` under the server's ingest roots.
        Durable once this returns."""
        if (audio is None) == (path is None):
            raise ValueError("give exactly one of: audio, path")
        return self._send(self.transport.add_item(item_id, audio, path, tags, caption, source_uri, upsert))

    def get_item(self, item_id: str) -> Item:
        return self._send(self.transport.get_item(item_id))

    def list_items(self, filter: Filter | None = None, limit: int = 100, cursor: str = "") -> ItemsPage:
        """One page of stored items in id order, filtered like a search; pass `next_cursor` back for the next
        (`Client.iter_items` walks every page)."""
        return self._send(self.transport.list_items(filter, limit, cursor))

    def delete_item(self, item_id: str) -> Item:
        """Delete a stored item; returns what was deleted."""
        return self._send(self.transport.delete_item(item_id))

    # -- index -----------------------------------------------------------------------------------------------------
    def start_rebuild(
        self,
        folder: str | None = None,
        manifest: str | None = None,
        embeddings: str | None = None,
        *,
        mode: str,
    ) -> Job:
        """Rebuild the index in the background from a server-side folder or JSON Lines manifest of audio, or from
        a finished embedding job's folder (precomputed embeddings). `mode` is required: "replace" (the new index
        holds only these items) or "merge" (they are added to the stored ones; an id in both takes the new one)."""
        if sum(x is not None for x in (folder, manifest, embeddings)) != 1:
            raise ValueError("give exactly one of: folder, manifest, embeddings")
        return self._send(self.transport.start_rebuild(folder, manifest, embeddings, mode))

    def rebuild_status(self, job_id: str) -> Job:
        return self._send(self.transport.rebuild_status(job_id))

    def cancel_rebuild(self, job_id: str) -> Job:
        return self._send(self.transport.cancel_rebuild(job_id))

    def rollback(self) -> Stats:
        """Make the previous index version live again."""
        return self._send(self.transport.rollback())

    def stats(self) -> Stats:
        return self._send(self.transport.stats())

    def info(self) -> Info:
        return self._send(self.transport.info())

    def _streaming(self) -> GrpcTransport:
        if not isinstance(self.transport, GrpcTransport):
            raise ClientError(0, "unsupported", "streaming tags need the gRPC transport (grpc://host:port)")
        return self.transport


class Client(_Api):
    """Blocking client; thread-safe (one connection pool or channel shared by all threads)."""

    def _send(self, call):
        for attempt in range(self.retry.attempts + 1):
            try:
                return self.transport.send(call)
            except ClientError as e:
                if not (e.retryable and attempt < self.retry.attempts):
                    raise
                time.sleep(self.retry.delay(attempt, e))

    def add_items(
        self,
        items: Iterable[Mapping[str, Any]],
        *,
        concurrency: int = 4,
        upsert: bool = False,
        progress: Callable[[int, AddReport], None] | None = None,
    ) -> AddReport:
        """Store many items, `concurrency` requests at a time. Each item is a mapping with "id" and "audio" (what
        `add_item` takes) or "path" (server-side), and optionally "tags", "caption", "source_uri". An item already
        stored (409: the id, or its sound under another id) is skipped, so a rerun of the same list resumes; other
        refusals are collected in `failed` with their reason, and an unreachable server stops the run
        (ClientError). `progress(done, report)` is called after each item. One request per item: each is durable
        when it is counted as added."""
        added: list[str] = []
        skipped: list[str] = []
        failed: list[dict[str, str]] = []
        report = AddReport(added, skipped, failed)

        def one(entry: Mapping[str, Any]) -> tuple[str, str, str]:
            item_id = str(entry.get("id", ""))
            try:
                self.add_item(
                    item_id,
                    entry.get("audio"),
                    path=entry.get("path"),
                    tags=entry.get("tags", ()),
                    caption=entry.get("caption", ""),
                    source_uri=entry.get("source_uri", ""),
                    upsert=upsert,
                )
                return "added", item_id, ""
            except ClientError as e:
                if e.status == 409:  # stored already (this id, or this sound under another id): a rerun resumes
                    return "skipped", item_id, e.message
                if e.status == 0:
                    raise
                return "failed", item_id, f"{e.status} {e.code}: {e.message}"
            except (OSError, ValueError, TypeError) as e:  # an unreadable local file, a malformed entry
                return "failed", item_id, str(e)

        with ThreadPoolExecutor(max(1, concurrency)) as pool:
            for done, (outcome, item_id, why) in enumerate(pool.map(one, items), 1):
                if outcome == "added":
                    added.append(item_id)
                elif outcome == "skipped":
                    skipped.append(item_id)
                else:
                    failed.append({"id": item_id, "reason": why})
                if progress:
                    progress(done, report)
        return report

    def iter_items(self, filter: Filter | None = None, page_size: int = 100) -> Iterator[Item]:
        """Every stored item that passes `filter`, in id order, fetched a page at a time."""
        cursor = ""
        while True:
            page = self.list_items(filter, page_size, cursor)
            yield from page.items
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    def wait_rebuild(self, job_id: str, poll_s: float = 0.5, on_progress=None) -> Job:
        """Poll a rebuild until it ends; `on_progress(job)` sees every poll."""
        while True:
            job = self.rebuild_status(job_id)
            if on_progress:
                on_progress(job)
            if job.finished:
                return job
            time.sleep(poll_s)

    def stream_tag(
        self,
        chunks: Iterable[bytes],
        sample_rate: int,
        encoding: str = "s16le",
        window_s: float = 0.0,
        hop_s: float = 0.0,
        top_k: int = 0,
        labels: Sequence[str] = (),
        timeout: float | None = None,
    ) -> Iterator[TagWindow]:
        """Raw mono PCM chunks (`encoding` "s16le" or "f32le" at `sample_rate`) in, one TagWindow out per hop, as
        soon as each window fills. gRPC only; `blat_client.wav_chunks(path)` reads a WAV file into chunks."""
        return self._streaming().stream_tag(chunks, sample_rate, encoding, window_s, hop_s, top_k, labels, timeout)

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncClient(_Api):
    """asyncio client: every method of `Client`, awaited (`await c.search_text("rain")`)."""

    async def _send(self, call) -> Any:
        for attempt in range(self.retry.attempts + 1):
            try:
                return await self.transport.asend(call)
            except ClientError as e:
                if not (e.retryable and attempt < self.retry.attempts):
                    raise
                await asyncio.sleep(self.retry.delay(attempt, e))

    async def iter_items(self, filter: Filter | None = None, page_size: int = 100) -> AsyncIterator[Item]:
        """`async for item in c.iter_items()`: every stored item that passes `filter`, a page at a time."""
        cursor = ""
        while True:
            page = await self.list_items(filter, page_size, cursor)
            for it in page.items:
                yield it
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    async def wait_rebuild(self, job_id: str, poll_s: float = 0.5, on_progress=None) -> Job:
        while True:
            job = await self.rebuild_status(job_id)
            if on_progress:
                on_progress(job)
            if job.finished:
                return job
            await asyncio.sleep(poll_s)

    def stream_tag(
        self,
        chunks,
        sample_rate: int,
        encoding: str = "s16le",
        window_s: float = 0.0,
        hop_s: float = 0.0,
        top_k: int = 0,
        labels: Sequence[str] = (),
        timeout: float | None = None,
    ) -> AsyncIterator[TagWindow]:
        """`async for window in c.stream_tag(chunks, rate)`; `chunks` may be an iterable or an async iterable."""
        return self._streaming().astream_tag(chunks, sample_rate, encoding, window_s, hop_s, top_k, labels, timeout)

    async def close(self) -> None:
        await self.transport.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
