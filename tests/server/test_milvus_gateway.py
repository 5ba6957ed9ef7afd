"""Gateways on Milvus: a writer and a read-only replica share one Milvus server and keep no index state of their own.

The Milvus server is milvus-lite's gRPC server, run in a process of its own and reached over its network port, as a
gateway reaches a Milvus deployment (its in-process mode allows one process per file), and a real Milvus server
(milvus==2.3.5's standalone binary) where the suite enables that engine. Both gateways are the real
`python -m blat_gateway` processes, called with the typed client over REST and gRPC.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from blat_client import Client, ClientError
from tests.server.conftest import running_server, synth_clip, wav
from tests.server.index.conftest import ENGINES
from tests.server.index.milvus_server import Server

# Serves one milvus-lite file on a free loopback port; prints the URI, then runs until its stdin closes.
HOST = """
import sys
from milvus_lite.server_manager import server_manager_instance
print(server_manager_instance.start_and_get_uri(sys.argv[1]), flush=True)
sys.stdin.read()
"""


@pytest.fixture(scope="module", params=[e for e in ("milvus", "milvus-server") if e in ENGINES])
def milvus_uri(request, tmp_path_factory):
    """milvus-lite's gRPC server in a process of its own, or a real Milvus server (tests/server/index)."""
    folder = tmp_path_factory.mktemp(request.param)
    if request.param == "milvus-server":
        server = Server(folder)
        yield server.start()
        server.stop()
        return
    proc = subprocess.Popen(
        [sys.executable, "-c", HOST, str(folder / "shared.db")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    uri = proc.stdout.readline().strip()
    assert uri.startswith("http://127.0.0.1:"), uri
    yield uri
    proc.stdin.close()
    proc.wait(timeout=30)


def within(seconds: float, check) -> bool:
    """Whether check() comes true within `seconds` (polled)."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def wait_job(client: Client, job_id: str, timeout_s: float = 120.0):
    deadline = time.monotonic() + timeout_s
    while not (job := client.rebuild_status(job_id)).finished:
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
    return job


@pytest.mark.slow
def test_writer_and_read_only_replica_share_one_milvus(tiny_bundle, milvus_uri, tmp_path):
    env = {
        "BLAT_SERVER_INDEX_ENGINE": "milvus",
        "BLAT_SERVER_MILVUS__URI": milvus_uri,
        "BLAT_SERVER_MILVUS__COLLECTION": "gateway_test",
    }
    clips = {f"clip-{i}": wav(synth_clip(700 + i, 1.0)) for i in range(8)}
    with (
        running_server(tiny_bundle, tmp_path / "writer", env=env) as w,
        running_server(tiny_bundle, tmp_path / "reader", env={**env, "BLAT_SERVER_READ_ONLY": "true"}) as r,
    ):
        writer, reader, reader_rpc = Client(w.http_url), Client(r.http_url), Client(f"grpc://{r.grpc_address}")
        for n, (item_id, data) in enumerate(clips.items()):
            writer.add_item(item_id, data, tags=["even" if n % 2 == 0 else "odd", "synth"])
        # The replica reads with Session consistency: the writer's writes reach it within a time tick.
        assert within(2.0, lambda: reader.stats().items == 8)

        # The replica answers from the same Milvus collection: same items, scores and version.
        for item_id, data in list(clips.items())[:3]:
            got, want = reader.search_audio(data, k=3), writer.search_audio(data, k=3)
            assert [h.id for h in got.hits] == [h.id for h in want.hits] and got.hits[0].id == item_id
            assert got.index_version == want.index_version
        flt = {"tags_any": ["even"]}
        assert {h.id for h in reader_rpc.search_item("clip-1", k=8, filter=flt).hits} == {
            f"clip-{i}" for i in range(0, 8, 2)
        }
        stats = reader_rpc.stats()
        assert (stats.items, stats.index_engine) == (8, "milvus") and stats == writer.stats()

        # Writes, rebuilds and rollbacks go to the writer only.
        for call in (
            lambda c: c.add_item("new", clips["clip-0"]),
            lambda c: c.delete_item("clip-0"),
            lambda c: c.start_rebuild(folder=str(r.roots), mode="replace"),
            lambda c: c.rollback(),
        ):
            for client in (reader, reader_rpc):
                with pytest.raises(ClientError) as e:
                    call(client)
                assert e.value.status == 403 and "read-only" in e.value.message
        assert reader.get_item("clip-0").tags == ("even", "synth")

        # A rebuild on the writer moves the alias: the replica serves the new version without a restart.
        folder = w.roots / "collection"
        folder.mkdir()
        for i in range(5):
            (folder / f"fresh{i}.wav").write_bytes(wav(synth_clip(900 + i, 1.0)))
        before = writer.stats().index_version
        assert wait_job(writer, writer.start_rebuild(folder=str(folder), mode="replace").job_id).state == "succeeded"
        after = reader.stats()
        assert after.index_version != before and after.previous_version == before and after.items == 5
        assert reader.search_audio((folder / "fresh3.wav").read_bytes(), k=1).hits[0].id == "fresh3.wav"

        writer.delete_item("fresh0.wav")  # a write after the swap: visible to the replica within a time tick
        assert within(2.0, lambda: reader.stats().items == 4)
        assert writer.rollback().index_version == before  # and back
        assert reader.stats().index_version == before and reader.get_item("clip-5").id == "clip-5"

        # No index state on the replicas' disks: Milvus holds it all.
        for gateway in (w, r):
            assert not [p for p in gateway.index_dir.rglob("*") if p.suffix in (".sqlite", ".faiss", ".db")]
