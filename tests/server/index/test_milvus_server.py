"""What only a Milvus server shows: a rebuild while the server is killed (kill -9) and restarted. The server here is
the test's own (milvus_server.py), not the session's that other tests use."""

from __future__ import annotations

import time

import pytest

from blat_gateway.errors import BackendDown
from blat_gateway.index import IndexStore
from blat_gateway.index.milvus import MilvusConfig
from tests.server.index.conftest import ENGINES, stored_versions
from tests.server.index.helpers import item
from tests.server.index.milvus_server import Server
from tests.server.index.test_rebuild import DIM, NEW, OLD, Gate

pytestmark = pytest.mark.skipif("milvus-server" not in ENGINES, reason="the Milvus server engine is not enabled")


def answers(store: IndexStore) -> list[list[tuple[str, float]]]:
    return [[(h.id, round(h.score, 5)) for h in hits] for hits in store.search(OLD[:10], 5)]


def test_a_rebuild_across_a_server_kill_fails_cleanly_and_the_live_version_serves_after_restart(tmp_path):
    server = Server(tmp_path / "server")
    config = MilvusConfig(uri=server.start(), collection="k", timeout_s=5)
    try:
        store = IndexStore(None, DIM, "b", milvus=config)
        store.add_many((item(i, "old"), OLD[i]) for i in range(60))
        before = answers(store)
        src = Gate(NEW, pause_at=150)
        job = store.start_rebuild(src, total=200)
        assert src.paused.wait(30)
        server.kill()
        src.release()
        p = job.wait(120)
        assert p.state == "failed" and "Milvus" in p.error, p
        started = time.monotonic()
        with pytest.raises(BackendDown):  # a clear 503 within the configured timeout, not a hang
            store.search(OLD[:1], 5)
        assert time.monotonic() - started < 4 * config.timeout_s

        server.start()  # the same data, the same port: the store's client reconnects
        assert answers(store) == before
        s = store.stats()
        assert (s.version, s.count, s.rebuild.state) == ("k__v0001", 60, "failed")
        # The next rebuild drops the unfinished version and goes live.
        p = store.start_rebuild(((item(i, "new"), NEW[i]) for i in range(200)), total=200).wait(120)
        assert p.state == "succeeded", p.error
        assert (store.stats().version, store.stats().count) == ("k__v0003", 200)
        assert stored_versions(store) == ["k__v0001", "k__v0003"]
        store.close()
    finally:
        server.stop()
