"""`IndexStore`: the gateway's audio index — FAISS search over stored embeddings, metadata and durability in SQLite.

Durability: SQLite (WAL, synchronous=FULL) is the write-ahead journal; a write returns only after its COMMIT is
fsynced, and the FAISS index is a cache reconciled with SQLite on open (see `version.py`). Versions: `CURRENT`
names the live version directory; rebuilds build a new one in the background and switch the pointer atomically,
keeping the old one for `rollback()`. Thread-safe: one lock serialises calls (searches included; each is short).
"""
from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from server.errors import BackendDown, BadRequest, Conflict, NotFound
from server.index import ann, layout
from server.index.ann import AnnConfig
from server.index.rebuild import Cancelled, RebuildJob, Source
from server.index.records import MAX_K, Hit, IndexStats, ItemRecord, SearchFilter, as_unit_rows, check_id
from server.index.version import INDEX_FILE, Version, build_from_db, new_meta


class IndexStore:
    """Open (or create) the store under `root` for embeddings of `dim` floats from bundle `bundle_id`.

    `dim`, `bundle_id` and `kind` describe the store to create; an existing store keeps its own (see `stats()`),
    and while its live version holds another bundle's embeddings, adds are refused until a rebuild replaces it.
    """

    def __init__(self, root: str | Path, dim: int, bundle_id: str, kind: str = "flat", *,
                 config: AnnConfig | None = None):
        if dim < 1 or not bundle_id:
            raise BadRequest("dim >= 1 and a bundle_id are required")
        self.root, self.dim, self.bundle_id = Path(root), int(dim), bundle_id
        self.config = config if config is not None else AnnConfig(kind=kind)
        self._lock = threading.RLock()  # guards the live version and the pointer
        self._maint = threading.Lock()  # one of compact / rollback / rebuild swap at a time
        self._job: RebuildJob | None = None
        self._rebuild_log: list[tuple[str, str]] | None = None  # writes during a rebuild, replayed before its swap
        layout.versions_dir(self.root).mkdir(parents=True, exist_ok=True)
        self._root_lock = layout.RootLock(self.root)
        try:
            pointer = layout.read_pointer(self.root)
            if pointer is None:
                layout.remove_unreferenced(self.root, set())  # a first open killed before its pointer was written
                name = layout.next_version(self.root)
                meta = new_meta(self.dim, bundle_id, self.config.kind)
                self._live = Version.create(self._dir(name), meta, self.config)
                layout.write_pointer(self.root, name, None)
                self._previous = None
            else:
                current, self._previous = pointer
                layout.remove_unreferenced(self.root, {current, self._previous} - {None})
                self._live = Version.open(self._dir(current), self.config)
        except BaseException:
            self._root_lock.release()
            raise
        self._closed = False

    def _dir(self, name: str) -> Path:
        return layout.versions_dir(self.root) / name

    def _open_live(self) -> Version:
        if self._closed:
            raise BackendDown("the index store is closed")
        return self._live

    def __enter__(self) -> IndexStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- writes ----------------------------------------------------------------------------------------------------

    def add(self, item: ItemRecord, embedding: np.ndarray, upsert: bool = False) -> ItemRecord:
        """Store one item; returns it as stored (with `added_at`). Durable when this returns.

        Conflict: the id exists and not `upsert`, or the same content hash is stored under another id
        (`details["existing_id"]` names it).
        """
        return self.add_many([(item, embedding)], upsert=upsert)[0]

    def add_many(self, pairs: Iterable[tuple[ItemRecord, np.ndarray]], upsert: bool = False) -> list[ItemRecord]:
        """Store several items in one transaction: all of them, or none when one fails."""
        pairs = list(pairs)
        with self._lock:
            live = self._open_live()
            meta = live.meta
            if meta.bundle_id != self.bundle_id or meta.dim != self.dim:
                raise Conflict(f"the live index holds embeddings of bundle {meta.bundle_id!r} (dim {meta.dim}), not "
                               f"{self.bundle_id!r} (dim {self.dim}): rebuild the index before adding",
                               index_bundle=meta.bundle_id, serving_bundle=self.bundle_id)
            rows = [(item, as_unit_rows(vec, self.dim)[0]) for item, vec in pairs]
            stored = live.put_many(rows, upsert=upsert)
            if self._rebuild_log is not None:
                self._rebuild_log.extend(("put", item.id) for item in stored)
            return stored

    def delete(self, item_id: str) -> ItemRecord:
        """Remove an item (durable when this returns); returns what was stored. NotFound if absent."""
        check_id(item_id)
        with self._lock:
            removed = self._open_live().delete(item_id)
            if removed is None:
                raise NotFound(f"no item {item_id!r}", id=item_id)
            if self._rebuild_log is not None:
                self._rebuild_log.append(("del", item_id))
            return removed

    # -- reads -----------------------------------------------------------------------------------------------------

    def get(self, item_id: str) -> ItemRecord:
        check_id(item_id)
        with self._lock:
            got = self._open_live().db.get(item_id)
        if got is None:
            raise NotFound(f"no item {item_id!r}", id=item_id)
        return got[1]

    def embedding(self, item_id: str) -> np.ndarray:
        """The stored (D,) unit embedding: lets search-by-id work while the model backend is down."""
        check_id(item_id)
        with self._lock:
            vec = self._open_live().db.embedding(item_id)
        if vec is None:
            raise NotFound(f"no item {item_id!r}", id=item_id)
        return vec

    def search(self, query: np.ndarray, k: int = 10, filter: SearchFilter | dict | None = None) -> list[list[Hit]]:
        """query (D,) or (Q, D) -> per query the k best hits (cosine score, best first) that pass `filter`."""
        if not isinstance(k, int) or not 1 <= k <= MAX_K:
            raise BadRequest(f"k must be an integer in 1..{MAX_K}, got {k!r}")
        if isinstance(filter, dict):  # as it arrives in a JSON request
            try:
                filter = SearchFilter(**filter)
            except TypeError:
                known = [f.name for f in dataclasses.fields(SearchFilter)]
                raise BadRequest(f"unknown filter keys {sorted(set(filter) - set(known))}; known: {known}") from None
        with self._lock:
            live = self._open_live()
            x = as_unit_rows(query, live.meta.dim, "query")
            results = live.search(x, k, filter)
        return [[Hit(item.id, score, item) for score, item in hits] for hits in results]

    def search_by_id(self, item_id: str, k: int = 10, filter: SearchFilter | dict | None = None) -> list[Hit]:
        """The k items nearest to a stored item (itself excluded), from its stored embedding."""
        vec = self.embedding(item_id)
        hits = self.search(vec, min(k + 1, MAX_K), filter)[0]
        return [h for h in hits if h.id != item_id][:k]

    @property
    def version(self) -> str:
        """The live version's name (what a search answer says it searched), without computing the statistics."""
        return self._open_live().name

    def stats(self) -> IndexStats:
        with self._lock:
            live = self._open_live()
            meta, s = live.meta, live.stats()
            job = self._job.progress().to_dict() if self._job is not None else None
            return IndexStats(version=live.name, previous_version=self._previous, dim=meta.dim,
                              bundle_id=meta.bundle_id, serving_bundle_id=self.bundle_id, kind=live.cfg.kind,
                              rebuild=job, **s)

    # -- maintenance -----------------------------------------------------------------------------------------------

    def snapshot(self) -> None:
        """Write the FAISS cache of the live version, so the next open replays fewer rows."""
        with self._lock:
            self._open_live().snapshot()

    def compact(self) -> dict:
        """Rebuild the live FAISS index without tombstones (training IVF / re-tuning when applicable).

        The build reads a consistent SQLite state on its own connection without holding the store lock, so searches
        and writes go on; writes made meanwhile are reconciled into the new index when it is installed.
        """
        with self._maint:
            with self._lock:
                live = self._open_live()
                before = len(live.dead)
            reader = live.db.reader()
            try:
                index, got = build_from_db(reader, live.cfg)
            finally:
                reader.close()
            ann.save(index, live.path / INDEX_FILE)  # the snapshot; rows written meanwhile replay on open
            with self._lock:
                if self._open_live() is not live:  # cannot happen while _maint is held; cheap to make sure
                    raise Conflict("the live version changed during compaction")
                live.install(index)
                return {"tombstones_removed": before, "index_type": ann.index_type(index), "recall": got,
                        "params": ann.params(index)}

    def start_rebuild(self, source: Source, total: int, *, bundle_id: str | None = None, kind: str | None = None,
                      min_recall: float | None = None) -> RebuildJob:
        """Build a new version from `source` (pairs of (ItemRecord, embedding), or a callable returning them) in a
        background thread; `total` is how many pairs it will yield (validated). Searches and writes keep using the
        live version until the new one validates and is swapped in. One rebuild at a time (Conflict otherwise)."""
        if kind is not None:
            dataclasses.replace(self.config, kind=kind)  # validates the kind name
        if not isinstance(total, int) or total < 0:
            raise BadRequest(f"total must be an integer >= 0, got {total!r}")
        with self._lock:
            live = self._open_live()
            if self._job is not None and self._job.running:
                raise Conflict(f"rebuild {self._job.progress().version} is already running")
            name = layout.next_version(self.root)
            self._job = RebuildJob(self, self._dir(name), source, total, bundle_id or self.bundle_id,
                                   kind or live.cfg.kind, min_recall)
            self._rebuild_log = []
            self._job.start()
            return self._job

    @property
    def rebuild_job(self) -> RebuildJob | None:
        return self._job

    def _swap_in(self, job: RebuildJob, new: Version) -> None:
        """Called by the rebuild thread after validation: replay, switch CURRENT, keep the old version for rollback."""
        with self._maint, self._lock:
            live = self._open_live()
            if job.cancelled:
                raise Cancelled()
            # Each logged id gets its state in the live version *now*: later entries for the same id agree with it.
            # Puts bypass the duplicate-hash check: they were acknowledged, so they must land.
            for op, item_id in self._rebuild_log or []:
                got = live.db.get(item_id) if op == "put" else None
                if got is not None:
                    new.put_many([(got[1], live.db.embedding(item_id))], upsert=True, check_hash=False)
                else:
                    new.delete(item_id)  # absent from the new version already is fine too
            if new.index.ntotal - len(new.dead) != new.db.count():
                raise ValueError("replaying writes made during the rebuild left FAISS and SQLite out of step")
            new.snapshot()
            layout.write_pointer(self.root, new.name, live.name)  # the switch: atomic, durable
            self._live, self._previous = new, live.name
            self._rebuild_log = None
            live.close()
            new.attach_gpu()
            layout.remove_unreferenced(self.root, {new.name, live.name})

    def _rebuild_finished(self, job: RebuildJob) -> None:
        with self._lock:
            if self._job is job:
                self._rebuild_log = None

    def rollback(self) -> str:
        """Make the previous version live again (and the current one the previous); returns its name."""
        with self._maint:
            with self._lock:
                live = self._open_live()
                if self._job is not None and self._job.running:
                    raise Conflict("a rebuild is running: cancel it before rolling back")
                if self._previous is None or not self._dir(self._previous).is_dir():
                    raise NotFound("there is no previous version to roll back to")
                previous = self._previous
            # Open outside the store lock: nothing writes the previous version, and _maint excludes other swaps.
            older = Version.open(self._dir(previous), self.config)
            with self._lock:
                if live.writes_since_snapshot:
                    live.snapshot()
                layout.write_pointer(self.root, older.name, live.name)
                self._live, self._previous = older, live.name
                live.close()
                return older.name

    def close(self) -> None:
        """Cancel a running rebuild, snapshot the live FAISS index when it changed, release the directory."""
        job = self._job
        if job is not None and job.running:
            job.cancel()
            job.wait()  # outside the lock: the job takes it to finish
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._live.writes_since_snapshot:
                self._live.snapshot()
            self._live.close()
            self._root_lock.release()
