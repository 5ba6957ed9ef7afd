"""The index suite runs against every engine: `open_store` is parametrized over FAISS + SQLite and milvus-lite.

Tests that use `faiss_store` instead check what only the FAISS engine has (not applicable to Milvus, which keeps its
own segments, indexes and locks): the snapshot file and its replay, tombstones and their purge, compaction of
HNSW / IVF, the GPU copy, the directory lock, leftover version directories, the torn SQLite journal tail.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from blat_gateway.index import AnnConfig, IndexStore

MILVUS_COLLECTION = "blat_test"


def faiss_open(root: Path, dim: int, bundle_id: str, kind: str = "flat", config: AnnConfig | None = None):
    return IndexStore(root, dim, bundle_id, kind, config=config)


def milvus_open(root: Path, dim: int, bundle_id: str, kind: str = "flat", config: AnnConfig | None = None):
    from blat_gateway.index.milvus import MilvusConfig

    root.mkdir(parents=True, exist_ok=True)
    return IndexStore(
        None,
        dim,
        bundle_id,
        kind,
        config=config,
        milvus=MilvusConfig(uri=str(root / "milvus.db"), collection=MILVUS_COLLECTION),
    )


OPENERS = {"faiss": faiss_open, "milvus": milvus_open}
VERSION_NAMES = {"faiss": "v{:04d}", "milvus": MILVUS_COLLECTION + "__v{:04d}"}


@pytest.fixture(params=sorted(OPENERS))
def engine(request) -> str:
    return request.param


@pytest.fixture
def open_store(engine):
    """open_store(root, dim, bundle_id, kind="flat", config=None) -> IndexStore on the engine under test."""
    return OPENERS[engine]


@pytest.fixture
def version_name(engine):
    """version_name(n) -> the name the engine gives its n-th version."""
    return VERSION_NAMES[engine].format


def stored_versions(store: IndexStore) -> list[str]:
    """The versions the engine holds on disk / in Milvus, live and previous included."""
    if store.engine == "faiss":
        return sorted(p.name for p in (store.index.root / "versions").iterdir())
    return store.index._versions()


def stored_ids(store: IndexStore) -> set[str]:
    """Every item id the live version holds, read from the engine's own storage."""
    if store.engine == "faiss":
        return {r[0] for r in store.index.live.db.conn.execute("SELECT id FROM items")}
    return {i for ids, _ in store.index.live.scan() for i in ids}
