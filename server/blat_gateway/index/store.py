"""`IndexStore`: the gateway's audio index, over one engine (`VectorIndex`, protocol.py): FAISS + SQLite on this
host (faiss_index.py), or a Milvus deployment (milvus.py).

What every engine shares lives here: argument checks, one lock that serialises calls (searches included; each is
short), the background rebuild (rebuild.py) and the log of writes made while it runs, replayed into the new version
just before the swap so no acknowledged write is lost.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from blat_gateway.errors import BackendDown, BadRequest, Conflict, NotFound
from blat_gateway.index.protocol import AnnConfig, Staging, VectorIndex, new_meta
from blat_gateway.index.rebuild import Cancelled, RebuildJob, Source
from blat_gateway.index.records import MAX_K, Hit, IndexStats, ItemRecord, SearchFilter, as_unit_rows, check_id


class IndexStore:
    """Open (or create) the index for embeddings of `dim` floats from bundle `bundle_id`.

    The engine: FAISS versions under `root` by default, or `milvus` (a `MilvusConfig`: a server's URI, or a local
    file for milvus-lite; `root` is then unused). `dim`, `bundle_id` and `kind` describe an index to create; an
    existing one keeps its own (see `stats()`), and while its live version holds another bundle's embeddings, adds
    are refused until a rebuild replaces it.
    """

    def __init__(
        self,
        root: str | Path | None,
        dim: int,
        bundle_id: str,
        kind: str = "flat",
        *,
        config: AnnConfig | None = None,
        milvus=None,
    ):
        if dim < 1 or not bundle_id:
            raise BadRequest("dim >= 1 and a bundle_id are required")
        self.dim, self.bundle_id = int(dim), bundle_id
        self.config = config if config is not None else AnnConfig(kind=kind)
        self._lock = threading.RLock()  # guards the engine's live version
        self._maint = threading.Lock()  # one of compact / rollback / rebuild swap at a time
        self._job: RebuildJob | None = None
        self._rebuild_log: list[tuple[str, str]] | None = None  # writes during a rebuild, replayed before its swap
        meta = new_meta(self.dim, bundle_id, self.config.kind)
        if milvus is not None:
            from blat_gateway.index.milvus import MilvusIndex  # pymilvus only where Milvus is configured

            self.index: VectorIndex = MilvusIndex(milvus, meta, self.config)
            self.engine = "milvus"
        else:
            from blat_gateway.index.faiss_index import FaissIndex

            if root is None:
                raise BadRequest("the FAISS engine needs an index directory")
            self.index, self.engine = FaissIndex(root, meta, self.config), "faiss"
        self._closed = False

    def _open(self) -> VectorIndex:
        if self._closed:
            raise BackendDown("the index store is closed")
        return self.index

    def __enter__(self) -> IndexStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- writes ----------------------------------------------------------------------------------------------------

    def add(self, item: ItemRecord, embedding: np.ndarray, upsert: bool = False, dedupe: bool = False) -> ItemRecord:
        """Store one item; returns it as stored (with `added_at`). Durable when this returns.

        Conflict: the id exists and not `upsert`, or, with `dedupe`, the same content hash is stored under another
        id (`details["existing_id"]` names it). Without `dedupe` the same sound may be stored under several ids.
        """
        return self.add_many([(item, embedding)], upsert=upsert, dedupe=dedupe)[0]

    def add_many(
        self, pairs: Iterable[tuple[ItemRecord, np.ndarray]], upsert: bool = False, dedupe: bool = False
    ) -> list[ItemRecord]:
        """Store several items at once: all of them, or none when one fails."""
        pairs = list(pairs)
        with self._lock:
            index = self._open()
            meta = index.meta
            if meta.bundle_id != self.bundle_id or meta.dim != self.dim:
                raise Conflict(
                    f"the live index holds embeddings of bundle {meta.bundle_id!r} (dim {meta.dim}), not "
                    f"{self.bundle_id!r} (dim {self.dim}): rebuild the index before adding",
                    index_bundle=meta.bundle_id,
                    serving_bundle=self.bundle_id,
                )
            rows = [(item, as_unit_rows(vec, self.dim)[0]) for item, vec in pairs]
            stored = index.put_many(rows, upsert=upsert, check_hash=dedupe)
            if self._rebuild_log is not None:
                self._rebuild_log.extend(("put", item.id) for item in stored)
            return stored

    def delete(self, item_id: str) -> ItemRecord:
        """Remove an item (durable when this returns); returns what was stored. NotFound if absent."""
        check_id(item_id)
        with self._lock:
            removed = self._open().delete(item_id)
            if removed is None:
                raise NotFound(f"no item {item_id!r}", id=item_id)
            if self._rebuild_log is not None:
                self._rebuild_log.append(("del", item_id))
            return removed

    # -- reads -----------------------------------------------------------------------------------------------------

    def get(self, item_id: str) -> ItemRecord:
        check_id(item_id)
        with self._lock:
            got = self._open().get(item_id)
        if got is None:
            raise NotFound(f"no item {item_id!r}", id=item_id)
        return got

    def embedding(self, item_id: str) -> np.ndarray:
        """The stored (D,) unit embedding: lets search-by-id work while the model backend is down."""
        check_id(item_id)
        with self._lock:
            vec = self._open().embedding(item_id)
        if vec is None:
            raise NotFound(f"no item {item_id!r}", id=item_id)
        return vec

    def page(
        self, after: str = "", limit: int = 100, filter: SearchFilter | None = None
    ) -> tuple[list[ItemRecord], str]:
        """Up to `limit` items in id order after the id `after` ("" from the start) that pass `filter`, and the live
        version's name, read together."""
        if not isinstance(limit, int) or not 1 <= limit <= MAX_K:
            raise BadRequest(f"limit must be an integer in 1..{MAX_K}, got {limit!r}")
        flt = None if filter is None or filter.empty else filter
        with self._lock:
            index = self._open()
            return index.page(flt, after, limit), index.name

    def live_pairs(self, batch: int = 512) -> Iterator[tuple[ItemRecord, np.ndarray]]:
        """Every stored (item, embedding) of the live version, in id order, read a page at a time (the lock is held
        per page, so writes go on between pages; what they change is replayed by a rebuild running meanwhile)."""
        after = ""
        while True:
            with self._lock:
                index = self._open()
                items = index.page(None, after, batch)
                vecs = index.embeddings_by_id([it.id for it in items])
            yield from ((it, vecs[it.id]) for it in items if it.id in vecs)
            if len(items) < batch:
                return
            after = items[-1].id

    def search(self, query: np.ndarray, k: int = 10, filter: SearchFilter | dict | None = None) -> list[list[Hit]]:
        """query (D,) or (Q, D) -> per query the k best hits (cosine score, best first) that pass `filter`."""
        return self.search_at(query, k, filter)[0]

    def search_at(
        self, query: np.ndarray, k: int = 10, filter: SearchFilter | dict | None = None
    ) -> tuple[list[list[Hit]], str]:
        """`search`, and the name of the version that answered it (read together: a swap cannot come between)."""
        if not isinstance(k, int) or not 1 <= k <= MAX_K:
            raise BadRequest(f"k must be an integer in 1..{MAX_K}, got {k!r}")
        if isinstance(filter, dict):  # as it arrives in a JSON request
            try:
                filter = SearchFilter(**filter)
            except TypeError:
                known = [f.name for f in dataclasses.fields(SearchFilter)]
                raise BadRequest(f"unknown filter keys {sorted(set(filter) - set(known))}; known: {known}") from None
        flt = None if filter is None or filter.empty else filter
        with self._lock:
            index = self._open()
            x = as_unit_rows(query, index.meta.dim, "query")
            results, version = index.search(x, k, flt), index.name
        return [[Hit(item.id, score, item) for score, item in hits] for hits in results], version

    def search_by_id(self, item_id: str, k: int = 10, filter: SearchFilter | dict | None = None) -> list[Hit]:
        """The k items nearest to a stored item (itself excluded), from its stored embedding."""
        return self.search_by_id_at(item_id, k, filter)[0]

    def search_by_id_at(
        self, item_id: str, k: int = 10, filter: SearchFilter | dict | None = None
    ) -> tuple[list[Hit], str]:
        vec = self.embedding(item_id)
        hits, version = self.search_at(vec, min(k + 1, MAX_K), filter)
        return [h for h in hits[0] if h.id != item_id][:k], version

    @property
    def version(self) -> str:
        """The live version's name (what a search answer says it searched), without computing the statistics."""
        return self._open().name

    def stats(self) -> IndexStats:
        with self._lock:
            index = self._open()
            meta, s = index.meta, index.stats()
            job = self._job.progress() if self._job is not None else None
            return IndexStats(
                version=index.name,
                previous_version=index.previous,
                dim=meta.dim,
                bundle_id=meta.bundle_id,
                serving_bundle_id=self.bundle_id,
                kind=meta.kind,
                engine=self.engine,
                rebuild=job,
                **s,
            )

    # -- maintenance -----------------------------------------------------------------------------------------------

    def snapshot(self) -> None:
        """Persist what makes the next open faster (FAISS: the index file, so fewer rows are replayed)."""
        with self._lock:
            self._open().snapshot()

    def compact(self) -> dict:
        """Rebuild the live search structure without deleted rows (FAISS: tombstones out, IVF trained / re-tuned).
        Searches and writes go on meanwhile."""
        with self._maint:
            return self._open().compact(self._lock)

    def start_rebuild(
        self,
        source: Source,
        total: int,
        *,
        bundle_id: str | None = None,
        kind: str | None = None,
        min_recall: float | None = None,
        max_unreadable_share: float = 0.5,
        exact_total: bool = True,
        dedupe: bool = False,
    ) -> RebuildJob:
        """Build a new version from `source` (pairs of (ItemRecord, embedding), or a callable returning them) in a
        background thread; `total` is how many pairs it will yield (validated), `Skipped` entries included: the
        job fails when more than `max_unreadable_share` of them are. Searches and writes keep using the
        live version until the new one validates and is swapped in. One rebuild at a time (Conflict otherwise).
        exact_total=False: `total` is an estimate, and the job takes what the source yields. dedupe: an entry with
        the sound of an earlier one is skipped (without it, the same sound may be stored under several ids)."""
        if kind is not None:
            dataclasses.replace(self.config, kind=kind)  # validates the kind name
        if not isinstance(total, int) or total < 0:
            raise BadRequest(f"total must be an integer >= 0, got {total!r}")
        with self._lock:
            index = self._open()
            if self._job is not None and self._job.running:
                raise Conflict(f"rebuild {self._job.progress().version} is already running")
            kind = kind or index.meta.kind
            staging = index.new_version(
                new_meta(self.dim, bundle_id or self.bundle_id, kind), dataclasses.replace(self.config, kind=kind)
            )
            self._job = RebuildJob(
                staging,
                source,
                total,
                bundle_id or self.bundle_id,
                min_recall,
                max_unreadable_share,
                exact_total=exact_total,
                dedupe=dedupe,
                dim=self.dim,
                serving_bundle=self.bundle_id,
                swap_in=self.swap_in,
                on_finished=self.rebuild_finished,
            )
            self._rebuild_log = []
            self._job.start()
            return self._job

    @property
    def rebuild_job(self) -> RebuildJob | None:
        return self._job

    def swap_in(self, job: RebuildJob, staging: Staging) -> None:
        """The rebuild thread's last step, after validation: replay the writes made meanwhile, then switch."""
        with self._maint, self._lock:
            index = self._open()
            if job.cancelled:
                raise Cancelled()
            # Each logged id gets its state in the live version *now*: later entries for the same id agree with it.
            # Puts bypass the duplicate-hash check: they were acknowledged, so they must land.
            for op, item_id in self._rebuild_log or []:
                got = index.get(item_id) if op == "put" else None
                if got is not None:
                    staging.put_many([(got, index.embedding(item_id))], upsert=True, check_hash=False)
                else:
                    staging.delete(item_id)  # absent from the new version already is fine too
            index.swap(staging)
            self._rebuild_log = None

    def rebuild_finished(self, job: RebuildJob) -> None:
        with self._lock:
            if self._job is job:
                self._rebuild_log = None

    def rollback(self) -> str:
        """Make the previous version live again; returns its name. One step back, not a toggle: the version rolled
        back from is dropped, and there is no previous version until the next rebuild."""
        with self._maint:
            with self._lock:
                index = self._open()
                if self._job is not None and self._job.running:
                    raise Conflict("a rebuild is running: cancel it before rolling back")
            return index.rollback(self._lock)

    def close(self) -> None:
        """Cancel a running rebuild, then close the engine (FAISS: snapshot when changed, release the directory)."""
        job = self._job
        if job is not None and job.running:
            job.cancel()
            job.wait()  # outside the lock: the job takes it to finish
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self.index.close()
