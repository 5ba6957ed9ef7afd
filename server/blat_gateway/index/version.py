"""One version directory: its SQLite rows (the truth) and its FAISS index (a cache kept in step with them).

Opening a version loads `index.faiss` and *reconciles* it with SQLite: fids in SQLite but not in FAISS are added
(the writes after the snapshot, i.e. the replay), fids in FAISS but not in SQLite are removed or tombstoned. Because
fids are never reused and rows never change, this diff is always correct, whatever the snapshot's age. Not
thread-safe: `IndexStore` serialises access.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np

from blat_gateway.errors import IndexDamaged
from blat_gateway.index import ann, exact
from blat_gateway.index.db import VersionDB
from blat_gateway.index.exact import QUERY_NOISES, SAMPLE_QUERIES, TUNE_MARGIN
from blat_gateway.index.layout import fsync_dir
from blat_gateway.index.protocol import AnnConfig, VersionMeta
from blat_gateway.index.records import ItemRecord, SearchFilter

log = logging.getLogger(__name__)

DB_FILE, INDEX_FILE = "items.sqlite", "index.faiss"
FILTER_OVERFETCH = 4  # a filtered search starts by asking FAISS for 4x the candidates
FETCH_ROUNDS = 3  # rounds of 4x more candidates for queries still short of k, before an exact scan answers them
SNAPSHOT_AFTER_REPLAY = 1000  # write a fresh snapshot at open when at least this many rows had to be replayed
# Deletes only tombstone: FAISS's remove_ids is O(N) per call (about 20 ms at 1M vectors), too slow under the store
# lock for every delete. Tombstones are purged in one batch once they pass this share of the index: amortised O(1)
# per delete, and at most a tenth of the candidates are wasted on tombstones (flat / IVF; HNSW needs `compact()`).
PURGE_FRACTION, PURGE_MIN = 0.1, 256


def query_sets(db: VersionDB, seed: int = 0) -> list[exact.QuerySet]:
    """Stand-ins for real queries when no query log exists: stored vectors perturbed at each of QUERY_NOISES, with
    their exact top-k; `seed` keeps tuning's and validation's sets apart."""
    return exact.query_sets(db.sample_embeddings, db.iter_embeddings, QUERY_NOISES, SAMPLE_QUERIES, seed)


def build_from_db(db: VersionDB, cfg: AnnConfig, tune: bool = True) -> tuple[ann.faiss.Index, float | None]:
    """A new index over every row of `db` (IVF trained; nprobe / efSearch tuned when `tune`) -> (index, recall@10).

    Recall is measured only for approximate indexes (None for flat, which is exact by construction).
    """
    n, dim = db.count(), db.meta.dim
    train = None
    if cfg.kind == "ivf" and n >= cfg.ivf_min_items:
        # A few hundred points per list is plenty for k-means; more only slows training.
        train = db.sample_embeddings(min(n, max(256 * int(np.sqrt(n)), 10_000)), np.random.default_rng(1))
    index = ann.build(dim, cfg, n, db.iter_embeddings(), train)
    got = None
    if tune and n and ann.index_type(index) != "flat":
        got = ann.tune(index, query_sets(db), min(1.0, cfg.target_recall + TUNE_MARGIN))
    return index, got


class Version:
    def __init__(self, path: Path, db: VersionDB, index, cfg: AnnConfig):
        self.path, self.db, self.index = path, db, index
        self.cfg = dataclasses.replace(cfg, kind=db.meta.kind)  # the version's own kind wins over the store's default
        self.dead: set[int] = set()  # fids inside the searched index whose rows are gone: filtered at query time
        self.count = db.count()
        self.writes_since_snapshot = 0
        self.gpu = None

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def meta(self) -> VersionMeta:
        return self.db.meta

    @classmethod
    def create(cls, path: Path, meta: VersionMeta, cfg: AnnConfig) -> Version:
        path.mkdir(parents=True)
        db = VersionDB.create(path / DB_FILE, meta)
        fsync_dir(path)
        fsync_dir(path.parent)
        return cls(path, db, ann.empty(meta.dim, dataclasses.replace(cfg, kind=meta.kind)), cfg)

    @classmethod
    def open(cls, path: Path, cfg: AnnConfig) -> Version:
        """IndexDamaged when items.sqlite is missing or fails SQLite's check; a damaged snapshot is only logged,
        rebuilt from the rows and written again (it is a cache of them)."""
        if not (path / DB_FILE).is_file():  # never let SQLite create an empty database in its place
            raise IndexDamaged(f"index version {path} has no {DB_FILE}", file=str(path / DB_FILE))
        for tmp in path.glob("*.tmp"):  # a snapshot write cut short by a kill
            tmp.unlink(missing_ok=True)
        db = VersionDB(path / DB_FILE, check=True)
        vcfg = dataclasses.replace(cfg, kind=db.meta.kind)
        index = ann.load(path / INDEX_FILE, db.meta.dim)
        rebuilt = index is None
        if rebuilt:  # no snapshot yet, or a damaged one: the rows in SQLite are enough to rebuild it
            index, _ = build_from_db(db, vcfg, tune=False)
            inner = ann.faiss.downcast_index(index.index)
            for key, obj in (("nprobe", inner), ("efSearch", getattr(inner, "hnsw", None))):
                if obj is not None and hasattr(obj, key) and (v := db.setting(key)) is not None:
                    setattr(obj, key, min(int(v), getattr(inner, "nlist", int(v))))
        version = cls(path, db, index, cfg)
        added, _ = version.reconcile()
        if added >= SNAPSHOT_AFTER_REPLAY or (rebuilt and (path / INDEX_FILE).exists()):
            version.snapshot()  # a damaged snapshot is replaced now, not found again at every start
        version.attach_gpu()
        return version

    def close(self) -> None:
        self.db.close()

    # -- keeping FAISS in step with SQLite -------------------------------------------------------------------------

    def reconcile(self) -> tuple[int, int]:
        """Make the index hold exactly the live rows -> (vectors added, stale vectors removed or tombstoned)."""
        in_index, live = ann.ids(self.index), self.db.live_fids()
        missing, stale = np.setdiff1d(live, in_index), np.setdiff1d(in_index, live)
        for fids, vecs in self.db.iter_fids(missing):
            self.index.add_with_ids(np.ascontiguousarray(vecs, dtype=np.float32), fids)
        self.dead = {int(f) for f in stale}
        self._purge(force=True)
        self.count = len(live)
        if len(missing) or len(stale):
            log.info("version %s: replayed %d rows, dropped %d stale vectors", self.name, len(missing), len(stale))
        return len(missing), len(stale)

    def install(self, index) -> None:
        """Swap in a freshly built index (compaction) and bring it up to date with rows written meanwhile."""
        self.index = index
        self.reconcile()
        self.save_params()
        self.attach_gpu()

    def save_params(self) -> None:
        """Keep tuned nprobe / efSearch in SQLite too, for an index rebuilt from rows when its snapshot is lost."""
        with self.db.tx():
            for key, value in ann.params(self.index).items():
                self.db.set_setting(key, value)

    def attach_gpu(self) -> None:
        self.gpu = ann.to_gpu(self.index) if self.cfg.use_gpu else None

    def snapshot(self) -> None:
        ann.save(self.index, self.path / INDEX_FILE)
        self.writes_since_snapshot = 0

    def _add(self, fid: int, vec: np.ndarray) -> None:
        row = np.ascontiguousarray(vec[None, :], dtype=np.float32)
        self.index.add_with_ids(row, np.array([fid], dtype=np.int64))
        if self.gpu is not None:
            self.gpu.add_with_ids(row, np.array([fid], dtype=np.int64))

    def _remove(self, fid: int) -> None:
        self.dead.add(fid)
        self._purge()

    def _purge(self, force: bool = False) -> None:
        """Drop tombstoned vectors from FAISS in one pass, when it supports removal (not HNSW, not a GPU copy)."""
        if not self.dead or self.gpu is not None or not ann.supports_remove(self.index):
            return
        if force or len(self.dead) >= max(PURGE_MIN, PURGE_FRACTION * self.index.ntotal):
            self.index.remove_ids(np.fromiter(self.dead, dtype=np.int64, count=len(self.dead)))
            self.dead = set()

    # -- writes ----------------------------------------------------------------------------------------------------

    def put_many(
        self, pairs: list[tuple[ItemRecord, np.ndarray]], upsert: bool, check_hash: bool = True
    ) -> list[ItemRecord]:
        """Commit all pairs in one transaction (all or nothing), then update FAISS. Embeddings are unit rows."""
        done = []
        with self.db.tx():
            for item, vec in pairs:
                fid, old, stored = self.db.put(item, vec, upsert, check_hash)
                done.append((fid, old, stored, vec))
        # Committed: from here on the write is durable; FAISS is only a cache of it.
        for fid, old, _, vec in done:
            if old is not None:
                self._remove(old)
                self.count -= 1
            self._add(fid, vec)
            self.count += 1
        self.writes_since_snapshot += len(done)
        return [stored for _, _, stored, _ in done]

    def delete(self, item_id: str) -> ItemRecord | None:
        with self.db.tx():
            got = self.db.get(item_id)
            if got is not None:
                self.db.delete(item_id)
        if got is None:
            return None
        self._remove(got[0])
        self.count -= 1
        self.writes_since_snapshot += 1
        return got[1]

    # -- search ----------------------------------------------------------------------------------------------------

    def search(self, x: np.ndarray, k: int, flt: SearchFilter | None) -> list[list[tuple[float, ItemRecord]]]:
        """x (Q, D) unit rows -> per query up to k (score, item), best first."""
        flt = None if flt is None or flt.empty else flt
        out: list[list[tuple[float, ItemRecord]]] = [[] for _ in range(len(x))]
        if self.count == 0:
            return out
        # Tombstones and filtered-out items take result slots: ask for more than k, scaled by the dead share.
        dead_share = len(self.dead) / max(self.index.ntotal, 1)
        fetch = int(k * (FILTER_OVERFETCH if flt else 1) / max(1.0 - dead_share, 0.1)) + (8 if self.dead else 0)
        todo = list(range(len(x)))
        for _ in range(FETCH_ROUNDS):
            index = self.gpu if self.gpu is not None and fetch <= 2048 else self.index  # FAISS GPU caps k at 2048
            fetch = min(fetch, index.ntotal)
            scores, fids = ann.search(index, x[todo], fetch)
            records = self.db.records(np.unique(fids[fids >= 0]))
            short = []
            for j, q in enumerate(todo):
                hits = []
                for s, f in zip(scores[j], fids[j]):
                    item = records.get(int(f))  # None: padding (-1) or a tombstone
                    if item is not None and (flt is None or flt.matches(item)):
                        hits.append((float(s), item))
                        if len(hits) == k:
                            break
                out[q] = hits
                # Short of k although more may exist: unseen candidates remain, or the ANN index came back short.
                if len(hits) < k and len(hits) < self.count and (fetch < index.ntotal or (fids[j] < 0).any()):
                    short.append(q)
            todo = short
            if not todo or fetch >= index.ntotal:
                break
            fetch *= 4
        if todo:  # a very selective filter (or a starved ANN index): an exact scan over the matching rows
            for q, hits in zip(todo, self._exact(x[todo], k, flt)):
                out[q] = hits
        return out

    def _exact(self, x: np.ndarray, k: int, flt: SearchFilter | None) -> list[list[tuple[float, ItemRecord]]]:
        chunks = self.db.iter_fids(self.db.matching_fids(flt)) if flt else self.db.iter_embeddings()
        scores, fids = exact.exact_topk(chunks, x, k)
        records = self.db.records(np.unique(fids[fids >= 0]))
        return [
            [(float(s), records[int(f)]) for s, f in zip(scores[q], fids[q]) if f >= 0 and int(f) in records]
            for q in range(len(x))
        ]

    def stats(self) -> dict:
        kind = ann.index_type(self.index)
        return {
            "count": self.count,
            "index_type": kind,
            "index_total": int(self.index.ntotal),
            "tombstones": len(self.dead),
            "writes_since_snapshot": self.writes_since_snapshot,
            "params": ann.params(self.index),
            "gpu": self.gpu is not None,
            "needs_compaction": len(self.dead) > max(100, self.count // 5)
            or (self.cfg.kind == "ivf" and kind == "flat" and self.count >= self.cfg.ivf_min_items),
        }
