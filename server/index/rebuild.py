"""A background rebuild: a new version built from (item, embedding) pairs, validated, then swapped in atomically.

The live version keeps answering searches and taking writes throughout. Writes made meanwhile are logged by the
store and replayed into the new version under the store lock just before the swap, so none is lost. Validation
before the swap: every expected item arrived, SQLite and FAISS agree, the embeddings come from the bundle the store
serves, and recall@10 of the new index against an exact search on sample queries reaches the threshold.
"""
from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from server.errors import ServiceError
from server.index import ann
from server.index.records import ItemRecord, as_unit_rows
from server.index.version import Version, build_from_db, new_meta, query_sets

if TYPE_CHECKING:
    from server.index.store import IndexStore

log = logging.getLogger(__name__)

STATES = ("pending", "running", "validating", "succeeded", "failed", "cancelled")
BATCH = 512  # pairs per SQLite transaction while building: one fsync per batch, not per item
MAX_REASONS = 10  # skipped items whose reasons are kept for the progress report

Source = Iterable[tuple[ItemRecord, np.ndarray]] | Callable[[], Iterable[tuple[ItemRecord, np.ndarray]]]


class Cancelled(Exception):
    pass


@dataclass(frozen=True)
class RebuildProgress:
    version: str  # the directory being built
    state: str  # one of STATES
    done: int  # pairs consumed from the source, skipped ones included
    total: int  # pairs the caller announced
    added: int
    skipped: int  # duplicates (same id or same content hash) and invalid pairs
    skipped_reasons: tuple[str, ...]  # the first few
    recall: float | None  # recall@10 vs exact measured during validation
    error: str | None
    started_at: float
    finished_at: float | None

    def to_dict(self) -> dict:
        return asdict(self)


class RebuildJob:
    """Create with `IndexStore.start_rebuild`; poll `progress()`, `cancel()`, or `wait()`."""

    def __init__(self, store: IndexStore, path: Path, source: Source, total: int, bundle_id: str, kind: str,
                 min_recall: float | None):
        self._store, self._path, self._source = store, path, source
        self._cfg = replace(store.config, kind=kind, use_gpu=False)  # the GPU copy is made after the swap
        self._bundle_id, self._min_recall = bundle_id, min_recall
        self._cancel = threading.Event()
        self._done = threading.Event()
        self._lock = threading.Lock()  # guards _progress against readers on other threads
        self._progress = RebuildProgress(path.name, "pending", 0, total, 0, 0, (), None, None, time.time(), None)
        self._thread = threading.Thread(target=self._run, name=f"index-rebuild-{path.name}", daemon=True)

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
        version = None
        try:
            self._update(state="running")
            self._check_bundle()  # before the expensive part: no point embedding a collection that cannot go live
            version = Version.create(self._path, new_meta(self._store.dim, self._bundle_id, self._cfg.kind), self._cfg)
            self._ingest(version)
            self._update(state="validating")
            self._validate(version)
            self._check_cancel()
            self._store._swap_in(self, version)  # replays concurrent writes, switches CURRENT, or raises
            self._update(state="succeeded", finished_at=time.time())
        except Cancelled:
            self._discard(version)
            self._update(state="cancelled", finished_at=time.time())
        except Exception as e:
            log.exception("index rebuild %s failed", self._path.name)
            self._discard(version)
            msg = e.message if isinstance(e, ServiceError) else f"{type(e).__name__}: {e}"
            self._update(state="failed", error=msg, finished_at=time.time())
        finally:
            self._store._rebuild_finished(self)
            self._done.set()

    def _discard(self, version: Version | None) -> None:
        if version is not None and self._store._live is version:
            return  # failed after the swap (it cannot in practice): the version is live, keep it
        if version is not None:
            version.close()
        shutil.rmtree(self._path, ignore_errors=True)  # never named by CURRENT: nothing can be using it

    def _ingest(self, version: Version) -> None:
        source = self._source() if callable(self._source) else self._source
        batch: list[tuple[ItemRecord, np.ndarray]] = []
        done = added = skipped = 0
        reasons: list[str] = []
        seen_ids: set[str] = set()
        seen_hashes: set[str] = set()
        for item, vec in source:
            self._check_cancel()
            done += 1
            try:
                if item.id in seen_ids:
                    raise ValueError(f"{item.id}: id repeated in the source")
                if item.content_hash and item.content_hash in seen_hashes:
                    raise ValueError(f"{item.id}: same content hash as an earlier item")
                batch.append((item, as_unit_rows(vec, self._store.dim)[0]))
                seen_ids.add(item.id)
                if item.content_hash:
                    seen_hashes.add(item.content_hash)
            except (ValueError, ServiceError) as e:
                skipped += 1
                if len(reasons) < MAX_REASONS:
                    reasons.append(getattr(e, "message", None) or str(e))
            if len(batch) >= BATCH:
                added += self._commit(version, batch)
                batch = []
            if done % 64 == 0:
                self._update(done=done, added=added + len(batch), skipped=skipped, skipped_reasons=tuple(reasons))
        if batch:
            added += self._commit(version, batch)
        self._update(done=done, added=added, skipped=skipped, skipped_reasons=tuple(reasons))

    @staticmethod
    def _commit(version: Version, batch: list[tuple[ItemRecord, np.ndarray]]) -> int:
        """Rows only: the FAISS index is built once from all rows in `_validate` (IVF must see them all to train)."""
        with version.db.tx():
            for item, vec in batch:
                version.db.put(item, vec, upsert=False, check_hash=False)  # duplicates were screened by the caller
        return len(batch)

    def _check_bundle(self) -> None:
        if self._bundle_id != self._store.bundle_id:
            raise ValueError(f"validation: embeddings come from bundle {self._bundle_id!r}, "
                             f"but the store serves {self._store.bundle_id!r}")

    def _validate(self, version: Version) -> None:
        p = self.progress()
        if p.done != p.total:
            raise ValueError(f"validation: expected {p.total} items from the source, got {p.done}")
        self._check_bundle()
        self._check_cancel()
        index, _ = build_from_db(version.db, version.cfg)
        version.install(index)
        n_db = version.db.count()
        if n_db != p.added or version.index.ntotal - len(version.dead) != n_db:
            raise ValueError(f"validation: {p.added} items added, SQLite holds {n_db}, FAISS {version.index.ntotal}")
        self._check_cancel()
        got = 1.0
        if n_db:
            # not tuning's queries (no grading on its own set); the worst distance counts
            got = ann.worst_recall(version.index, query_sets(version.db, seed=2))
        self._update(recall=got)
        need = self._min_recall if self._min_recall is not None else (
            1.0 if ann.index_type(version.index) == "flat" else self._cfg.target_recall)
        if got < need - 1e-9:
            raise ValueError(f"validation: recall@{ann.RECALL_K} {got:.3f} < {need:.3f}")
        version.snapshot()

