"""The seam between the gateway's `IndexStore` and an index engine (FAISS + SQLite, or Milvus).

`IndexStore` (store.py) owns what every engine shares: argument checks, the one lock that serialises calls, the
rebuild job and the log of writes made while it runs. An engine implements `VectorIndex`: a live version that
takes writes and answers filtered searches, new versions built beside it (`Staging`), an atomic swap and a
rollback. Engines never see HTTP or gRPC; they raise `blat_gateway.errors` types (Conflict for a duplicate, BackendDown
when their storage is unreachable) and return plain records.

Contract every engine keeps (tests/server/index runs the same suite against each):
- a write is durable when `put_many` / `delete` return, and `put_many` is all or nothing;
- ids are unique; a content hash already stored under another id is a Conflict unless `check_hash=False`;
- `page` lists items in id order (UTF-8 byte order, which is code point order) after a given id, filtered like
  `search`, so a cursor (the last id seen) pages through a version without skipping or repeating an item that
  stays stored;
- `search` returns, per query, up to k (cosine, item) best first among the items that pass the filter, with the
  same filter semantics as `SearchFilter.matches`;
- `swap` switches searches from the live version to a finished staging version at once, keeping the old one as
  `previous`; `rollback` switches back one step and drops the version it left (no previous until the next swap:
  a second rollback finds nothing, it never toggles). Neither is visible half done.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from blat_gateway.errors import BadRequest
from blat_gateway.index.records import ItemRecord, SearchFilter

KINDS = ("flat", "ivf", "hnsw")
ENGINES = ("faiss", "milvus")
Pair = tuple[ItemRecord, np.ndarray]  # an item and its (D,) unit embedding
Scored = tuple[float, ItemRecord]  # cosine score and item


@dataclass(frozen=True)
class AnnConfig:
    kind: str = "flat"  # flat: exact; ivf / hnsw: approximate, for large collections
    ivf_min_items: int = 10_000  # an ivf version below this stays flat (exact, and flat is fast at this size)
    nlist: int | None = None  # IVF lists; None: about sqrt(N), fixed when the index is trained
    hnsw_m: int = 32  # HNSW links per node
    ef_construction: int = 80  # HNSW build-time beam; more is slower to build, better connected
    target_recall: float = 0.95  # recall@10 vs exact (worst query distance) that tuning aims for and a rebuild must
    # reach (ivf / hnsw)
    use_gpu: bool = False  # FAISS: search a GPU copy of flat / IVF indexes when faiss has GPUs (faiss-gpu only)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise BadRequest(f"unknown index kind {self.kind!r}; known: {', '.join(KINDS)}")
        if self.ivf_min_items < 1 or self.hnsw_m < 4 or self.ef_construction < 1:
            raise BadRequest("ivf_min_items >= 1, hnsw_m >= 4 and ef_construction >= 1 are required")
        if not 0.0 < self.target_recall <= 1.0:
            raise BadRequest(f"target_recall must be in (0, 1], got {self.target_recall}")


@dataclass(frozen=True)
class VersionMeta:
    dim: int
    bundle_id: str  # the bundle whose audio encoder produced every embedding in this version
    kind: str  # flat / ivf / hnsw
    created_at: float


def new_meta(dim: int, bundle_id: str, kind: str) -> VersionMeta:
    return VersionMeta(dim=dim, bundle_id=bundle_id, kind=kind, created_at=time.time())


@runtime_checkable
class Staging(Protocol):
    """A version being built beside the live one: invisible to searches until `VectorIndex.swap`."""

    name: str

    def load(self, pairs: Sequence[Pair]) -> int:
        """Bulk rows (ids and hashes already screened by the caller): durable, not yet searchable -> rows added."""

    @property
    def required_recall(self) -> float:
        """What `finish` must measure unless the caller asks otherwise: 1.0 for an exact index, else the target."""

    def finish(self) -> float:
        """Build the search structure over every row and check it against the rows (ValueError otherwise) ->
        worst recall@10 against an exact search on sample queries."""

    def put_many(self, pairs: Sequence[Pair], upsert: bool = True, check_hash: bool = False) -> list[ItemRecord]:
        """After `finish`: replay a write made to the live version meanwhile."""

    def delete(self, item_id: str) -> ItemRecord | None: ...

    def count(self) -> int: ...

    def discard(self) -> None:
        """Drop everything built (a no-op once swapped in)."""


@runtime_checkable
class VectorIndex(Protocol):
    """One engine's live version, its previous one, and the versions built beside them."""

    @property
    def name(self) -> str:
        """The live version's name (what search answers report as `index_version`)."""

    @property
    def previous(self) -> str | None: ...

    @property
    def meta(self) -> VersionMeta: ...

    def put_many(self, pairs: Sequence[Pair], upsert: bool, check_hash: bool = True) -> list[ItemRecord]: ...

    def delete(self, item_id: str) -> ItemRecord | None: ...

    def get(self, item_id: str) -> ItemRecord | None: ...

    def embedding(self, item_id: str) -> np.ndarray | None: ...

    def embeddings_by_id(self, ids: list[str]) -> dict[str, np.ndarray]:
        """The stored embeddings of many ids in one read (absent ids are left out)."""

    def page(self, flt: SearchFilter | None, after: str, limit: int) -> list[ItemRecord]:
        """Up to `limit` items with an id after `after` (UTF-8 byte order), passing `flt`, in id order."""

    def search(self, x: np.ndarray, k: int, flt: SearchFilter | None) -> list[list[Scored]]:
        """x (Q, D) unit rows -> per query up to k hits, best first."""

    def count(self) -> int: ...

    def stats(self) -> dict:
        """Engine figures for `IndexStats`: count, index_type, index_total, tombstones, writes_since_snapshot,
        needs_compaction, params, gpu."""

    def new_version(self, meta: VersionMeta, cfg: AnnConfig) -> Staging: ...

    def swap(self, staging: Staging) -> None:
        """Make `staging` live at once; the live version becomes `previous` (kept for rollback)."""

    def rollback(self, lock: threading.RLock) -> str:
        """Make `previous` live again and drop the version it replaces (previous becomes None); returns its name.
        Called without `lock`, which guards the switch itself."""

    def compact(self, lock: threading.RLock) -> dict:
        """Rebuild the live search structure without deleted rows; called without `lock` (see `rollback`)."""

    def snapshot(self) -> None:
        """Persist whatever makes the next open faster (a no-op where the engine persists on its own)."""

    def close(self) -> None: ...
