"""The index suite runs against every engine: `open_store` is parametrized over FAISS + SQLite, milvus-lite and a real
Milvus server (milvus==2.3.5's standalone binary from PyPI, one per test session: milvus_server.py).

Tests that use `faiss_store` instead check what only the FAISS engine has (not applicable to Milvus, which keeps its
own segments, indexes and locks): the snapshot file and its replay, tombstones and their purge, compaction of
HNSW / IVF, the GPU copy, the directory lock, leftover version directories, the torn SQLite journal tail.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from blat_gateway.index import AnnConfig, IndexStore
from tests.server.index.milvus_server import Server

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


SERVER_URI = "BLAT_TEST_MILVUS_SERVER"  # set by the milvus_server fixture (and passed on to the suite's subprocesses)


def server_collection(root: Path) -> str:
    """One Milvus server serves every test of a session: each store root gets collections of its own (named from
    the root, so a reopened store, or a subprocess, finds them)."""
    return "t" + hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:12]


def milvus_server_open(root: Path, dim: int, bundle_id: str, kind: str = "flat", config: AnnConfig | None = None):
    from blat_gateway.index.milvus import MilvusConfig

    uri = os.environ[SERVER_URI]
    milvus = MilvusConfig(uri=uri, collection=server_collection(root), timeout_s=30)
    return IndexStore(None, dim, bundle_id, kind, config=config, milvus=milvus)


OPENERS = {"faiss": faiss_open, "milvus": milvus_open, "milvus-server": milvus_server_open}
# The engines the suite runs on: all three unless BLAT_TEST_ENGINES names some (`make test-milvus-server`: the server
# alone; BLAT_TEST_ENGINES=faiss,milvus skips the server's start-up and its slower calls).
ENGINES = [e for e in os.environ.get("BLAT_TEST_ENGINES", ",".join(OPENERS)).split(",") if e in OPENERS]
VERSION_NAMES = {"faiss": "v{:04d}", "milvus": MILVUS_COLLECTION + "__v{:04d}"}


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory):
    """A real Milvus server (milvus==2.3.5 from PyPI: the standalone binary with embedded etcd and local storage), one
    per test session (per xdist worker), on free ports (milvus_server.py)."""
    server = Server(tmp_path_factory.mktemp("milvus-server"))
    os.environ[SERVER_URI] = server.start()
    yield os.environ[SERVER_URI]
    os.environ.pop(SERVER_URI, None)
    server.stop()


def _drop_collections(uri: str, prefix: str) -> None:
    from pymilvus import MilvusClient

    client = MilvusClient(uri=uri)
    try:
        for name in client.list_collections():
            if name.startswith(prefix):
                for alias in client.describe_collection(name).get("aliases", []):
                    client.drop_alias(alias)
                client.drop_collection(name)
    finally:
        client.close()


@pytest.fixture(params=sorted(ENGINES))
def engine(request):
    """The engine under test. On the Milvus server, the collections a test made are dropped after it."""
    if request.param != "milvus-server":
        yield request.param
        return
    uri = request.getfixturevalue("milvus_server")
    yield request.param
    _drop_collections(uri, "t")  # this worker's own server: every collection is a test's


@pytest.fixture
def open_store(engine):
    """open_store(root, dim, bundle_id, kind="flat", config=None) -> IndexStore on the engine under test."""
    return OPENERS[engine]


@pytest.fixture
def version_name(engine, tmp_path):
    """version_name(n) -> the name the engine gives its n-th version (of the store opened at the test's tmp_path)."""
    if engine == "milvus-server":
        return (server_collection(tmp_path) + "__v{:04d}").format
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
