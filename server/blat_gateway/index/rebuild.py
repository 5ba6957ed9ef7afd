"""A background rebuild: a new version built from (item, embedding) pairs, validated, then swapped in atomically.

The live version keeps answering searches and taking writes throughout. A source may yield `Skipped(reason)` for an
entry it could not read (an undecodable file, a path that left the ingest roots): the job counts it and keeps the
reason, and fails only when more than `max_unreadable_share` of its entries were skipped so. Writes made meanwhile
are logged by the store and replayed into the new version under the store lock just before the swap, so none is
lost. Validation before the swap: every expected item arrived, the engine's rows and search structure agree, the
embeddings come from the bundle the store serves, and recall@10 of the new version against an exact search on sample
queries reaches the threshold. The job sees the engine only through the `Staging` protocol, and the store only
through the two callbacks it is given (`swap_in`, `on_finished`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from blat_gateway.errors import ServiceError
from blat_gateway.index.exact import RECALL_K
from blat_gateway.index.records import ItemRecord, as_unit_rows

if TYPE_CHECKING:
    from blat_gateway.index.protocol import Staging

log = logging.getLogger(__name__)

STATES = ("pending", "running", "validating", "succeeded", "failed", "cancelled")
BATCH = 512  # pairs per bulk write while building: one fsync (SQLite) or request (Milvus) per batch, not per item
MAX_REASONS = 10  # skipped items whose reasons are kept for the progress report
MAX_REASON_CHARS = 300  # each reason: a path and a message, never a document


@dataclass(frozen=True)
class Skipped:
    """What a source yields in place of an entry it could not read: "path: why"."""

    reason: str


Entry = tuple[ItemRecord, np.ndarray] | Skipped
Source = Iterable[Entry] | Callable[[], Iterable[Entry]]


class Cancelled(Exception):
    pass


@dataclass(frozen=True)
class RebuildProgress:
    version: str  # the version being built
    state: str  # one of STATES
    done: int  # pairs consumed from the source, skipped ones included
    total: int  # pairs the caller announced (a merge's estimate until its source ends)
    added: int
    skipped: int  # repeated ids (and sounds, with dedupe), invalid pairs and unreadable entries
    skipped_reasons: tuple[str, ...]  # the first few
    recall: float | None  # recall@10 vs exact measured during validation
    error: str | None
    started_at: float
    finished_at: float | None
    unreadable: int = 0  # entries the source could not read (`Skipped`), counted in `skipped` too

    def to_dict(self) -> dict:
        return asdict(self)


class RebuildJob:
    """Create with `IndexStore.start_rebuild`; poll `progress()`, `cancel()`, or `wait()`.

    The store passes what the job needs of it: its embedding `dim`, the bundle it serves (`serving_bundle`),
    `swap_in(job, staging)` (replay the writes made meanwhile and switch to the new version, under the store's locks;
    raises `Cancelled` when the job was cancelled) and `on_finished(job)` (called once the job ends, however)."""

    def __init__(
        self,
        staging: Staging,
        source: Source,
        total: int,
        bundle_id: str,
        min_recall: float | None,
        max_unreadable_share: float = 0.5,
        *,
        exact_total: bool = True,
        dedupe: bool = False,
        dim: int,
        serving_bundle: str,
        swap_in: Callable[[RebuildJob, Staging], None],
        on_finished: Callable[[RebuildJob], None],
    ):
        self._staging, self._source = staging, source
        self._dim, self._serving_bundle = dim, serving_bundle
        self._swap_in, self._on_finished = swap_in, on_finished
        self._bundle_id, self._min_recall = bundle_id, min_recall
        self._max_unreadable_share, self._exact_total = max_unreadable_share, exact_total
        self._dedupe = dedupe
        self._cancel = threading.Event()
        self._done = threading.Event()
        self._lock = threading.Lock()  # guards _progress against readers on other threads
        self._progress = RebuildProgress(staging.name, "pending", 0, total, 0, 0, (), None, None, time.time(), None)
        self._thread = threading.Thread(target=self._run, name=f"index-rebuild-{staging.name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def progress(self) -> RebuildProgress:
        with self._lock:
            return self._progress

    @property
    def running(self) -> bool:
        return not self._done.is_set()

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def wait(self, timeout: float | None = None) -> RebuildProgress:
        self._done.wait(timeout)
        return self.progress()

    def _update(self, **changes) -> None:
        with self._lock:
            self._progress = replace(self._progress, **changes)

    def _check_cancel(self) -> None:
        if self._cancel.is_set():
            raise Cancelled()

    # -- the thread ------------------------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._update(state="running")
            self._check_bundle()  # before the expensive part: no point embedding a collection that cannot go live
            self._ingest()
            self._update(state="validating")
            self._validate()
            self._check_cancel()
            self._swap_in(self, self._staging)  # replays concurrent writes, switches, or raises
            self._update(state="succeeded", finished_at=time.time())
        except Cancelled:
            self._discard()
            self._update(state="cancelled", finished_at=time.time())
        except Exception as e:
            log.exception("index rebuild %s failed", self._staging.name)
            self._discard()
            msg = e.message if isinstance(e, ServiceError) else f"{type(e).__name__}: {e}"
            self._update(state="failed", error=msg, finished_at=time.time())
        finally:
            self._on_finished(self)
            self._done.set()

    def _discard(self) -> None:
        """Drop the unfinished version. When that fails too (the engine is down: what failed the rebuild, often), the
        rebuild still ends, and the next one drops the leftover (both engines drop unreferenced versions then)."""
        try:
            self._staging.discard()
        except Exception:
            log.warning("could not drop the unfinished version %s", self._staging.name, exc_info=True)

    def _ingest(self) -> None:
        source = self._source() if callable(self._source) else self._source
        batch: list[tuple[ItemRecord, np.ndarray]] = []
        done = added = skipped = unreadable = 0
        reasons: list[str] = []
        seen_ids: set[str] = set()
        seen_hashes: set[str] = set()
        for entry in source:
            self._check_cancel()
            done += 1
            if isinstance(entry, Skipped):
                skipped, unreadable = skipped + 1, unreadable + 1
                if len(reasons) < MAX_REASONS:
                    reasons.append(entry.reason[:MAX_REASON_CHARS])
                continue
            item, vec = entry
            try:
                if item.id in seen_ids:
                    raise ValueError(f"{item.id}: id repeated in the source")
                if self._dedupe and item.content_hash and item.content_hash in seen_hashes:
                    raise ValueError(f"{item.id}: same content hash as an earlier item")
                batch.append((item, as_unit_rows(vec, self._dim)[0]))
                seen_ids.add(item.id)
                if item.content_hash:
                    seen_hashes.add(item.content_hash)
            except (ValueError, ServiceError) as e:
                skipped += 1
                if len(reasons) < MAX_REASONS:
                    reasons.append((getattr(e, "message", None) or str(e))[:MAX_REASON_CHARS])
            if len(batch) >= BATCH:
                added += self._staging.load(batch)  # rows only: the search structure is built once, in _validate
                batch = []
            if done % 64 == 0:
                self._update(
                    done=done,
                    added=added + len(batch),
                    skipped=skipped,
                    skipped_reasons=tuple(reasons),
                    unreadable=unreadable,
                )
        if batch:
            added += self._staging.load(batch)
        self._update(done=done, added=added, skipped=skipped, skipped_reasons=tuple(reasons), unreadable=unreadable)

    def _check_bundle(self) -> None:
        if self._bundle_id != self._serving_bundle:
            raise ValueError(
                f"validation: embeddings come from bundle {self._bundle_id!r}, "
                f"but the store serves {self._serving_bundle!r}"
            )

    def _validate(self) -> None:
        p = self.progress()
        if not self._exact_total:  # an estimate (a merge reads the live items as they are when it gets to them)
            self._update(total=p.done)
        elif p.done != p.total:
            raise ValueError(f"validation: expected {p.total} items from the source, got {p.done}")
        if p.unreadable > self._max_unreadable_share * p.done:
            raise ValueError(
                f"{p.unreadable} of {p.done} entries could not be read, more than the "
                f"{self._max_unreadable_share:.0%} allowed (settings.rebuild_max_unreadable_share): "
                + "; ".join(p.skipped_reasons[:3])
            )
        self._check_bundle()
        self._check_cancel()
        got = self._staging.finish()  # builds the search structure, checks it against the rows, measures recall
        self._update(recall=got)
        need = self._min_recall if self._min_recall is not None else self._staging.required_recall
        if got < need - 1e-9:
            raise ValueError(f"validation: recall@{RECALL_K} {got:.3f} < {need:.3f}")
