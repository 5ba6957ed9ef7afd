"""The index store: FAISS search over stored audio embeddings, with metadata, durability and versions in SQLite.

`IndexStore` (store.py) is the front door; layout.py shows the directory on disk, db.py why SQLite is the journal.
"""
from server.index.ann import KINDS, AnnConfig
from server.index.rebuild import RebuildJob, RebuildProgress
from server.index.records import Hit, IndexStats, ItemRecord, SearchFilter
from server.index.store import IndexStore

__all__ = ["KINDS", "AnnConfig", "Hit", "IndexStats", "IndexStore", "ItemRecord", "RebuildJob", "RebuildProgress",
           "SearchFilter"]
