"""Rows, filters and item operations on one Milvus collection (or alias): what `MilvusIndex`'s live version and a
`MilvusStaging` version share. Milvus's own calls fail as `BackendDown` (503) with Milvus's message.
"""

from __future__ import annotations

import dataclasses
import heapq
import json
import time
from collections.abc import Iterator, Sequence

import numpy as np

from blat_gateway.errors import BackendDown, BadRequest, Conflict
from blat_gateway.index.protocol import Pair, Scored
from blat_gateway.index.records import ItemRecord, SearchFilter

MAX_VARCHAR = 65_535  # bytes: Milvus's limit for one VARCHAR value
NOT_LOADED = 101  # Milvus's error code for a read of a collection that is not loaded
READS = {"search", "query", "get", "query_iterator"}  # each takes the collection (or alias) first
# Reads wait for this process's own writes (pymilvus keeps the last write's timestamp per collection name), not for
# the server's next time tick: Strong made every read wait for it, 200 ms p50 and 400 ms p99 per search on a Milvus
# server with its default 200 ms tick (BENCHMARKS.md). A replica sees the writer's writes a tick later.
READ_CONSISTENCY = "Session"
FIELDS = ["id", "source_uri", "duration_s", "tags", "caption", "content_hash", "added_at", "extra"]


# -- expressions ----------------------------------------------------------------------------------------------------


def _str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _strs(values: Sequence[str]) -> str:
    return "[" + ", ".join(_str(v) for v in values) + "]"


def _utf8(item_id: str) -> bytes:
    return item_id.encode()


def _above_prefix(prefix: str) -> str | None:
    """The least string above every string that starts with `prefix` (None: there is none). Milvus orders strings by
    their UTF-8 bytes, which is code point order."""
    chars = list(prefix)
    while chars:
        c = ord(chars.pop()) + 1
        if c <= 0x10FFFF:
            return "".join(chars) + chr(0xE000 if 0xD800 <= c <= 0xDFFF else c)  # surrogates are no characters
    return None


def milvus_filter(flt: SearchFilter | None) -> str:
    """The boolean expression equal to `flt.matches` (an unknown duration fails any bound, as in SQL: it is null in
    collections with a nullable field, UNKNOWN_DURATION in the others)."""
    if flt is None:
        return ""
    parts = []
    if flt.tags_any:
        parts.append(f"array_contains_any(tags, {_strs(flt.tags_any)})")
    if flt.tags_all:
        parts.append(f"array_contains_all(tags, {_strs(flt.tags_all)})")
    if flt.source_prefix:  # a range, not LIKE: Milvus 2.3 has no escape for a path's own % and _
        parts.append(f"source_uri >= {_str(flt.source_prefix)}")
        if (above := _above_prefix(flt.source_prefix)) is not None:
            parts.append(f"source_uri < {_str(above)}")
    if flt.min_duration_s is not None or flt.max_duration_s is not None:
        parts.append("duration_s >= 0.0")  # known durations only
    if flt.min_duration_s is not None:
        parts.append(f"duration_s >= {float(flt.min_duration_s)!r}")
    if flt.max_duration_s is not None:
        parts.append(f"duration_s <= {float(flt.max_duration_s)!r}")
    parts += [cond.milvus(key, _str) for key, cond in flt.extra]
    return " and ".join(parts)


# A duration the item does not know. Nullable fields need Milvus 2.5; durations are never negative, so -1 stands for
# null in every collection (older ones, made with a nullable field, may hold nulls too: both read as None).
UNKNOWN_DURATION = -1.0


def row_of(item: ItemRecord, vec: np.ndarray, extra_as_text: bool = False) -> dict:
    """extra_as_text: a collection made before metadata filters, whose `extra` is a VARCHAR of JSON."""
    row = {
        "id": item.id,
        "vec": np.asarray(vec, dtype=np.float32).tolist(),
        "source_uri": item.source_uri,
        "duration_s": UNKNOWN_DURATION if item.duration_s is None else item.duration_s,
        "tags": list(item.tags),
        "caption": item.caption,
        "content_hash": item.content_hash,
        "added_at": time.time() if item.added_at is None else item.added_at,
        "extra": json.dumps(item.extra) if extra_as_text else item.extra,
    }
    for name in ("source_uri", "caption", "content_hash", "extra"):
        if len(json.dumps(row[name]) if name == "extra" else row[name].encode()) > MAX_VARCHAR:
            raise BadRequest(f"{item.id}: {name} is longer than Milvus stores ({MAX_VARCHAR} bytes)", id=item.id)
    return row


def _record(e: dict) -> ItemRecord:
    return ItemRecord(
        id=e["id"],
        source_uri=e["source_uri"],
        duration_s=None if e.get("duration_s") is None or e["duration_s"] < 0 else e["duration_s"],
        tags=tuple(e["tags"]),
        caption=e["caption"],
        content_hash=e["content_hash"],
        added_at=e["added_at"],
        extra=json.loads(e["extra"]) if isinstance(e["extra"], str) else e["extra"],
    )


# -- one collection -------------------------------------------------------------------------------------------------


class Collection:
    """Item operations on one collection or alias: what the live version and a staging version share."""

    def __init__(self, client, name: str):
        self.client, self.name = client, name

    def extra_as_text(self) -> bool:
        """Whether the collection behind this name stores `extra` as JSON text (made before metadata filters): asked
        per call, since an alias may point to a newer collection after a swap."""
        fields = self.call("describe_collection", self.name).get("fields", [])
        from pymilvus import DataType

        return any(f["name"] == "extra" and f["type"] == DataType.VARCHAR for f in fields)

    def _filter(self, flt: SearchFilter | None) -> str:
        if flt is not None and flt.extra and self.extra_as_text():
            raise BadRequest(
                "this index version stores extra as text (it was built before metadata filters): rebuild it "
                "(mode merge keeps every item) to filter on extra keys"
            )
        return milvus_filter(flt)

    def call(self, method: str, *args, **kwargs):
        from pymilvus.exceptions import MilvusException

        if method in READS:
            kwargs.setdefault("consistency_level", READ_CONSISTENCY)
        try:
            try:
                return getattr(self.client, method)(*args, **kwargs)
            except MilvusException as e:
                if e.code != NOT_LOADED or method not in READS:
                    raise
                # A restarted Milvus serves the live version again only once it has loaded it, and a read that met
                # the version a swap just released asked too early: load what the name means now, and ask again.
                self.client.load_collection(args[0])
                return getattr(self.client, method)(*args, **kwargs)
        except MilvusException as e:
            raise BackendDown(f"Milvus {method} on {self.name}: {e.message}") from None

    def get(self, item_id: str) -> ItemRecord | None:
        got = self.call("get", self.name, ids=[item_id], output_fields=FIELDS)
        return _record(got[0]) if got else None

    def embedding(self, item_id: str) -> np.ndarray | None:
        got = self.call("get", self.name, ids=[item_id], output_fields=["vec"])
        return np.asarray(got[0]["vec"], dtype=np.float32) if got else None

    def embeddings_by_id(self, ids: list[str]) -> dict[str, np.ndarray]:
        got = self.call("get", self.name, ids=ids, output_fields=["vec"]) if ids else []
        return {e["id"]: np.asarray(e["vec"], dtype=np.float32) for e in got}

    def count(self) -> int:
        return int(self.call("query", self.name, filter="", output_fields=["count(*)"])[0]["count(*)"])

    def put_many(self, pairs: Sequence[Pair], upsert: bool, check_hash: bool = True) -> list[ItemRecord]:
        """Checks first (Conflict, as the FAISS engine words it), then one upsert request: all or nothing."""
        ids = [item.id for item, _ in pairs]
        if not upsert:
            repeated = next((i for n, i in enumerate(ids) if i in ids[:n]), None)
            found = self.call("get", self.name, ids=ids, output_fields=["id"])
            taken = repeated or (found[0]["id"] if found else None)
            if taken is not None:
                raise Conflict(f"item {taken!r} already exists (use upsert to replace it)", id=taken)
        if check_hash:
            hashes = sorted({item.content_hash for item, _ in pairs if item.content_hash})
            owners: dict[str, set[str]] = {}
            if hashes:
                for r in self.call(
                    "query", self.name, filter=f"content_hash in {_strs(hashes)}", output_fields=["id", "content_hash"]
                ):
                    owners.setdefault(r["content_hash"], set()).add(r["id"])
            for item, _ in pairs:  # earlier items of the batch count as stored, as in one SQLite transaction
                others = sorted(owners.get(item.content_hash, set()) - {item.id}) if item.content_hash else []
                if others:
                    raise Conflict(
                        f"the same audio (content hash {item.content_hash[:16]}...) is already stored as {others[0]!r}",
                        id=item.id,
                        existing_id=others[0],
                        content_hash=item.content_hash,
                    )
                if item.content_hash:
                    owners.setdefault(item.content_hash, set()).add(item.id)
        now = time.time()
        stored = {}  # by id: with upsert a repeated id keeps its last record, like successive SQLite puts
        for item, vec in pairs:
            if item.added_at is None:
                item = dataclasses.replace(item, added_at=now)
            stored[item.id] = (item, vec)
        as_text = self.extra_as_text()
        self.call("upsert", self.name, [row_of(item, vec, as_text) for item, vec in stored.values()])
        return [item for item, _ in stored.values()]

    def delete(self, item_id: str) -> ItemRecord | None:
        got = self.get(item_id)
        if got is not None:
            self.call("delete", self.name, ids=[item_id])
            # Milvus 2.3 answers a delete without its timestamp, so pymilvus's session would let this process's next
            # reads miss it: one Strong read, once the delete is in, moves the (single) replica past it for them all.
            self.call("get", self.name, ids=[item_id], output_fields=["id"], consistency_level="Strong")
        return got

    def search(self, x: np.ndarray, k: int, flt: SearchFilter | None, params: dict) -> list[list[Scored]]:
        if "ef" in params:
            params = {**params, "ef": max(params["ef"], k)}  # HNSW cannot return more than its beam
        res = self.call(
            "search",
            self.name,
            data=x.tolist(),
            limit=k,
            filter=self._filter(flt),
            output_fields=FIELDS,
            search_params={"metric_type": "IP", "params": params},
        )
        out = [[(float(h["distance"]), _record({**h["entity"], "id": h["id"]})) for h in hits] for hits in res]
        if flt is not None and flt.extra:  # Milvus takes true for 1: the hits are checked as the other engines do
            out = [[(score, item) for score, item in hits if flt.matches(item)] for hits in out]
        return out

    def page(self, flt: SearchFilter | None, after: str, limit: int, batch: int = 4096) -> list[ItemRecord]:
        """Up to `limit` items with an id after `after`, passing `flt`, in id order. Milvus returns query results in
        no stated order, so every matching id after the cursor is read (ids only, in batches) and the first `limit`
        kept: a page costs a pass over the matching ids, not over the rows."""
        expr = " and ".join(e for e in (f"id > {_str(after)}" if after else "", self._filter(flt)) if e)
        it = self.call("query_iterator", self.name, batch_size=batch, filter=expr, output_fields=["id"])
        first: list[str] = []
        try:
            while rows := it.next():
                first = heapq.nsmallest(limit, first + [r["id"] for r in rows], key=_utf8)
        finally:
            it.close()
        if not first:
            return []
        got = {e["id"]: _record(e) for e in self.call("get", self.name, ids=first, output_fields=FIELDS)}
        return [got[i] for i in first if i in got and (flt is None or not flt.extra or flt.matches(got[i]))]

    def scan(self, batch: int = 4096) -> Iterator[tuple[list[str], np.ndarray]]:
        """Every (ids, vectors (n, D)) of the collection, in batches."""
        it = self.call("query_iterator", self.name, batch_size=batch, filter="", output_fields=["id", "vec"])
        try:
            while rows := it.next():
                yield [r["id"] for r in rows], np.asarray([r["vec"] for r in rows], dtype=np.float32)
        finally:
            it.close()
