"""The client against a real gateway, over both transports: typed answers, identical on REST and gRPC."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import wav_bytes

from blat_client import (
    AsyncClient,
    Caption,
    Client,
    ClientError,
    Hit,
    Item,
    Job,
    SearchResult,
    Stats,
    Tags,
    TagWindow,
    wav_chunks,
)

N = 6


@pytest.fixture(scope="module")
def stored(rest_url, grpc_target) -> dict[str, bytes]:
    """N items, the even ones added over REST and the odd ones over gRPC."""
    out = {}
    with Client(rest_url) as rest, Client(grpc_target) as rpc:
        for i in range(N):
            item_id, data = f"live/{i}", wav_bytes(100 + i, seconds=0.5 + 0.25 * i)
            c = rest if i % 2 == 0 else rpc
            got = c.add_item(
                item_id,
                data,
                tags=["live", "even" if i % 2 == 0 else "odd"],
                caption=f"clip {i}",
                source_uri=f"test://{i}",
                upsert=True,
            )  # upsert: a rerun against the same server
            assert isinstance(got, Item) and got.id == item_id and got.tags == ("live", got.tags[1])
            assert got.source_uri == f"test://{i}" and got.duration_s == pytest.approx(0.5 + 0.25 * i, abs=1e-3)
            out[item_id] = data
    return out


def test_answers_are_typed(client, stored):
    result = client.search_text("a tone and some noise", k=3, filter={"tags_any": ["live"]})
    assert isinstance(result, SearchResult) and len(result.hits) == 3 and result.bundle
    assert all(isinstance(h, Hit) and isinstance(h.item, Item) for h in result.hits)
    assert [h.score for h in result.hits] == sorted((h.score for h in result.hits), reverse=True)
    tags = client.tag(stored["live/5"], top_k=4, window_s=0.5)
    assert isinstance(tags, Tags) and len(tags.tags) == 4 and all(isinstance(w, TagWindow) for w in tags.windows)
    assert len(tags.windows) >= 2
    caps = client.caption(stored["live/1"], n_best=2)
    assert len(caps) == 2 and all(isinstance(c, Caption) and isinstance(c.text, str) for c in caps)
    assert caps[0].log_prob >= caps[1].log_prob  # best first (an untrained test model may caption with "")
    assert isinstance(client.stats(), Stats)
    assert json.loads(json.dumps(result.to_dict()))["hits"][0]["id"] == result.hits[0].id


def test_both_transports_answer_the_same(rest_url, grpc_target, stored):
    with Client(rest_url) as rest, Client(grpc_target) as rpc:
        for call in (
            lambda c: c.get_item("live/3"),
            lambda c: c.stats(),
            lambda c: c.info(),
            lambda c: c.search_item("live/0", k=4),
            lambda c: c.search_text("noise", k=4),
            lambda c: c.search_audio(stored["live/2"], k=3, filter={"tags_all": ["live", "even"]}),
            lambda c: c.tag(stored["live/4"], top_k=5, window_s=0.5),
            lambda c: c.caption(stored["live/2"], n_best=2),
            lambda c: c.embed_text(["rain", "a dog"]),
            lambda c: c.embed_audio(stored["live/1"]),
        ):
            a, b = call(rest), call(rpc)
            assert type(a) is type(b)
            # Scores travel as JSON doubles and as protobuf floats: equal to float32 precision.
            assert _rounded(a) == _rounded(b)


def _rounded(value):
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    if isinstance(value, float):
        return round(value, 5)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(v) for v in value]
    return value


def test_filters(client, stored):
    odd = client.search_text("noise", k=10, filter={"tags_all": ["live", "odd"]})
    assert set(odd.ids) == {f"live/{i}" for i in range(1, N, 2)}
    with pytest.raises(ValueError, match="unknown filter keys"):
        client.search_text("noise", filter={"tag": ["x"]})


def test_errors_carry_the_server_message(client):
    with pytest.raises(ClientError) as e:
        client.get_item("live/missing")
    assert e.value.status == 404 and "live/missing" in e.value.message
    assert e.value.code == "NOT_FOUND" and e.value.reason == "not_found" and not e.value.retryable
    with pytest.raises(ClientError) as e:
        client.search_text("noise", k=1000)  # over limits.max_k
    assert e.value.status == 400
    with pytest.raises(ClientError) as e:
        client.tag(b"not audio at all")
    assert 400 <= e.value.status < 500 and e.value.message


@pytest.mark.parametrize("target", ["http://127.0.0.1:9", "grpc://127.0.0.1:9"])
def test_unreachable_server(target):
    with Client(target, timeout=5) as c, pytest.raises(ClientError) as e:
        c.stats()
    assert e.value.status == 0 and e.value.code == "UNAVAILABLE" and e.value.reason == "unreachable"


def test_delete_returns_the_item(client):
    item_id = f"live/delete-{client.transport_name}"
    client.add_item(item_id, wav_bytes(500 + (client.transport_name == "grpc")), tags=["gone"])
    deleted = client.delete_item(item_id)
    assert isinstance(deleted, Item) and deleted.id == item_id and deleted.tags == ("gone",)
    with pytest.raises(ClientError) as e:
        client.get_item(item_id)
    assert e.value.status == 404


@pytest.mark.parametrize("transport", ["rest", "grpc"])
def test_async_client_matches_the_blocking_one(transport, rest_url, grpc_target, stored):
    target = rest_url if transport == "rest" else grpc_target
    queries = ["noise", "a tone", "rain on a roof", "a dog barks", "beeps", "an engine"]

    async def run():
        async with AsyncClient(target) as c:
            results = await asyncio.gather(*(c.search_text(q, k=3) for q in queries))
            return results, await c.get_item("live/2")

    results, item = asyncio.run(run())
    with Client(target) as c:
        assert [_rounded(r) for r in results] == [_rounded(c.search_text(q, k=3)) for q in queries]
        assert item == c.get_item("live/2")


def test_stream_tag(grpc_target, rest_url, tmp_path):
    clip = tmp_path / "stereo.wav"
    clip.write_bytes(wav_bytes(7, seconds=3.0, channels=2))
    rate, chunks = wav_chunks(clip, chunk_s=0.25)
    with Client(grpc_target) as c:
        windows = list(c.stream_tag(chunks, rate, window_s=1.0, hop_s=1.0, top_k=3))
    assert [round(w.start_s, 2) for w in windows] == [0.0, 1.0, 2.0]
    assert all(len(w.tags) == 3 for w in windows)

    async def run():
        rate, chunks = wav_chunks(clip, chunk_s=0.25)
        async with AsyncClient(grpc_target) as c:
            return [w async for w in c.stream_tag(chunks, rate, window_s=1.0, hop_s=1.0, top_k=3)]

    assert _rounded(asyncio.run(run())) == _rounded(windows)
    with Client(rest_url) as c, pytest.raises(ClientError) as e:
        c.stream_tag(iter(()), rate)
    assert e.value.code == "UNIMPLEMENTED" and e.value.reason == "unsupported"


def test_cli(rest_url, grpc_target, stored, tmp_path):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "blat_client", *args], capture_output=True, text=True, timeout=120)

    out = cli("get", "live/1", "--url", grpc_target, "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["id"] == "live/1"
    out = cli("search", "noise", "-k", "2", "--url", rest_url)
    assert out.returncode == 0 and len(out.stdout.strip().splitlines()) == 2
    assert cli("get", "live/missing", "--url", rest_url).returncode == 1
    assert cli("stats", "--url", "http://127.0.0.1:9").returncode == 3
    assert cli("tag", str(tmp_path / "no-such.wav"), "--url", rest_url).returncode == 2
    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.wav").write_bytes(wav_bytes(900))
    (folder / "sub" / "b c.wav").write_bytes(wav_bytes(901))
    (folder / "bad.wav").write_bytes(b"RIFF nonsense")
    out = cli("add-folder", str(folder), "--prefix", "cli/", "--url", rest_url, "--json")
    report = json.loads(out.stdout)
    assert out.returncode == 4 and sorted(report["added"]) == ["cli/a.wav", "cli/sub/b_c.wav"]
    assert [f["id"] for f in report["failed"]] == ["cli/bad.wav"]
    again = json.loads(cli("add-folder", str(folder), "--prefix", "cli/", "--url", rest_url, "--json").stdout)
    assert again["added"] == [] and len(again["skipped"]) == 2
    helped = cli("--help")
    assert helped.returncode == 0 and "add-folder" in helped.stdout


def test_rebuild_and_rollback(client, ingest_root):
    """A rebuild replaces the whole index; the rollback brings the previous one back for the other tests."""
    folder = Path(ingest_root) / f"rebuild-{client.transport_name}"
    folder.mkdir(exist_ok=True)
    for i in range(3):
        (folder / f"r{i}.wav").write_bytes(wav_bytes(300 + i + 10 * (client.transport_name == "grpc")))
    before = client.stats()
    seen: list[Job] = []
    job = client.wait_rebuild(
        client.start_rebuild(folder=str(folder), mode="replace").job_id, poll_s=0.1, on_progress=seen.append
    )
    assert job.state == "succeeded" and job.added == 3 and job.total == 3 and seen[-1] == job
    assert client.stats().items == 3
    assert set(client.search_text("noise", k=10).ids) == {"r0.wav", "r1.wav", "r2.wav"}
    restored = client.rollback()
    assert restored.index_version == before.index_version and restored.items == before.items
    assert os.path.isdir(folder)
