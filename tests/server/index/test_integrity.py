"""Integrity at load (FAISS engine): a snapshot's recorded checksum, SQLite's own check of items.sqlite, the
refusal to open a damaged version (naming the file and the way back) and the offline rollback that way back is.

Where a gateway must refuse to start, a real process: its exit code and log are the point.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest

from blat_gateway.__main__ import main as server_main
from blat_gateway.errors import IndexDamaged
from blat_gateway.index import IndexStore, layout
from tests.server.conftest import start_server
from tests.server.index.helpers import item, noisy, unit

DIM = 32


def filled_store(root, n: int = 300, seed: int = 0):
    items, vecs = [item(i) for i in range(n)], unit(n, DIM, seed)
    with IndexStore(root, DIM, "bundle-a") as store:
        store.add_many(zip(items, vecs))
        store.snapshot()
    return items, vecs


def version_dir(root, name: str = "v0001"):
    return root / "versions" / name


def top_ids(store, queries, k: int = 5) -> list[list[str]]:
    return [[h.id for h in hits] for hits in store.search(queries, k)]


def test_noise_in_a_snapshot_is_caught_and_the_index_rebuilt_from_rows(tmp_path, caplog):
    """The outside probe's case: 4 KiB of noise inside index.faiss. FAISS still parses the file, so only the
    recorded checksum can tell; the rows in SQLite rebuild the cache, and the log names the file."""
    root = tmp_path / "idx"
    items, vecs = filled_store(root)
    queries = noisy(vecs[:20])
    with IndexStore(root, DIM, "bundle-a") as store:
        want = top_ids(store, queries)
    snapshot = version_dir(root) / "index.faiss"
    with open(snapshot, "r+b") as f:
        f.seek(snapshot.stat().st_size // 3)  # inside the stored vectors: the file still parses
        f.write(np.random.default_rng(0).bytes(4096))
    with caplog.at_level(logging.INFO, logger="blat_gateway.index"), IndexStore(root, DIM, "bundle-a") as store:
        assert top_ids(store, queries) == want
        assert all(h.score <= 1.0 + 1e-5 for hits in store.search(queries, 5) for h in hits)
    assert any(r.levelno >= logging.ERROR and str(snapshot) in r.getMessage() for r in caplog.records), caplog.text
    # The damaged file was replaced by a fresh, verified snapshot: the next open reports nothing.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="blat_gateway.index"), IndexStore(root, DIM, "bundle-a") as store:
        assert top_ids(store, queries) == want
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


def test_a_snapshot_written_before_checksums_loads_and_says_so(tmp_path, caplog):
    root = tmp_path / "idx"
    items, vecs = filled_store(root)
    sums = layout.checksum_path(version_dir(root) / "index.faiss")
    assert sums.is_file()
    sums.unlink()  # as a version written before checksums were recorded
    with caplog.at_level(logging.INFO, logger="blat_gateway.index"), IndexStore(root, DIM, "bundle-a") as store:
        assert top_ids(store, vecs[:3], 1) == [[items[i].id] for i in range(3)]
    assert "no checksum" in caplog.text and "index.faiss" in caplog.text


def test_a_kill_between_checksum_and_rename_is_not_damage(tmp_path, caplog, monkeypatch):
    """The checksum file names the old and the new snapshot while the rename is pending: a kill there leaves a
    snapshot that still verifies."""
    root = tmp_path / "idx"
    items, vecs = filled_store(root, 100)
    store = IndexStore(root, DIM, "bundle-a")
    store.add_many(zip([item(i) for i in range(100, 150)], unit(50, DIM, seed=3)))

    real_replace = os.replace

    def killed(src, dst):
        if os.path.basename(dst) == "index.faiss":
            raise KeyboardInterrupt("killed before the rename")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        store.snapshot()
    monkeypatch.undo()
    assert len(layout.recorded_checksums(version_dir(root) / "index.faiss")) == 2  # old and new, rename pending
    store.index.live.db.conn.close()
    store.index._root_lock.release()
    with caplog.at_level(logging.INFO, logger="blat_gateway.index"), IndexStore(root, DIM, "bundle-a") as again:
        assert again.stats().count == 150
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


@pytest.mark.parametrize("damage", ["truncate", "empty", "garble"])
def test_a_damaged_database_refuses_to_open_naming_file_and_way_back(tmp_path, damage):
    root = tmp_path / "idx"
    filled_store(root)
    db = version_dir(root) / "items.sqlite"
    size = db.stat().st_size
    if damage == "truncate":
        os.truncate(db, size // 2)
    elif damage == "empty":
        os.truncate(db, 0)
    else:
        with open(db, "r+b") as f:
            f.seek(size // 2)
            f.write(np.random.default_rng(1).bytes(8192))
    with pytest.raises(IndexDamaged) as got:
        IndexStore(root, DIM, "bundle-a")
    msg = got.value.message
    assert str(db) in msg and "rebuild" in msg, msg
    assert db.stat().st_size == (0 if damage == "empty" else size // 2 if damage == "truncate" else size)
    # The refusal released the directory: the way back can run.
    layout.RootLock(root).release()


def test_offline_rollback_is_the_way_back_from_a_damaged_version(tmp_path, monkeypatch):
    root = tmp_path / "idx"
    items, vecs = filled_store(root, 50)
    with IndexStore(root, DIM, "bundle-a") as store:
        job = store.start_rebuild(list(zip([item(i, "new") for i in range(80)], unit(80, DIM, seed=5))), 80)
        assert job.wait(60).state == "succeeded"
    assert layout.read_pointer(root) == ("v0002", "v0001")
    os.truncate(version_dir(root, "v0002") / "items.sqlite", 4096)
    with pytest.raises(IndexDamaged) as got:
        IndexStore(root, DIM, "bundle-a")
    assert "--rollback" in got.value.message and "v0001" in got.value.message
    for key in [k for k in os.environ if k.startswith("BLAT_SERVER_")]:
        monkeypatch.delenv(key)
    assert server_main(["--index-dir", str(root), "--rollback"]) == 0
    assert layout.read_pointer(root) == ("v0001", "v0002")
    with IndexStore(root, DIM, "bundle-a") as store:
        assert store.stats().count == 50 and store.get(items[7].id).id == items[7].id
        with pytest.raises(IndexDamaged):  # rolling forward onto the damaged version is refused too
            store.rollback()
        assert store.version == "v0001"
    assert server_main(["--index-dir", str(root), "--rollback"]) == 2  # the damaged one is no way back


def test_the_gateway_refuses_to_start_on_a_damaged_database_without_a_traceback(tiny_bundle, tmp_path):
    root = tmp_path / "index"
    filled_store(root, 20)
    db = version_dir(root) / "items.sqlite"
    os.truncate(db, db.stat().st_size // 2)
    with pytest.raises(RuntimeError) as got:
        start_server(tiny_bundle, tmp_path, index_dir=root, ready_timeout_s=60)
    log = str(got.value)
    assert "exited with code 2" in log, log
    assert str(db) in log and "--rollback" not in log and "rebuild" in log, log  # no previous version to roll back to
    assert "Traceback" not in log, log
