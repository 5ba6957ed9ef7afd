"""The gateway's audio index: `IndexStore` (store.py) over one engine behind the `VectorIndex` protocol
(protocol.py): FAISS + SQLite on this host (faiss_index.py; layout.py shows the directory, db.py why SQLite is the
journal), or Milvus (milvus.py).
"""

from blat_gateway.index.protocol import ENGINES, KINDS, AnnConfig, Staging, VectorIndex
from blat_gateway.index.rebuild import RebuildJob, RebuildProgress
from blat_gateway.index.records import Hit, IndexStats, ItemRecord, SearchFilter
from blat_gateway.index.store import IndexStore

__all__ = [
    "ENGINES",
    "KINDS",
    "AnnConfig",
    "Hit",
    "IndexStats",
    "IndexStore",
    "ItemRecord",
    "RebuildJob",
    "RebuildProgress",
    "SearchFilter",
    "Staging",
    "VectorIndex",
]
