"""The facade: `Client` (blocking) and `AsyncClient` (asyncio), over REST or gRPC, chosen by the target:

    Client("http://127.0.0.1:8080")   # REST
    Client("grpc://127.0.0.1:50051")  # gRPC ("host:port" alone also means gRPC)

Every operation is written once, in `_Api`: a method that asks the transport to describe the call and returns that
description typed by its answer (`_Call[SearchResult]`). `@_operation` turns it into each client's method: on a
`Client` it sends the call and returns the answer; on an `AsyncClient` it is a coroutine method (`await
c.search_text(...)`), and type checkers see it as one. Both retry what the server refused before doing any work
(429 overloaded, 503 backend down) with exponential backoff, waiting at least what Retry-After asks, and give every
call a timeout.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import random
import time
import types
from collections.abc import AsyncIterable, AsyncIterator, Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar, cast, overload

from blat_client.audio import Audio, read_audio
from blat_client.errors import ClientError, no_answer
from blat_client.filters import Filter
from blat_client.grpc_transport import GrpcTransport
from blat_client.rest import RestTransport
from blat_client.types import (
    AddReport,
    Caption,
    Info,
    Item,
    ItemResult,
    ItemsPage,
    Job,
    SearchResult,
    Stats,
    Tags,
    TagWindow,
)

DEFAULT_TIMEOUT_S = 60.0
P = ParamSpec("P")
T = TypeVar("T")
M = TypeVar("M", bound=Callable[..., Any])


@dataclass(frozen=True)
class Retry:
    """Attempts after the first, and the backoff between them: base_s * 2**n (with jitter), capped at max_s, but never
    less than the server's Retry-After."""

    attempts: int = 3
    base_s: float = 0.25
    max_s: float = 10.0

    def delay(self, attempt: int, error: ClientError) -> float:
        backoff = min(self.max_s, self.base_s * 2.0**attempt) * random.uniform(0.5, 1.0)
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


class _Call(Generic[T]):
    """One call as the transport described it (a RestCall or GrpcCall: the transport that built it sends it), with
    the type of its answer. The transports' parsers are untyped; each operation states what its call answers."""

    __slots__ = ("wire",)

    def __init__(self, wire: Any) -> None:
        self.wire = wire


def _like(method: M, build: Callable[..., _Call[Any]]) -> M:
    """`method` as help() and run-time introspection show it: `build`'s name, docstring and parameters, returning
    the answer's type (annotations are strings here: "_Call[Tags]" becomes "Tags")."""
    functools.update_wrapper(method, build)
    signature = inspect.signature(build)
    answer = str(signature.return_annotation).removeprefix("_Call[").removesuffix("]")
    method.__signature__ = signature.replace(return_annotation=answer)  # type: ignore[attr-defined]
    return method


class _operation(Generic[P, T]):
    """An operation written once, as an `_Api` method returning its `_Call[T]`. Read from a `Client` it is a method
    returning T; from an `AsyncClient`, a coroutine method returning T. Name, docstring and parameters are the
    method's, for help() and editors alike."""

    def __init__(self, build: Callable[Concatenate[_Api, P], _Call[T]]) -> None:
        def blocking(client: Client, /, *args: P.args, **kwargs: P.kwargs) -> T:
            return client._send(build(client, *args, **kwargs))

        async def awaited(client: AsyncClient, /, *args: P.args, **kwargs: P.kwargs) -> T:
            return await client._send(build(client, *args, **kwargs))

        self.__doc__, self.blocking, self.awaited = build.__doc__, _like(blocking, build), _like(awaited, build)

    @overload
    def __get__(self, client: None, owner: type[Client]) -> Callable[Concatenate[Client, P], T]: ...
    @overload
    def __get__(
        self, client: None, owner: type[AsyncClient]
    ) -> Callable[Concatenate[AsyncClient, P], Coroutine[Any, Any, T]]: ...
    @overload
    def __get__(self, client: Client, owner: type[Any] | None = None) -> Callable[P, T]: ...
    @overload
    def __get__(self, client: AsyncClient, owner: type[Any] | None = None) -> Callable[P, Coroutine[Any, Any, T]]: ...
    def __get__(self, client: _Api | None, owner: type[Any] | None = None) -> Any:
        cls = owner if client is None else type(client)
        method = self.awaited if cls is not None and issubclass(cls, AsyncClient) else self.blocking
        return method if client is None else types.MethodType(method, client)


class _Api:
    def __init__(
        self, target: str, api_key: str | None = None, timeout: float = DEFAULT_TIMEOUT_S, retry: Retry = Retry()
    ) -> None:
        self.target, self.retry = target, retry
        self.transport = make_transport(target, api_key, timeout)

    @property
    def transport_name(self) -> str:
        return self.transport.name

    # -- search ----------------------------------------------------------------------------------------------------
    @_operation
    def search_text(
        self, query: str, k: int = 10, filter: Filter | None = None, offset: int = 0
    ) -> _Call[SearchResult]:
        """Stored items whose audio matches a text query, best first; `offset` skips that many (page 2: offset=k)."""
        return _Call(self.transport.search_text(query, k, filter, offset))

    @_operation
    def search_texts(
        self, queries: Sequence[str], k: int = 10, filter: Filter | None = None, offset: int = 0
    ) -> _Call[list[SearchResult]]:
        """Several text queries in one call (at most the server's limits.max_texts), one result per query."""
        return _Call(self.transport.search_texts(list(queries), k, filter, offset))

    @_operation
    def search_audio(
        self, audio: Audio, k: int = 10, filter: Filter | None = None, offset: int = 0
    ) -> _Call[SearchResult]:
        """Stored items that sound like `audio` (file bytes or a path)."""
        return _Call(self.transport.search_audio(audio, k, filter, offset))

    @_operation
    def search_item(
        self, item_id: str, k: int = 10, filter: Filter | None = None, offset: int = 0
    ) -> _Call[SearchResult]:
        """Neighbours of a stored item, by its stored embedding."""
        return _Call(self.transport.search_item(item_id, k, filter, offset))

    # -- models ----------------------------------------------------------------------------------------------------
    @_operation
    def tag(
        self, audio: Audio, labels: Sequence[str] = (), top_k: int = 10, window_s: float = 0.0, hop_s: float = 0.0
    ) -> _Call[Tags]:
        """Zero-shot tags over the 527 AudioSet labels (or `labels`); window_s > 0 adds tags per window."""
        return _Call(self.transport.tag(audio, labels, top_k, window_s, hop_s))

    @_operation
    def tag_clips(
        self,
        audios: Sequence[Audio],
        labels: Sequence[str] = (),
        top_k: int = 10,
        window_s: float = 0.0,
        hop_s: float = 0.0,
    ) -> _Call[list[Tags]]:
        """`tag` for several clips in one call (at most the server's limits.max_clips_per_request, their files
        together within its max_upload_bytes), with the same options for each; one Tags per clip, in order."""
        return _Call(self.transport.tag_clips(list(audios), labels, top_k, window_s, hop_s))

    @_operation
    def caption(
        self, audio: Audio, tags: Sequence[str] = (), n_best: int = 1, beam_size: int = 0
    ) -> _Call[list[Caption]]:
        """Captions, best first, optionally guided by AudioSet tags (display names)."""
        return _Call(self.transport.caption(audio, tags, n_best, beam_size))

    @_operation
    def embed_audio(self, audio: Audio) -> _Call[list[float]]:
        return _Call(self.transport.embed_audio(audio))

    @_operation
    def embed_text(self, texts: Sequence[str] | str) -> _Call[list[list[float]]]:
        return _Call(self.transport.embed_text([texts] if isinstance(texts, str) else list(texts)))

    # -- items -----------------------------------------------------------------------------------------------------
    @_operation
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
        extra: Mapping[str, Any] | None = None,
        dedupe: bool = False,
    ) -> _Call[Item]:
        """Store a clip under `item_id`: uploaded `audio`, or a server-side `path` under the server's ingest roots.
        `extra`: metadata (a JSON object; filters select on its keys). The same sound may be stored under several
        ids unless `dedupe` (then a copy is refused, 409). Durable once this returns."""
        if (audio is None) == (path is None):
            raise ValueError("give exactly one of: audio, path")
        return _Call(self.transport.add_item(item_id, audio, path, tags, caption, source_uri, upsert, extra, dedupe))

    @_operation
    def _add_batch(self, entries: Sequence[Mapping[str, Any]]) -> _Call[list[ItemResult]]:
        """One AddItems call: each entry add_item's arguments by name; one result per entry (`add_items` uses it)."""
        return _Call(self.transport.add_batch(entries))

    @_operation
    def get_item(self, item_id: str) -> _Call[Item]:
        return _Call(self.transport.get_item(item_id))

    @_operation
    def list_items(self, filter: Filter | None = None, limit: int = 100, cursor: str = "") -> _Call[ItemsPage]:
        """One page of stored items in id order, filtered like a search; pass `next_cursor` back for the next
        (`iter_items` walks every page)."""
        return _Call(self.transport.list_items(filter, limit, cursor))

    @_operation
    def delete_item(self, item_id: str) -> _Call[Item]:
        """Delete a stored item; returns what was deleted."""
        return _Call(self.transport.delete_item(item_id))

    # -- index -----------------------------------------------------------------------------------------------------
    @_operation
    def start_rebuild(
        self,
        folder: str | None = None,
        manifest: str | None = None,
        embeddings: str | None = None,
        *,
        mode: str,
        dedupe: bool = False,
    ) -> _Call[Job]:
        """Rebuild the index in the background from a server-side folder or JSON Lines manifest of audio, or from
        a finished embedding job's folder (precomputed embeddings). `mode` is required: "replace" (the new index
        holds only these items) or "merge" (they are added to the stored ones; an id in both takes the new one).
        `dedupe`: an entry with the sound of an earlier one is skipped."""
        if sum(x is not None for x in (folder, manifest, embeddings)) != 1:
            raise ValueError("give exactly one of: folder, manifest, embeddings")
        return _Call(self.transport.start_rebuild(folder, manifest, embeddings, mode, dedupe))

    @_operation
    def rebuild_status(self, job_id: str) -> _Call[Job]:
        return _Call(self.transport.rebuild_status(job_id))

    @_operation
    def cancel_rebuild(self, job_id: str) -> _Call[Job]:
        return _Call(self.transport.cancel_rebuild(job_id))

    @_operation
    def rollback(self) -> _Call[Stats]:
        """Make the previous index version live again."""
        return _Call(self.transport.rollback())

    @_operation
    def stats(self) -> _Call[Stats]:
        return _Call(self.transport.stats())

    @_operation
    def info(self) -> _Call[Info]:
        return _Call(self.transport.info())

    def _streaming(self) -> GrpcTransport:
        if not isinstance(self.transport, GrpcTransport):
            raise no_answer("unsupported", "streaming tags need the gRPC transport (grpc://host:port)")
        return self.transport


class _Adding:
    """One `add_items` run, the same for both clients: entries read and checked one by one, sent in batches (one
    AddItems call each), each item's outcome counted in the order of the entries, and the report."""

    def __init__(self, upsert: bool, dedupe: bool, progress: Callable[[int, AddReport], None] | None) -> None:
        self.upsert, self.dedupe, self.progress = upsert, dedupe, progress
        self.report = AddReport([], [], [])
        self.done = 0

    def batches(self, items: Iterable[Mapping[str, Any]], size: int) -> Iterator[list[tuple[str, Any]]]:
        """Lists of up to `size` (item id, add_item's arguments by name, or the local error that stops it: an
        unreadable file, a malformed entry)."""
        batch: list[tuple[str, Any]] = []
        for entry in items:
            item_id = str(entry.get("id", ""))
            try:
                audio, path = entry.get("audio"), entry.get("path")
                if (audio is None) == (path is None):
                    raise ValueError("give exactly one of: audio, path")
                args = {
                    "item_id": item_id,
                    "audio": read_audio(audio) if audio is not None else None,  # read here: its error is its own
                    "path": path,
                    "tags": list(entry.get("tags", ())),
                    "caption": entry.get("caption", ""),
                    "source_uri": entry.get("source_uri", ""),
                    "extra": dict(entry.get("extra") or {}),
                    "upsert": self.upsert,
                    "dedupe": self.dedupe,
                }
                batch.append((item_id, args))
            except (OSError, ValueError, TypeError) as e:
                batch.append((item_id, e))
            if len(batch) >= size:
                yield batch
                batch = []
        if batch:
            yield batch

    @staticmethod
    def sendable(batch: list[tuple[str, Any]]) -> list[dict[str, Any]]:
        return [args for _, args in batch if isinstance(args, dict)]

    def outcomes(self, batch: list[tuple[str, Any]], answer: list[ItemResult] | ClientError) -> list[tuple[str, str]]:
        """(kind, why) per entry of the batch, from the AddItems answer, or from the error that refused it whole (an
        unreachable server, status 0, stops the run: raised again)."""
        if isinstance(answer, ClientError) and answer.status == 0:
            raise answer
        results = iter(answer) if not isinstance(answer, ClientError) else None
        out = []
        for _, args in batch:
            if not isinstance(args, dict):
                out.append(("failed", str(args)))
                continue
            error = next(results).error if results is not None else cast(ClientError, answer)
            if error is None:
                out.append(("added", ""))
            elif error.status == 409:  # stored already (this id; with dedupe, this sound): a rerun resumes
                out.append(("skipped", error.message))
            else:
                out.append(("failed", f"{error.status} {error.code}: {error.message}"))
        return out

    def count(self, batch: list[tuple[str, Any]], outcomes: list[tuple[str, str]]) -> None:
        for (item_id, _), (kind, why) in zip(batch, outcomes):
            if kind == "added":
                self.report.added.append(item_id)
            elif kind == "skipped":
                self.report.skipped.append(item_id)
            else:
                self.report.failed.append({"id": item_id, "reason": why})
            self.done += 1
            if self.progress:
                self.progress(self.done, self.report)


ADD_ITEMS_DOC = """Store many items: `batch_size` per request (AddItems: at most the server's
        limits.max_clips_per_request; a batch over its max_upload_bytes is sent again an item at a time), `concurrency`
        requests at a time. Each item is a mapping
        with "id" and "audio" (what `add_item` takes) or "path" (server-side), and optionally "tags", "caption",
        "source_uri", "extra". Each item is stored or refused on its own. One already stored (409: the id, or with
        `dedupe` its sound under another id) is skipped, so a rerun of the same list resumes; other refusals are
        collected in `failed` with their reason, and an unreachable server stops the run (ClientError).
        `progress(done, report)` is called after each item, in the order of `items`; an item is durable when it is
        counted as added."""


class Client(_Api):
    """Blocking client; thread-safe (one connection pool or channel shared by all threads)."""

    def _send(self, call: _Call[T]) -> T:
        attempt = 0
        while True:
            try:
                return cast(T, self.transport.send(call.wire))
            except ClientError as e:
                if not (e.retryable and attempt < self.retry.attempts):
                    raise
                time.sleep(self.retry.delay(attempt, e))
                attempt += 1

    def add_items(
        self,
        items: Iterable[Mapping[str, Any]],
        *,
        batch_size: int = 8,
        concurrency: int = 4,
        upsert: bool = False,
        dedupe: bool = False,
        progress: Callable[[int, AddReport], None] | None = None,
    ) -> AddReport:
        run = _Adding(upsert, dedupe, progress)

        def add(entries: list[dict[str, Any]]) -> list[ItemResult] | ClientError:
            try:
                return self._add_batch(entries) if entries else []
            except ClientError as e:
                if e.status == 413 and len(entries) > 1:  # too large together: one at a time
                    answers = [add([entry]) for entry in entries]
                    return [
                        a[0] if isinstance(a, list) else ItemResult(x["item_id"], None, a)
                        for a, x in zip(answers, entries)
                    ]
                return e

        def send(batch: list[tuple[str, Any]]) -> list[tuple[str, str]]:
            return run.outcomes(batch, add(run.sendable(batch)))

        with ThreadPoolExecutor(max(1, concurrency)) as pool:
            batches = list(run.batches(items, max(1, batch_size)))
            for batch, outcomes in zip(batches, pool.map(send, batches)):
                run.count(batch, outcomes)
        return run.report

    add_items.__doc__ = ADD_ITEMS_DOC

    def iter_items(self, filter: Filter | None = None, page_size: int = 100) -> Iterator[Item]:
        """Every stored item that passes `filter`, in id order, fetched a page at a time."""
        cursor = ""
        while True:
            page = self.list_items(filter, page_size, cursor)
            yield from page.items
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    def wait_rebuild(self, job_id: str, poll_s: float = 0.5, on_progress: Callable[[Job], object] | None = None) -> Job:
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

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient(_Api):
    """asyncio client: every method of `Client`, awaited (`await c.search_text("rain")`)."""

    async def _send(self, call: _Call[T]) -> T:
        attempt = 0
        while True:
            try:
                return cast(T, await self.transport.asend(call.wire))
            except ClientError as e:
                if not (e.retryable and attempt < self.retry.attempts):
                    raise
                await asyncio.sleep(self.retry.delay(attempt, e))
                attempt += 1

    async def add_items(
        self,
        items: Iterable[Mapping[str, Any]],
        *,
        batch_size: int = 8,
        concurrency: int = 4,
        upsert: bool = False,
        dedupe: bool = False,
        progress: Callable[[int, AddReport], None] | None = None,
    ) -> AddReport:
        run = _Adding(upsert, dedupe, progress)
        slots = asyncio.Semaphore(max(1, concurrency))

        async def add(entries: list[dict[str, Any]]) -> list[ItemResult] | ClientError:
            try:
                return await self._add_batch(entries) if entries else []
            except ClientError as e:
                if e.status == 413 and len(entries) > 1:  # too large together: one at a time
                    answers = [await add([entry]) for entry in entries]
                    return [
                        a[0] if isinstance(a, list) else ItemResult(x["item_id"], None, a)
                        for a, x in zip(answers, entries)
                    ]
                return e

        async def send(batch: list[tuple[str, Any]]) -> list[tuple[str, str]]:
            async with slots:
                answer = await add(run.sendable(batch))
            return run.outcomes(batch, answer)

        batches = list(run.batches(items, max(1, batch_size)))
        tasks = [asyncio.ensure_future(send(batch)) for batch in batches]
        try:
            for batch, task in zip(batches, tasks):  # counted in the order of `items`, as Client.add_items counts
                run.count(batch, await task)
        except BaseException:  # an unreachable server (or a cancelled caller): the rest are not sent
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        return run.report

    add_items.__doc__ = ADD_ITEMS_DOC

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

    async def wait_rebuild(
        self, job_id: str, poll_s: float = 0.5, on_progress: Callable[[Job], object] | None = None
    ) -> Job:
        while True:
            job = await self.rebuild_status(job_id)
            if on_progress:
                on_progress(job)
            if job.finished:
                return job
            await asyncio.sleep(poll_s)

    def stream_tag(
        self,
        chunks: Iterable[bytes] | AsyncIterable[bytes],
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

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
