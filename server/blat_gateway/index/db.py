"""One version's SQLite database: item metadata and embeddings, and the store's write-ahead journal.

SQLite in WAL mode with `synchronous=FULL` fsyncs the log before COMMIT returns, and its log frames are
checksummed and salted, so a torn tail (a kill -9 or power cut mid-write) is detected and dropped on the next open.
A write is acknowledged only after its COMMIT, hence every acknowledged write survives and an unacknowledged one is
either whole or absent: row, tags and embedding commit together. The FAISS index is a cache rebuilt from these rows.
Rows are written one commit at a time, so the file carries no checksum of ours: at open, SQLite checks its own
structure (`PRAGMA quick_check`, one pass over the file) and a damaged file is refused (`IndexDamaged`).
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from blat_gateway.errors import Conflict, IndexDamaged
from blat_gateway.index.protocol import VersionMeta
from blat_gateway.index.records import ItemRecord, SearchFilter

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    -- fid is the item's FAISS id. AUTOINCREMENT never reuses a value, so a stale vector left in a FAISS snapshot can
    -- never alias a newer item; an upsert gets a new fid because rows (and their vectors) are immutable.
    fid INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    source_uri TEXT NOT NULL,
    duration_s REAL,
    tags TEXT NOT NULL,          -- JSON list in the user's order; the tags table below is for filtering
    caption TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    added_at REAL NOT NULL,
    extra TEXT NOT NULL          -- JSON object
);
-- Embeddings apart from metadata, so filter scans over items do not drag 2 KB vectors through the page cache.
CREATE TABLE IF NOT EXISTS vectors (fid INTEGER PRIMARY KEY, embedding BLOB NOT NULL);  -- float32 LE, unit norm
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);  -- tuned nprobe / efSearch
CREATE INDEX IF NOT EXISTS items_hash ON items(content_hash);
CREATE TABLE IF NOT EXISTS tags (tag TEXT NOT NULL, fid INTEGER NOT NULL, PRIMARY KEY (tag, fid)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS tags_fid ON tags(fid);
"""
COLUMNS = "fid, id, source_uri, duration_s, tags, caption, content_hash, added_at, extra"
CHUNK = 500  # ids per IN (...) query, well below SQLite's bound on bound parameters


def _record(row) -> tuple[int, ItemRecord]:
    fid, item_id, uri, dur, tags, caption, h, added, extra = row
    return fid, ItemRecord(
        id=item_id,
        source_uri=uri,
        duration_s=dur,
        tags=tuple(json.loads(tags)),
        caption=caption,
        content_hash=h,
        added_at=added,
        extra=json.loads(extra),
    )


def filter_sql(flt: SearchFilter) -> tuple[str, list]:
    """The WHERE clause equal to `flt.matches` (tags compare exactly; NULL durations fail any bound)."""
    where, params = [], []
    if flt.tags_any:
        where.append(f"fid IN (SELECT fid FROM tags WHERE tag IN ({','.join('?' * len(flt.tags_any))}))")
        params += flt.tags_any
    for tag in flt.tags_all:
        where.append("fid IN (SELECT fid FROM tags WHERE tag = ?)")
        params.append(tag)
    if flt.source_prefix:
        where.append("substr(source_uri, 1, ?) = ?")  # not LIKE: '%' and '_' in paths are literal here
        params += [len(flt.source_prefix), flt.source_prefix]
    if flt.min_duration_s is not None:
        where.append("duration_s >= ?")
        params.append(flt.min_duration_s)
    if flt.max_duration_s is not None:
        where.append("duration_s <= ?")
        params.append(flt.max_duration_s)
    for key, cond in flt.extra:
        clause, values = cond.sql(key)
        where.append(clause)
        params += values
    return " AND ".join(where) or "1", params


class VersionDB:
    """Not thread-safe on its own: the store serialises writers; other threads open their own `reader()`."""

    def __init__(self, path: Path, readonly: bool = False, check: bool = False):
        """check: verify an existing file before anything writes to it (IndexDamaged if it fails)."""
        self.path = path
        self._meta: VersionMeta | None = None
        uri = f"file:{path}?mode=ro" if readonly else f"file:{path}"
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE ... COMMIT), never implicit.
        self.conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        if check:
            self._check()
        if not readonly:
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")  # fsync the WAL at every COMMIT: the durability point
            self.conn.executescript(SCHEMA)

    @classmethod
    def create(cls, path: Path, meta: VersionMeta) -> VersionDB:
        db = cls(path)
        with db.tx():
            for key, value in vars(meta).items():
                db.conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))
        return db

    def _check(self) -> None:
        """SQLite's structural check (pages, b-trees, record formats; it reads the WAL too), then the version's meta:
        an empty or truncated-to-nothing file is a valid empty database to SQLite, but not a version."""
        try:
            problems = [r[0] for r in self.conn.execute("PRAGMA quick_check(5)") if r[0] != "ok"]
            if not problems:
                _ = self.meta  # reads and parses every meta key
        except (sqlite3.DatabaseError, TypeError, ValueError) as e:  # TypeError / ValueError: meta keys or JSON
            problems = [str(e)]
        if problems:
            self.conn.close()
            raise IndexDamaged(
                f"{self.path} is damaged: SQLite's check says {'; '.join(problems)[:300]}", file=str(self.path)
            )

    def reader(self) -> VersionDB:
        """A second connection (for another thread); in WAL mode its read transactions see one consistent state."""
        return VersionDB(self.path, readonly=True)

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def tx(self):
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    @property
    def meta(self) -> VersionMeta:
        if self._meta is None:  # written once at creation, never changed: read it once
            self._meta = VersionMeta(**{k: json.loads(v) for k, v in self.conn.execute("SELECT key, value FROM meta")})
        return self._meta

    # -- reads -----------------------------------------------------------------------------------------------------

    def count(self) -> int:
        return self.conn.execute("SELECT count(*) FROM items").fetchone()[0]

    def get(self, item_id: str) -> tuple[int, ItemRecord] | None:
        row = self.conn.execute(f"SELECT {COLUMNS} FROM items WHERE id = ?", (item_id,)).fetchone()
        return _record(row) if row else None

    def embedding(self, item_id: str) -> np.ndarray | None:
        row = self.conn.execute(
            "SELECT v.embedding FROM items i JOIN vectors v ON v.fid = i.fid WHERE i.id = ?", (item_id,)
        ).fetchone()
        return np.frombuffer(row[0], dtype="<f4").copy() if row else None

    def embeddings_by_id(self, ids: list[str]) -> dict[str, np.ndarray]:
        """The stored (D,) embeddings of these ids (absent ids are left out), a query per CHUNK ids."""
        out = {}
        for i in range(0, len(ids), CHUNK):
            part = ids[i : i + CHUNK]
            q = (
                "SELECT i.id, v.embedding FROM items i JOIN vectors v ON v.fid = i.fid "
                f"WHERE i.id IN ({','.join('?' * len(part))})"
            )
            out.update(
                (item_id, np.frombuffer(blob, dtype="<f4").copy()) for item_id, blob in self.conn.execute(q, part)
            )
        return out

    def id_with_hash(self, content_hash: str, other_than: str) -> str | None:
        if not content_hash:
            return None
        row = self.conn.execute(
            "SELECT id FROM items WHERE content_hash = ? AND id != ? LIMIT 1", (content_hash, other_than)
        ).fetchone()
        return row[0] if row else None

    def records(self, fids) -> dict[int, ItemRecord]:
        out = {}
        fids = [int(f) for f in fids]
        for i in range(0, len(fids), CHUNK):
            part = fids[i : i + CHUNK]
            q = f"SELECT {COLUMNS} FROM items WHERE fid IN ({','.join('?' * len(part))})"
            out.update(_record(row) for row in self.conn.execute(q, part))
        return out

    def page(self, flt: SearchFilter | None, after: str, limit: int) -> list[ItemRecord]:
        """Up to `limit` items whose id sorts after `after` (byte order: SQLite's BINARY collation), passing `flt`,
        in id order. Keyset paging: the id's UNIQUE index makes each page cost its own size."""
        where, params = filter_sql(flt) if flt else ("1", [])
        rows = self.conn.execute(
            f"SELECT {COLUMNS} FROM items WHERE id > ? AND {where} ORDER BY id LIMIT ?", [after, *params, limit]
        )
        return [_record(row)[1] for row in rows]

    def live_fids(self) -> np.ndarray:
        return np.fromiter((r[0] for r in self.conn.execute("SELECT fid FROM items")), dtype=np.int64)

    def matching_fids(self, flt: SearchFilter) -> np.ndarray:
        where, params = filter_sql(flt)
        return np.fromiter(
            (r[0] for r in self.conn.execute(f"SELECT fid FROM items WHERE {where}", params)), dtype=np.int64
        )

    def embeddings(self, fids) -> tuple[np.ndarray, np.ndarray]:
        """(fids that exist (n,), embeddings (n, D)) in the order found."""
        found, vecs = [], []
        fids = [int(f) for f in fids]
        for i in range(0, len(fids), CHUNK):
            part = fids[i : i + CHUNK]
            for fid, blob in self.conn.execute(
                f"SELECT fid, embedding FROM vectors WHERE fid IN ({','.join('?' * len(part))})", part
            ):
                found.append(fid)
                vecs.append(np.frombuffer(blob, dtype="<f4"))
        return np.array(found, dtype=np.int64), (np.stack(vecs) if vecs else np.zeros((0, self.meta.dim), np.float32))

    def iter_embeddings(self, batch: int = 4096) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (fids (n,), embeddings (n, D)) over all items in fid order.

        One read transaction spans the whole scan, so the rows come from a single consistent state.
        """
        self.conn.execute("BEGIN")
        try:
            cur = self.conn.execute("SELECT fid, embedding FROM vectors ORDER BY fid")
            while rows := cur.fetchmany(batch):
                yield (
                    np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows)),
                    np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4").reshape(len(rows), -1),
                )
        finally:
            self.conn.execute("COMMIT")

    def iter_fids(self, fids: np.ndarray, batch: int = 4096) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for i in range(0, len(fids), batch):
            yield self.embeddings(fids[i : i + batch])

    def sample_embeddings(self, n: int, rng: np.random.Generator) -> np.ndarray:
        fids = self.live_fids()
        pick = rng.choice(fids, size=min(n, len(fids)), replace=False) if len(fids) else fids
        return self.embeddings(pick)[1]

    def setting(self, key: str):
        row = self.conn.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def set_setting(self, key: str, value) -> None:
        self.conn.execute("INSERT OR REPLACE INTO settings VALUES (?, ?)", (key, json.dumps(value)))

    # -- writes (call inside `tx()`) ------------------------------------------------------------------------------

    def put(
        self, item: ItemRecord, embedding: np.ndarray, upsert: bool, check_hash: bool = True
    ) -> tuple[int, int | None, ItemRecord]:
        """Insert or replace one item -> (new fid, replaced fid or None, the stored record)."""
        old = self.conn.execute("SELECT fid FROM items WHERE id = ?", (item.id,)).fetchone()
        if old and not upsert:
            raise Conflict(f"item {item.id!r} already exists (use upsert to replace it)", id=item.id)
        if check_hash and (dup := self.id_with_hash(item.content_hash, item.id)):
            raise Conflict(
                f"the same audio (content hash {item.content_hash[:16]}...) is already stored as {dup!r}",
                id=item.id,
                existing_id=dup,
                content_hash=item.content_hash,
            )
        if old:
            self._delete_fid(old[0])
        if item.added_at is None:
            item = dataclasses.replace(item, added_at=time.time())
        cur = self.conn.execute(
            "INSERT INTO items (id, source_uri, duration_s, tags, caption, content_hash, added_at, extra)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                item.id,
                item.source_uri,
                item.duration_s,
                json.dumps(list(item.tags)),
                item.caption,
                item.content_hash,
                item.added_at,
                json.dumps(item.extra),
            ),
        )
        fid = cur.lastrowid
        blob = np.ascontiguousarray(embedding, dtype="<f4").tobytes()
        self.conn.execute("INSERT INTO vectors VALUES (?, ?)", (fid, blob))
        self.conn.executemany("INSERT INTO tags VALUES (?, ?)", [(t, fid) for t in item.tags])
        return fid, (old[0] if old else None), item

    def delete(self, item_id: str) -> int | None:
        old = self.conn.execute("SELECT fid FROM items WHERE id = ?", (item_id,)).fetchone()
        if old:
            self._delete_fid(old[0])
        return old[0] if old else None

    def _delete_fid(self, fid: int) -> None:
        self.conn.execute("DELETE FROM tags WHERE fid = ?", (fid,))
        self.conn.execute("DELETE FROM vectors WHERE fid = ?", (fid,))
        self.conn.execute("DELETE FROM items WHERE fid = ?", (fid,))
