"""`FaissIndex`: the `VectorIndex` of one host — version directories of SQLite rows (the truth) and a FAISS cache.

Layout and durability: layout.py (the directory, the CURRENT pointer), db.py (SQLite as the journal), version.py
(FAISS kept in step with SQLite). Not thread-safe: `IndexStore` calls it under its lock, except `rollback` and
`compact`, which take the lock themselves around the switch so the slow part runs beside searches.
"""

from __future__ import annotations

import dataclasses
import shutil
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from blat_gateway.errors import BackendDown, Conflict, IndexDamaged, NotFound
from blat_gateway.index import ann, layout
from blat_gateway.index.db import VersionDB
from blat_gateway.index.protocol import AnnConfig, Pair, Scored, VersionMeta
from blat_gateway.index.records import ItemRecord, SearchFilter
from blat_gateway.index.version import DB_FILE, INDEX_FILE, Version, build_from_db, query_sets


def way_back(root: Path, previous: str | None) -> str:
    """What an operator can do about a live version that fails its check (the gateway will not serve it)."""
    rebuild = (
        f"move {root} aside, start the gateway on an empty index and rebuild it from your audio "
        "(POST /v1/index/rebuild, or settings.seed_manifest)"
    )
    if previous is None:
        return rebuild
    return (
        f"`python -m blat_gateway --index-dir {root} --rollback` (or `blat serve ... --rollback`) makes the previous "
        f"version {previous} live again, without the writes made since it was replaced; or {rebuild}"
    )


def rollback_offline(root: str | Path) -> tuple[str, str]:
    """With no gateway running: make the previous version live again -> (live, previous). The way back from a live
    version that fails its check at start; the previous version must pass it (IndexDamaged otherwise)."""
    root = Path(root)
    lock = layout.RootLock(root)
    try:
        pointer = layout.read_pointer(root)
        if pointer is None or pointer[1] is None or not (layout.versions_dir(root) / pointer[1]).is_dir():
            raise NotFound(f"index {root} has no previous version to roll back to")
        current, previous = pointer
        db = layout.versions_dir(root) / previous / DB_FILE
        if not db.is_file():  # never let SQLite create an empty database in its place
            raise IndexDamaged(f"index version {previous} has no {DB_FILE}", file=str(db))
        VersionDB(db, check=True).close()
        layout.write_pointer(root, previous, current)
        return previous, current
    finally:
        lock.release()


class FaissIndex:
    """Open (or create, with `meta`) the versions under `root`. The directory is locked to this process."""

    def __init__(self, root: str | Path, meta: VersionMeta, cfg: AnnConfig):
        self.root, self.cfg = Path(root), cfg
        layout.versions_dir(self.root).mkdir(parents=True, exist_ok=True)
        self._root_lock = layout.RootLock(self.root)
        try:
            pointer = layout.read_pointer(self.root)
            if pointer is None:
                layout.remove_unreferenced(self.root, set())  # a first open killed before its pointer was written
                name = layout.next_version(self.root)
                self._live = Version.create(self._dir(name), meta, cfg)
                layout.write_pointer(self.root, name, None)
                self._previous = None
            else:
                current, self._previous = pointer
                layout.remove_unreferenced(self.root, {current, self._previous} - {None})
                try:
                    self._live = Version.open(self._dir(current), cfg)
                except IndexDamaged as e:
                    raise IndexDamaged(
                        f"index version {current} cannot be served: {e.message}. "
                        f"The way back: {way_back(self.root, self._previous)}",
                        **e.details,
                    ) from None
        except BaseException:
            self._root_lock.release()
            raise
        self._closed = False

    def _dir(self, name: str) -> Path:
        return layout.versions_dir(self.root) / name

    @property
    def live(self) -> Version:
        if self._closed:
            raise BackendDown("the index store is closed")
        return self._live

    @property
    def name(self) -> str:
        return self.live.name

    @property
    def previous(self) -> str | None:
        return self._previous

    @property
    def meta(self) -> VersionMeta:
        return self.live.meta

    # -- items -----------------------------------------------------------------------------------------------------

    def put_many(self, pairs: Sequence[Pair], upsert: bool, check_hash: bool = True) -> list[ItemRecord]:
        return self.live.put_many(list(pairs), upsert, check_hash)

    def delete(self, item_id: str) -> ItemRecord | None:
        return self.live.delete(item_id)

    def get(self, item_id: str) -> ItemRecord | None:
        got = self.live.db.get(item_id)
        return got[1] if got else None

    def embedding(self, item_id: str) -> np.ndarray | None:
        return self.live.db.embedding(item_id)

    def embeddings_by_id(self, ids: list[str]) -> dict[str, np.ndarray]:
        return self.live.db.embeddings_by_id(ids)

    def page(self, flt: SearchFilter | None, after: str, limit: int) -> list[ItemRecord]:
        return self.live.db.page(flt, after, limit)

    def search(self, x: np.ndarray, k: int, flt: SearchFilter | None) -> list[list[Scored]]:
        return self.live.search(x, k, flt)

    def count(self) -> int:
        return self.live.count

    def stats(self) -> dict:
        return self.live.stats()

    # -- versions --------------------------------------------------------------------------------------------------

    def new_version(self, meta: VersionMeta, cfg: AnnConfig) -> FaissStaging:
        cfg = dataclasses.replace(cfg, kind=meta.kind, use_gpu=False)  # the GPU copy is made after the swap
        return FaissStaging(self, Version.create(self._dir(layout.next_version(self.root)), meta, cfg))

    def swap(self, staging: FaissStaging) -> None:
        new, live = staging.version, self.live
        if new.index.ntotal - len(new.dead) != new.db.count():
            raise ValueError("replaying writes made during the rebuild left FAISS and SQLite out of step")
        new.snapshot()
        layout.write_pointer(self.root, new.name, live.name)  # the switch: atomic, durable
        self._live, self._previous = new, live.name
        live.close()
        new.attach_gpu()
        layout.remove_unreferenced(self.root, {new.name, live.name})

    def rollback(self, lock: threading.RLock) -> str:
        with lock:
            if self._previous is None or not self._dir(self._previous).is_dir():
                raise NotFound("there is no previous version to roll back to")
            previous, live = self._previous, self.live
        # Opened outside the lock: nothing writes the previous version, and the store runs one swap at a time.
        older = Version.open(self._dir(previous), self.cfg)
        with lock:
            if live.writes_since_snapshot:
                live.snapshot()
            layout.write_pointer(self.root, older.name, None)  # one step back: the newer version is dropped
            self._live, self._previous = older, None
            live.close()
            layout.remove_unreferenced(self.root, {older.name})
            return older.name

    def compact(self, lock: threading.RLock) -> dict:
        """The build reads a consistent SQLite state on its own connection without the lock, so searches and writes
        go on; writes made meanwhile are reconciled into the new index when it is installed."""
        with lock:
            live = self.live
            before = len(live.dead)
        reader = live.db.reader()
        try:
            index, got = build_from_db(reader, live.cfg)
        finally:
            reader.close()
        ann.save(index, live.path / INDEX_FILE)  # the snapshot; rows written meanwhile replay on open
        with lock:
            if self.live is not live:  # cannot happen while the store runs one swap at a time; cheap to make sure
                raise Conflict("the live version changed during compaction")
            live.install(index)
            return {
                "tombstones_removed": before,
                "index_type": ann.index_type(index),
                "recall": got,
                "params": ann.params(index),
            }

    def snapshot(self) -> None:
        self.live.snapshot()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._live.writes_since_snapshot:
            self._live.snapshot()
        self._live.close()
        self._root_lock.release()


class FaissStaging:
    """A version directory under construction: rows first (`load`), then one FAISS build over all of them (IVF must
    see every row to train), validated, then kept in step with writes replayed from the live version."""

    def __init__(self, owner: FaissIndex, version: Version):
        self._owner, self.version, self.loaded = owner, version, 0

    @property
    def name(self) -> str:
        return self.version.name

    def load(self, pairs: Sequence[Pair]) -> int:
        with self.version.db.tx():
            for item, vec in pairs:
                self.version.db.put(item, vec, upsert=False, check_hash=False)
        self.loaded += len(pairs)
        return len(pairs)

    @property
    def required_recall(self) -> float:
        return 1.0 if ann.index_type(self.version.index) == "flat" else self.version.cfg.target_recall

    def finish(self) -> float:
        version = self.version
        index, _ = build_from_db(version.db, version.cfg)
        version.install(index)
        n_db = version.db.count()
        if n_db != self.loaded or version.index.ntotal - len(version.dead) != n_db:
            raise ValueError(
                f"validation: {self.loaded} items added, SQLite holds {n_db}, FAISS {version.index.ntotal}"
            )
        # Not tuning's queries (no grading on its own set); the worst distance counts.
        got = ann.worst_recall(version.index, query_sets(version.db, seed=2)) if n_db else 1.0
        version.snapshot()
        return got

    def put_many(self, pairs: Sequence[Pair], upsert: bool = True, check_hash: bool = False) -> list[ItemRecord]:
        return self.version.put_many(list(pairs), upsert, check_hash)

    def delete(self, item_id: str) -> ItemRecord | None:
        return self.version.delete(item_id)

    def count(self) -> int:
        return self.version.count

    def discard(self) -> None:
        if self._owner._live is self.version:
            return  # swapped in: it is the live version now
        self.version.close()
        shutil.rmtree(self.version.path, ignore_errors=True)  # never named by CURRENT: nothing can be using it
