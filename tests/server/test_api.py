"""Every gateway endpoint through real HTTP and gRPC (the `blat_client` package), over ONNX Runtime and over Triton.

The `server` fixture runs this whole module once per backend with the same assertions. REST and gRPC must agree
with each other (the client's typed answers are equal across transports wherever the server computed the same
thing), and the served embeddings, tags and captions must equal in-process ONNX Runtime on the same audio. The
operations endpoints (/healthz, /readyz, /metrics, /openapi.json), which the client does not wrap, are read with
httpx.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import httpx
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from blat_client import Client, ClientError, Item, Job, SearchResult
from blat_contract.beam import DecodingOptions
from blat_contract.labels import tags_to_multi_hot
from blat_gateway.audio import decode_audio
from tests.server.conftest import RATE, ROOT, synth_clip, wav

ATOL = 1e-5  # served vs in-process ONNX Runtime
N_ITEMS = 12


# ------------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def rest(server):
    with Client(server.http_url, timeout=60) as c:
        assert c.transport_name == "rest"
        yield c


@pytest.fixture(scope="module")
def rpc(server):
    with Client(f"grpc://{server.grpc_address}", timeout=60) as c:
        assert c.transport_name == "grpc"
        yield c


@pytest.fixture(scope="module")
def http(server):
    """Plain HTTP, for what the client does not wrap: health, readiness, metrics, the schema, raw JSON."""
    with httpx.Client(base_url=server.http_url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def reference(tiny_bundle):
    """In-process ONNX Runtime over the same bundle: what the server must answer."""
    from blat_gateway.backends.ort import OnnxRuntimeBackend
    from blat_gateway.runtime import ModelRuntime

    return ModelRuntime(tiny_bundle, OnnxRuntimeBackend(tiny_bundle, threads=1))


@pytest.fixture(scope="module")
def bundle_json(tiny_bundle):
    return json.loads((tiny_bundle / "bundle.json").read_text())


@pytest.fixture(scope="module")
def clips(request):
    """Distinct clips as WAV bytes: real recordings when the sound theme is available, synthetic ones otherwise."""
    out: dict[str, bytes] = {}
    try:
        real = request.getfixturevalue("real_clips")
    except pytest.skip.Exception:
        real = {}
    seen = set()
    for name, samples in sorted(real.items()):
        digest = hashlib.sha256(samples.tobytes()).hexdigest()
        if digest not in seen and 0.2 <= len(samples) / RATE <= 3.0 and len(out) < N_ITEMS // 2:
            seen.add(digest)
            out[f"real-{name}"] = wav(samples)
    seed = 0
    while len(out) < N_ITEMS:
        out[f"synth-{seed}"] = wav(synth_clip(1000 + seed, seconds=0.5 + 0.25 * seed))
        seed += 1
    return out


@pytest.fixture(scope="module")
def items(rest, rpc, clips):
    """The clips stored as items (even ones over REST, odd ones over gRPC): id -> (wav bytes, tags, source_uri)."""
    stored = {}
    for i, (name, data) in enumerate(sorted(clips.items())):
        item_id = f"item-{i:02d}"
        tags = ["even" if i % 2 == 0 else "odd", f"n{i}", *(["low"] if i < N_ITEMS // 2 else [])]
        client = rest if i % 2 == 0 else rpc
        source = f"{'rest' if i % 2 == 0 else 'grpc'}://{name}"
        got = client.add_item(item_id, audio=data, tags=tags, caption=f"clip {name}", source_uri=source)
        assert isinstance(got, Item)
        assert got.id == item_id and got.tags == tuple(tags) and got.source_uri == source
        stored[item_id] = (data, tags, source)
    return stored


def samples_of(data: bytes) -> np.ndarray:
    """What the server decodes from `data` (the same decoder, the bundle's rate)."""
    return decode_audio(data, RATE).samples


def assert_same_item(a: Item, b: Item) -> None:
    """The same stored item, field for field, whichever face answered (the REST client reads JSON numbers at the
    float32 precision the gRPC face carries them)."""
    assert a == b, (a, b)


def hit_ids(result: SearchResult) -> list[str]:
    assert result.ids == [h.id for h in result.hits]
    return result.ids


def assert_same_hits(a: SearchResult, b: SearchResult, tol: float = ATOL) -> None:
    """Same hits, same scores; neighbours whose scores tie within `tol` may trade places, including at the cut."""
    sa, sb = [h.score for h in a.hits], [h.score for h in b.hits]
    assert len(sa) == len(sb)
    np.testing.assert_allclose(sa, sb, atol=tol)
    assert sa == sorted(sa, reverse=True) and sb == sorted(sb, reverse=True)
    score_a, score_b = dict(zip(hit_ids(a), sa)), dict(zip(hit_ids(b), sb))
    for item_id in set(score_a) & set(score_b):
        assert abs(score_a[item_id] - score_b[item_id]) <= tol, item_id
    for item_id in set(score_a) ^ set(score_b):  # in one list only: must be a tie at the k-th place
        score = score_a.get(item_id, score_b.get(item_id))
        assert abs(score - min(sa)) <= tol, f"{item_id} is in one result only"
    items_a, items_b = {h.id: h.item for h in a.hits}, {h.id: h.item for h in b.hits}
    for item_id in set(items_a) & set(items_b):  # the stored metadata is the same whichever face answered
        assert_same_item(items_a[item_id], items_b[item_id])


def metric_values(text: str, name: str) -> dict[str, float]:
    """Prometheus text -> {label string: value} for one metric name."""
    out = {}
    for line in text.splitlines():
        m = re.match(rf"^{re.escape(name)}(\{{.*\}})? (\S+)$", line)
        if m:
            out[m.group(1) or ""] = float(m.group(2))
    return out


def metric(text: str, name: str, **labels) -> float:
    want = {f'{k}="{v}"' for k, v in labels.items()}
    total = 0.0
    for key, value in metric_values(text, name).items():
        if want <= set(key[1:-1].split(",")) - {""}:
            total += value
    return total


# ---------------------------------------------------------------------------------------------------------- items


def test_add_and_get_items(items, rest, rpc):
    for item_id, (data, tags, source) in items.items():
        a, b = rest.get_item(item_id), rpc.get_item(item_id)
        for got in (a, b):
            assert got.id == item_id and got.tags == tuple(tags) and got.source_uri == source
            assert got.caption.startswith("clip ")
        assert a.content_hash == b.content_hash == hashlib.sha256(samples_of(data).tobytes()).hexdigest()
        assert a.duration_s == pytest.approx(len(samples_of(data)) / RATE, abs=1e-4)
        assert a.added_at == b.added_at, "one added_at format on both faces"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", a.added_at)
        assert_same_item(a, b)


def test_add_from_server_path(server, rest, rpc):
    folder = server.roots / "from-path"
    folder.mkdir(exist_ok=True)
    for face, client, seed in (("rest", rest, 2001), ("grpc", rpc, 2002)):
        path = folder / f"{face}.wav"
        path.write_bytes(wav(synth_clip(seed, 0.8)))
        got = client.add_item(f"path-{face}", path=str(path), tags=["from-path"])
        assert got.source_uri == str(path.resolve()) and got.tags == ("from-path",)
        assert got.duration_s == pytest.approx(0.8, abs=1e-3)
        assert rest.get_item(f"path-{face}").source_uri == str(path.resolve())
        assert_same_item(rest.get_item(f"path-{face}"), got)
        assert_same_item(rest.get_item(f"path-{face}"), rpc.get_item(f"path-{face}"))


def test_duplicate_content_is_stored_unless_dedupe_asks_for_409(items, rest, rpc):
    item_id, (data, _, _) = next(iter(items.items()))
    # The documented rule: the same sound under a new id is stored (both faces); dedupe=True refuses it.
    for name, client in (("dup-ok-rest", rest), ("dup-ok-grpc", rpc)):
        stored = client.add_item(name, audio=data)
        assert stored.content_hash == rest.get_item(item_id).content_hash
        client.delete_item(name)
    with pytest.raises(ClientError) as e:
        rest.add_item("dup-rest", audio=data, dedupe=True)
    assert e.value.status == 409 and e.value.reason == "conflict" and e.value.code == "ALREADY_EXISTS"
    assert e.value.details["existing_id"] == item_id and item_id in e.value.message
    with pytest.raises(ClientError) as e:
        rpc.add_item("dup-grpc", audio=data, dedupe=True)
    assert e.value.code == "ALREADY_EXISTS" and item_id in e.value.message
    assert e.value.details["existing_id"] == item_id
    for client in (rest, rpc):
        with pytest.raises(ClientError) as e:  # the same id with other audio
            client.add_item(item_id, audio=wav(synth_clip(3001)))
        assert e.value.status == 409
        for refused in ("dup-rest", "dup-grpc"):
            with pytest.raises(ClientError) as e:
                client.get_item(refused)
            assert e.value.status == 404
    # upsert replaces the item under its id
    replaced = rest.add_item("upsert-me", audio=wav(synth_clip(3002)), tags=["v1"])
    again = rest.add_item("upsert-me", audio=wav(synth_clip(3003)), tags=["v2"], upsert=True)
    assert again.tags == ("v2",) and again.content_hash != replaced.content_hash
    assert rpc.get_item("upsert-me").tags == ("v2",)


def test_delete_then_get_is_404(rest, rpc):
    for i, (deleter, other) in enumerate(((rest, rpc), (rpc, rest))):
        item_id = f"doomed-{i}"
        added = rest.add_item(item_id, audio=wav(synth_clip(4000 + i)))
        assert_same_item(added, other.get_item(item_id))
        deleted = deleter.delete_item(item_id)
        assert_same_item(added, deleted)  # the answer is what was deleted
        for client in (rest, rpc):
            for call in (client.get_item, client.delete_item, client.search_item):
                with pytest.raises(ClientError) as e:
                    call(item_id)
                assert e.value.status == 404, call
        assert item_id not in hit_ids(rest.search_text("a sound", k=100))


# --------------------------------------------------------------------------------------------------------- search


def test_search_text_with_k_and_filters(items, rest, rpc):
    for k in (1, 3, N_ITEMS):
        a, b = rest.search_text("dog barking", k=k), rpc.search_text("dog barking", k=k)
        assert len(a.hits) == k
        assert_same_hits(a, b)
        assert a.bundle == b.bundle == "tiny@test" and a.index_version == b.index_version
    filters = [
        ({"tags_any": ["even"]}, lambda it: "even" in it.tags),
        ({"tags_all": ["odd", "low"]}, lambda it: {"odd", "low"} <= set(it.tags)),
        ({"source_prefix": "grpc://"}, lambda it: it.source_uri.startswith("grpc://")),
        ({"min_duration_s": 1.0, "max_duration_s": 2.5}, lambda it: 1.0 <= it.duration_s <= 2.5),
    ]
    for flt, ok in filters:
        expected = sum(ok(rest.get_item(i)) for i in items)
        a, b = rest.search_text("dog barking", k=50, filter=flt), rpc.search_text("dog barking", k=50, filter=flt)
        assert_same_hits(a, b)
        assert all(ok(h.item) for h in a.hits + b.hits), flt
        assert len({i for i in hit_ids(a) if i in items}) == expected > 0, flt


def test_search_offset_pages_the_ranking_and_k_is_checked_on_both_faces(items, rest, rpc):
    ids = list(items)
    for client in (rest, rpc):
        full = hit_ids(client.search_text("dog barking", k=9))
        pages = [hit_ids(client.search_text("dog barking", k=3, offset=o)) for o in (0, 3, 6)]
        assert sum(pages, []) == full, "page 2 and 3 continue the same ranking"
        assert hit_ids(client.search_item(ids[0], k=2, offset=2)) == hit_ids(client.search_item(ids[0], k=4))[2:]
        assert hit_ids(client.search_audio(items[ids[1]][0], k=2, offset=1))[0] != ids[1]  # itself was first
        for k, offset in ((0, 0), (3, -1), (3, 998)):  # gRPC refuses k=0 as REST does (it used to answer 10)
            with pytest.raises(ClientError) as e:
                client.search_text("dog barking", k=k, offset=offset)
            assert e.value.status == 400, (client.transport_name, k, offset)


def test_search_texts_answers_each_query_as_search_text_does(items, rest, rpc):
    queries = ["dog barking", "rain on a window", "a door closes"]
    for client in (rest, rpc):
        batch = client.search_texts(queries, k=4, filter={"tags_any": ["even", "odd"]}, offset=1)
        assert len(batch) == 3 and len({r.index_version for r in batch}) == 1
        for query, got in zip(queries, batch):
            alone = client.search_text(query, k=4, filter={"tags_any": ["even", "odd"]}, offset=1)
            assert hit_ids(got) == hit_ids(alone), (client.transport_name, query)
            np.testing.assert_allclose([h.score for h in got.hits], [h.score for h in alone.hits], atol=1e-5)
        for bad in ([], [""], ["ok"] * 65):
            with pytest.raises(ClientError) as e:
                client.search_texts(bad)
            assert e.value.status == 400, (client.transport_name, len(bad))


def test_add_items_stores_many_and_a_rerun_resumes(rest, rpc):
    batch = [
        {"id": f"batch-{i}", "audio": wav(synth_clip(5000 + i, 0.6)), "tags": ["batch", f"b{i}"], "caption": f"c{i}"}
        for i in range(5)
    ] + [{"id": "batch-bad", "audio": b"not audio"}]
    seen = []
    first = rest.add_items(batch, concurrency=3, progress=lambda n, r: seen.append(n))
    assert sorted(first.added) == [f"batch-{i}" for i in range(5)] and first.skipped == []
    assert [f["id"] for f in first.failed] == ["batch-bad"] and "415" in first.failed[0]["reason"]
    assert seen == list(range(1, 7))
    again = rpc.add_items(batch)  # the same list again: everything stored is skipped
    assert again.added == [] and sorted(again.skipped) == [f"batch-{i}" for i in range(5)]
    got = rpc.get_item("batch-3")
    assert got.tags == ("batch", "b3") and got.caption == "c3"


def test_list_items_pages_through_every_item_in_id_order_on_both_faces(items, rest, rpc):
    stored = [it.id for it in rest.iter_items(page_size=100)]
    assert stored == sorted(stored) and set(items) <= set(stored)
    for client in (rest, rpc):
        seen, cursor, pages = [], "", 0
        while True:
            page = client.list_items(limit=5, cursor=cursor)
            assert len(page.items) <= 5 and page.index_version == rest.stats().index_version
            seen += [it.id for it in page.items]
            pages += 1
            if not page.next_cursor:
                break
            cursor = page.next_cursor
        assert seen == stored and pages == -(-len(stored) // 5)
        even = [it.id for it in client.iter_items({"tags_any": ["even"]}, page_size=2)]
        assert even == sorted(i for i, (_, tags, _) in items.items() if "even" in tags)
        first = client.list_items(limit=1).items[0]
        assert_same_item(first, rest.get_item(first.id))
        for bad in ({"limit": 0}, {"limit": 10_000}, {"cursor": "!!not-a-cursor!!"}):
            with pytest.raises(ClientError) as e:
                client.list_items(**bad)
            assert e.value.status == 400, (client.transport_name, bad)


def test_search_audio_finds_the_clip_itself(items, rest, rpc, reference):
    for item_id, (data, tags, _) in list(items.items())[:4]:
        a, b = rest.search_audio(data, k=5), rpc.search_audio(data, k=5)
        assert_same_hits(a, b)
        scores = dict(zip(hit_ids(a), (h.score for h in a.hits)))
        assert scores.get(item_id, 0) > 1 - 1e-4, (item_id, scores)  # its own embedding: cosine 1
        only = rest.search_audio(data, k=5, filter={"tags_any": [tags[1]]})  # n<i>: this item only
        assert hit_ids(only) == [item_id] and only.hits[0].score == pytest.approx(1.0, abs=1e-4)
        assert hit_ids(rpc.search_audio(data, k=5, filter={"tags_any": [tags[1]]})) == [item_id]


def test_search_item_neighbours(items, rest, rpc):
    ids = list(items)
    a, b = rest.search_item(ids[0], k=4), rpc.search_item(ids[0], k=4)
    assert len(a.hits) == 4 and ids[0] not in hit_ids(a)  # the item itself is left out
    assert hit_ids(a) == hit_ids(b)  # stored embeddings only: no model call, identical answers
    np.testing.assert_allclose([h.score for h in a.hits], [h.score for h in b.hits], atol=1e-6)
    for x, y in zip(a.hits, b.hits):
        assert_same_item(x.item, y.item)
    flt = {"tags_any": ["odd"]}
    c, d = rest.search_item(ids[0], k=50, filter=flt), rpc.search_item(ids[0], k=50, filter=flt)
    assert hit_ids(c) == hit_ids(d)
    assert set(hit_ids(c)) == {i for i, (_, tags, _) in items.items() if "odd" in tags}


# ---------------------------------------------------------------------------------------------------- the models


def test_embed_audio_matches_grpc_and_onnxruntime(items, rest, rpc, reference, bundle_json):
    dim = bundle_json["embedding_dim"]
    for data, _, _ in list(items.values())[:4]:
        a, b = np.array(rest.embed_audio(data)), np.array(rpc.embed_audio(data))
        ref = reference.encode_audio([samples_of(data)])[0]
        assert a.shape == b.shape == (dim,)
        assert abs(np.linalg.norm(a) - 1) < 1e-5
        np.testing.assert_allclose(a, b, atol=1e-6)
        np.testing.assert_allclose(a, ref, atol=ATOL)


def test_embed_text_matches_grpc_and_onnxruntime(rest, rpc, reference, bundle_json):
    texts = ["dog barking", "rain falls on a roof", "a man speaks while a car passes by on a wet street"]
    a, b = np.array(rest.embed_text(texts)), np.array(rpc.embed_text(texts))
    assert a.shape == (3, bundle_json["embedding_dim"])
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(a, reference.encode_text(texts), atol=ATOL)


def test_tag_scores_all_527_labels(items, rest, rpc, reference):
    data = next(iter(items.values()))[0]
    a, b = rest.tag(data, top_k=527), rpc.tag(data, top_k=527)
    assert a.windows == [] and b.windows == []
    names = reference.labels.names
    assert len(names) == 527
    got = {t.label: t.score for t in a.tags}
    assert len(a.tags) == 527 and set(got) == set(names)
    scores = [t.score for t in a.tags]
    assert scores == sorted(scores, reverse=True) and all(0 < s < 1 for s in scores)
    assert {t.label: t.score for t in b.tags} == pytest.approx(got, abs=1e-6)
    ref = reference.labels.scores(reference.encode_audio([samples_of(data)]))[0]
    assert got == pytest.approx(dict(zip(names, ref.tolist())), abs=ATOL)
    assert len(rest.tag(data).tags) == 10  # top_k's default


def test_tag_custom_labels(items, rest, rpc):
    data = next(iter(items.values()))[0]
    labels = ["dog barking", "Speech", "a squeaky door", "rain on a tin roof"]
    a, b = rest.tag(data, labels=labels, top_k=10), rpc.tag(data, labels=labels, top_k=10)
    assert sorted(t.label for t in a.tags) == sorted(labels)
    assert {t.label: t.score for t in a.tags} == pytest.approx({t.label: t.score for t in b.tags}, abs=1e-6)
    assert [t.label for t in rest.tag(data, labels=labels, top_k=2).tags] == [t.label for t in a.tags][:2]


def test_tag_windows_cover_the_clip(rest, rpc, bundle_json):
    step = bundle_json["audio"]["frame_seconds"]
    for seconds, window, hop in ((2.3, 1.0, 0.5), (1.0, 0.5, 0.0), (0.3, 1.0, 0.0)):
        data = wav(synth_clip(5000, seconds))
        a, b = rest.tag(data, top_k=3, window_s=window, hop_s=hop), rpc.tag(data, top_k=3, window_s=window, hop_s=hop)
        windows = a.windows
        assert windows and len(windows) == len(b.windows)
        assert windows[0].start_s == 0
        starts = [w.start_s for w in windows]
        assert all(y > x for x, y in zip(starts, starts[1:]))
        for w, v in zip(windows, b.windows):
            assert len(w.tags) == 3 and w.end_s > w.start_s
            assert w.end_s - w.start_s <= window + step + 1e-6
            assert [t.label for t in w.tags] == [t.label for t in v.tags]
            assert (v.start_s, v.end_s) == pytest.approx((w.start_s, w.end_s), abs=1e-6)
        for w, nxt in zip(windows, windows[1:]):  # no gaps (hop <= window) ...
            assert nxt.start_s <= w.end_s + 1e-6
        assert windows[-1].end_s >= seconds - step - 1e-6, (seconds, windows[-1])  # ... up to the clip's end


def test_caption_n_best_with_tags(items, rest, rpc, reference):
    data = next(iter(items.values()))[0]
    spec = reference.manifest.captioner
    for tags in ([], ["Dog", "Bark"]):
        a, b = rest.caption(data, tags=tags, n_best=3, beam_size=4), rpc.caption(data, tags=tags, n_best=3, beam_size=4)
        assert len(a) == 3 and [c.text for c in a] == [c.text for c in b]
        log_probs = [c.log_prob for c in a]
        assert log_probs == sorted(log_probs, reverse=True) and all(lp <= 0 for lp in log_probs)
        np.testing.assert_allclose(log_probs, [c.log_prob for c in b], atol=1e-5)
        hyps = reference.caption(
            [samples_of(data)],
            tags_to_multi_hot(tags)[None] if tags else None,
            DecodingOptions(beam_size=4, max_tokens=spec.max_tokens, n_best=3),
        )[0]
        assert [c.text for c in a] == [reference.caption_text(h) for h in hyps]
        np.testing.assert_allclose(log_probs, [h.log_prob for h in hyps], atol=1e-4)
    assert len(rest.caption(data)) == 1


# ------------------------------------------------------------------------------------------------ status and ops


def test_stats_and_info(server, items, rest, rpc, http, bundle_json):
    a, b = rest.stats(), rpc.stats()
    assert a == b, "the same stats, field for field, over both faces"
    assert a.items >= len(items) and a.index_kind == "flat" and a.bundle == "tiny@test"
    assert a.dim == bundle_json["embedding_dim"]
    raw = http.get("/v1/index/stats").json()  # REST's JSON, in the proto's names, which the client reads as they are
    assert (raw["items"], raw["deleted_pending"], raw["index_kind"], raw["index_version"], raw["bundle"]) == (
        a.items,
        a.deleted_pending,
        a.index_kind,
        a.index_version,
        a.bundle,
    )
    ia, ib = rest.info(), rpc.info()
    assert ia == ib, "the same info, limits included, over both faces"
    assert ia.bundle == bundle_json
    assert ia.backend == server.backend
    assert ia.limits["max_k"] == 100 and ia.limits["max_upload_bytes"] == 32 * 1024 * 1024


def test_health_readiness_and_metrics(items, rest, rpc, http):
    assert http.get("/healthz").json() == {"status": "ok"}
    ready = http.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {"ready": True, "detail": "ready"}
    before = http.get("/metrics").text
    for _ in range(3):
        rest.search_text("a door slams", k=2)
    for _ in range(2):
        rpc.search_text("a door slams", k=2)
    with pytest.raises(ClientError):
        rest.get_item("no-such-item")
    after = http.get("/metrics").text

    def delta(**labels):
        return metric(after, "blat_requests_total", **labels) - metric(before, "blat_requests_total", **labels)

    assert delta(api="rest", endpoint="/v1/search/text", status="200") == 3
    assert delta(api="grpc", endpoint="SearchText", status="OK") == 2
    assert delta(api="rest", endpoint="/v1/items/{item_id:path}", status="404") == 1
    assert metric(after, "blat_request_seconds_count", api="rest", endpoint="/v1/search/text") >= 3
    assert metric(after, "blat_batch_size_count", batcher="text_embed") >= 5
    assert metric(after, "blat_batch_size_count", batcher="audio_embed") >= len(items)
    assert 'blat_batch_size_bucket{batcher="audio_embed",le="1.0"}' in after
    assert metric(after, "blat_index_items") == rest.stats().items
    assert "blat_queue_depth" in after


def test_grpc_health_and_reflection(server):
    with grpc.insecure_channel(server.grpc_address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "blat.v1.Blat"):
            assert (
                health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status
                == health_pb2.HealthCheckResponse.SERVING
            )
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        (answer,) = reflect.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
        )
        names = {s.name for s in answer.list_services_response.service}
        assert {"blat.v1.Blat", "grpc.health.v1.Health"} <= names
        (answer,) = reflect.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(file_containing_symbol="blat.v1.Blat")]), timeout=10
        )
        assert answer.file_descriptor_response.file_descriptor_proto  # a client can learn the API from the server


def test_stream_tag_windows(rest, rpc):
    seconds, chunk_s = 4.3, 0.25
    clip = synth_clip(6000, seconds)
    f32 = clip.astype("<f4").tobytes()
    step = int(chunk_s * RATE) * 4
    chunks = [f32[i : i + step] for i in range(0, len(f32), step)]
    chunks = [c[:5] for c in chunks[:1]] + [chunks[0][5:]] + chunks[1:]  # a chunk that splits a sample
    windows = list(rpc.stream_tag(iter(chunks), RATE, "f32le", window_s=2.0, hop_s=1.0, top_k=527, timeout=60))
    starts = [w.start_s for w in windows]
    assert starts == pytest.approx([0.0, 1.0, 2.0, 3.0], abs=1e-6)
    assert [w.end_s for w in windows] == pytest.approx([2.0, 3.0, 4.0, seconds], abs=1e-6)  # a shorter last one
    # the first window's tags are the clip-level tags of its audio
    first = rest.tag(wav(clip[: 2 * RATE]), top_k=527)
    assert {t.label: t.score for t in windows[0].tags} == pytest.approx(
        {t.label: t.score for t in first.tags}, abs=1e-6
    )

    # int16 PCM at 16 kHz, resampled by the server as it streams; custom labels
    rate = 16_000
    s16 = (np.clip(clip[::2], -1, 1) * 32767).astype("<i2").tobytes()
    chunks = [s16[i : i + 3001] for i in range(0, len(s16), 3001)]  # odd sizes: samples split across chunks
    got = list(
        rpc.stream_tag(
            iter(chunks),
            rate,
            "s16le",
            window_s=1.5,
            hop_s=0.5,
            top_k=2,
            labels=["dog barking", "Speech", "silence"],
            timeout=60,
        )
    )
    starts = [w.start_s for w in got]
    assert len(got) >= 5 and starts[0] == 0
    assert all(b - a == pytest.approx(0.5, abs=1e-6) for a, b in zip(starts, starts[1:]))
    assert all(len(w.tags) == 2 and {t.label for t in w.tags} <= {"dog barking", "Speech", "silence"} for w in got)
    assert got[-1].end_s == pytest.approx(len(clip[::2]) / rate, abs=0.01)

    with pytest.raises(ClientError) as e:  # a bad config is refused before any audio is read
        list(rpc.stream_tag(iter([b"\0" * 64]), 1000, "f32le", timeout=60))
    assert e.value.code == "INVALID_ARGUMENT"
    with pytest.raises(ClientError) as e:  # streaming is gRPC-only
        list(rest.stream_tag([], RATE))
    assert e.value.status == 0 and e.value.reason == "unsupported"


EXPECTED_ROUTES = {  # method, path -> error statuses the schema must document
    ("post", "/v1/search/text"): {400, 401, 403, 429, 503, 504},
    ("post", "/v1/search/audio"): {400, 401, 403, 413, 415, 422, 429, 503, 504},
    ("post", "/v1/search/item"): {400, 401, 403, 404},
    ("post", "/v1/tag"): {400, 401, 403, 413, 415, 422, 429, 503, 504},
    ("post", "/v1/caption"): {400, 401, 403, 413, 415, 422, 429, 503, 504},
    ("post", "/v1/embed/audio"): {400, 401, 403, 413, 415, 422, 429, 503, 504},
    ("post", "/v1/embed/text"): {400, 401, 403, 429, 503, 504},
    ("post", "/v1/items"): {400, 401, 403, 409, 413, 415, 422, 429, 503},
    ("post", "/v1/items/from-path"): {400, 401, 403, 404, 409, 413, 415, 422},
    ("get", "/v1/items/{item_id}"): {400, 401, 403, 404},
    ("delete", "/v1/items/{item_id}"): {400, 401, 403, 404},
    ("get", "/v1/items"): {400, 401, 403},
    ("post", "/v1/search/texts"): {400, 401, 403, 429, 503, 504},
    ("post", "/v1/embeddings"): {400, 401, 403, 404, 413, 415, 422, 429, 503, 504},
    ("get", "/v1/models"): {401, 403},
    ("get", "/v1/audio/{item_id}"): {400, 401, 403, 404},
    ("post", "/v1/index/rebuild"): {400, 401, 403, 404, 409},
    ("get", "/v1/index/rebuild/{job_id}"): {401, 403, 404},
    ("post", "/v1/index/rebuild/{job_id}/cancel"): {401, 403, 404},
    ("post", "/v1/index/rollback"): {401, 403, 404, 409},
    ("get", "/v1/index/stats"): {401, 403},
    ("get", "/v1/info"): {401, 403},
    ("post", "/v1/tag/clips"): {400, 401, 403, 413, 415, 422, 429, 503, 504},
    ("post", "/v1/items/batch"): {400, 401, 403, 413, 415, 429, 503},
}


def test_openapi_documents_every_route_and_docs_serve_html(server, http):
    schema = http.get("/openapi.json").json()
    listed = {(m, p) for p, ops in schema["paths"].items() for m in ops if p.startswith("/v1")}
    assert listed == set(EXPECTED_ROUTES)
    for (method, path), statuses in EXPECTED_ROUTES.items():
        responses = schema["paths"][path][method]["responses"]
        documented = {int(s) for s in responses if int(s) >= 400}
        assert statuses <= documented, (method, path, sorted(statuses - documented))
        if 422 in documented:  # 422 only for bad audio; invalid parameters answer 400
            assert 413 in documented and responses["422"]["description"] != "Validation Error", (method, path)
        for s in documented:
            assert responses[str(s)]["content"]["application/json"]["schema"]["properties"]["error"], (method, path, s)
    upload = schema["paths"]["/v1/tag"]["post"]["requestBody"]["content"]
    assert upload["application/octet-stream"]["schema"]["format"] == "binary"
    assert {"/healthz", "/readyz", "/metrics"} <= set(schema["paths"])
    docs = httpx.get(f"{server.http_url}/docs", timeout=10)
    assert docs.status_code == 200 and docs.headers["content-type"].startswith("text/html")
    assert "swagger" in docs.text.lower() and "/openapi.json" in docs.text


@pytest.mark.slow
def test_cli(server, tmp_path):
    """`blat COMMAND ... --url URL --json` (python -m blat_cli), over REST and over gRPC (--url grpc://...)."""
    clip = tmp_path / "clip.wav"
    clip.write_bytes(wav(synth_clip(7000, 1.2)))

    def blat(*args) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "blat_cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=60
        )

    def cli(*args, url=server.http_url, check=True):
        out = blat(*args, "--url", url, "--json")
        assert (out.returncode == 0) == check, out.stderr
        return json.loads(out.stdout) if check else out

    def ids(answer: dict) -> list[str]:
        return [h["id"] for h in answer["hits"]]

    added = cli("add", "cli-item", str(clip), "--tag", "cli", "--caption", "from the command line")
    assert added["id"] == "cli-item" and added["tags"] == ["cli"]
    assert "cli-item" in ids(cli("search", "dog barking", "-k", "100"))
    assert ids(cli("search", "dog barking", "--tags-any", "cli")) == ["cli-item"]
    assert len(cli("tag", str(clip), "--top-k", "3")["tags"]) == 3
    assert len(cli("caption", str(clip), "--n-best", "2", "--beam-size", "3")) == 2
    grpc_url = f"grpc://{server.grpc_address}"
    via_grpc = cli("get", "cli-item", url=grpc_url)
    assert via_grpc["tags"] == ["cli"]
    via_rest = cli("get", "cli-item")
    assert via_grpc.pop("duration_s") == pytest.approx(via_rest.pop("duration_s"), rel=1e-6)  # float32 over gRPC
    assert via_grpc == via_rest, "the same JSON over both transports"
    assert ids(cli("search", "dog barking", "--tags-any", "cli", url=grpc_url)) == ["cli-item"]
    for url in (server.http_url, grpc_url):
        listed = cli("list-items", "--all", "--tags-any", "cli", url=url)
        assert [it["id"] for it in listed] == ["cli-item"]
        page = cli("list-items", "--limit", "1", url=url)
        assert len(page["items"]) == 1 and page["next_cursor"]
        after = cli("list-items", "--limit", "1", "--cursor", page["next_cursor"], url=url)
        assert after["items"][0]["id"] > page["items"][0]["id"]
    text = blat("get", "cli-item", "--url", server.http_url)  # without --json: text
    assert text.returncode == 0 and "id: cli-item" in text.stdout, text.stdout + text.stderr
    for url in (server.http_url, grpc_url):
        missing = cli("get", "no-such-item", url=url, check=False)
        assert missing.returncode == 1 and missing.stderr.startswith("error: 404 "), missing.stderr
    assert "not_found" in cli("get", "no-such-item", check=False).stderr
    refused = cli("rebuild", str(server.roots), check=False)  # neither --replace nor --merge: nothing starts
    assert refused.returncode == 2 and "--replace" in refused.stderr and "--merge" in refused.stderr, refused.stderr
    gone = cli("stats", url="http://127.0.0.1:1", check=False)  # nothing listens there
    assert gone.returncode == 3, gone.stderr
    helped = blat("--help")
    assert helped.returncode == 0
    for word in (
        "search",
        "tag",
        "caption",
        "add",
        "add-folder",
        "get",
        "delete",
        "rebuild",
        "rollback",
        "stats",
        "info",
    ):
        assert word in helped.stdout, word
    helped = blat("search", "--help")
    assert helped.returncode == 0
    for word in ("--url", "grpc://", "--api-key", "--json", "dog barking"):
        assert word in helped.stdout, word


# ---------------------------------------------------------------------------------------------- micro-batching


@pytest.mark.slow
def test_concurrent_requests_are_micro_batched(rest, rpc, http):
    clips = [wav(synth_clip(8000 + i, 0.4 + 0.1 * (i % 7))) for i in range(24)]  # unequal lengths in one batch
    single = [np.array(rest.embed_audio(c)) for c in clips]  # one at a time: batches of one
    before = http.get("/metrics").text
    barrier = threading.Barrier(len(clips))

    def embed(i):
        barrier.wait()
        client = rest if i % 3 else rpc
        return np.array(client.embed_audio(clips[i]))

    with ThreadPoolExecutor(len(clips)) as pool:
        together = list(pool.map(embed, range(len(clips))))
    after = http.get("/metrics").text
    for i, (a, b) in enumerate(zip(single, together)):
        np.testing.assert_allclose(a, b, atol=ATOL, err_msg=f"clip {i}")
    calls = metric(after, "blat_batch_size_count", batcher="audio_embed") - metric(
        before, "blat_batch_size_count", batcher="audio_embed"
    )
    requests = metric(after, "blat_batch_size_sum", batcher="audio_embed") - metric(
        before, "blat_batch_size_sum", batcher="audio_embed"
    )
    ones = metric(after, "blat_batch_size_bucket", batcher="audio_embed", le="1.0") - metric(
        before, "blat_batch_size_bucket", batcher="audio_embed", le="1.0"
    )
    assert requests == len(clips)
    assert calls < len(clips) and ones < calls, f"no batch larger than 1: {calls} model calls for {requests} requests"


# ---------------------------------------------------------------------------------------- rebuild and rollback


def _wait_job(client, job_id, timeout_s=120.0) -> Job:
    deadline = time.monotonic() + timeout_s
    while True:
        job = client.rebuild_status(job_id)
        assert job.finished == (job.state in ("succeeded", "failed", "cancelled")), job
        if job.finished:
            return job
        assert time.monotonic() < deadline, f"rebuild {job_id} still {job.state} after {timeout_s} s"
        time.sleep(0.05)


@pytest.mark.slow
def test_rebuild_cancel_and_rollback(server, items, rest, rpc, http):
    """Last in the module: the rebuild replaces the live index (rollback brings it back)."""
    folder = server.roots / "collection"
    (folder / "sub dir").mkdir(parents=True, exist_ok=True)
    n = 40
    for i in range(n):
        (folder / ("sub dir" if i % 4 == 0 else "") / f"clip{i:02d}.wav").write_bytes(wav(synth_clip(9000 + i, 2.0)))
    (folder / "notes.txt").write_text("not audio: ignored")
    old = rest.stats()

    # a rebuild that succeeds, while searches keep answering from the live version
    stop, answered, errors = threading.Event(), [], []

    def search_loop():
        with Client(server.http_url, timeout=30) as c:
            while not stop.is_set():
                try:
                    answered.append((time.monotonic(), len(c.search_text("a sound", k=3).hits)))
                except ClientError as e:  # pragma: no cover - reported below
                    errors.append(e)

    searcher = threading.Thread(target=search_loop)
    searcher.start()
    try:
        t0 = time.monotonic()
        job = rest.start_rebuild(folder=str(folder), mode="replace")
        assert job.state in ("pending", "running") and job.total == n and job.job_id != old.index_version
        done = _wait_job(rest, job.job_id)
        t1 = time.monotonic()
    finally:
        stop.set()
        searcher.join()
    assert not errors, errors
    assert done.state == "succeeded" and done.done == done.added == n and done.skipped == 0, done
    assert done.error == "" and done.version == done.job_id == job.job_id, done
    raw = http.get(f"/v1/index/rebuild/{job.job_id}").json()  # REST's progress has the recall check too
    assert raw["state"] == "succeeded" and raw["recall"] == 1.0, raw
    assert sum(t0 < t < t1 for t, _ in answered) >= 1, "no search answered while the rebuild ran"
    assert all(k == 3 for _, k in answered)
    assert rpc.rebuild_status(job.job_id) == done, "the same job, field for field, over both faces"
    new = rpc.stats()
    assert new.index_version == job.job_id and new.items == n
    assert rest.stats().previous_version == old.index_version
    assert rest.stats() == new
    got = rest.get_item("sub_dir/clip00.wav")  # ids are relative paths, spaces made underscores
    assert got.source_uri == str(folder / "sub dir" / "clip00.wav")
    assert len(rest.search_text("a sound", k=5).hits) == 5
    with pytest.raises(ClientError) as e:
        rest.get_item(next(iter(items)))
    assert e.value.status == 404

    # a cancelled rebuild leaves the live version as it is
    job = rpc.start_rebuild(folder=str(folder), mode="replace")
    cancelled = rest.cancel_rebuild(job.job_id)
    assert cancelled.job_id == job.job_id
    assert _wait_job(rpc, job.job_id).state == "cancelled"
    assert rpc.cancel_rebuild(job.job_id).state == "cancelled"  # cancelling again changes nothing
    assert rest.rebuild_status(job.job_id) == rpc.rebuild_status(job.job_id)
    assert rest.rebuild_status(job.job_id).state == "cancelled"
    assert rest.stats().index_version == new.index_version
    for client in (rest, rpc):
        with pytest.raises(ClientError) as e:
            client.rebuild_status("v9999")
        assert e.value.status == 404

    # rollback (gRPC) brings the old version back with its items; a second rollback (REST) finds nothing: one step
    # back, never a toggle to the newer version
    back = rpc.rollback()
    assert back.index_version == old.index_version and back.items == old.items and back.previous_version == ""
    assert rest.stats() == back
    assert rest.get_item(next(iter(items))).id == next(iter(items))
    for client in (rest, rpc):
        with pytest.raises(ClientError) as e:
            client.rollback()
        assert e.value.status == 404, client.transport_name
    assert rpc.stats() == back

    # merge (gRPC) keeps every stored item and adds the folder's; the same ids again take the new entries
    merged = _wait_job(rpc, rpc.start_rebuild(folder=str(folder), mode="merge").job_id)
    assert merged.state == "succeeded" and merged.added == old.items + n and merged.total == merged.done, merged
    after = rest.stats()
    assert after.items == old.items + n and after.previous_version == old.index_version
    assert rest.get_item(next(iter(items))).id == next(iter(items))
    assert rest.get_item("sub_dir/clip00.wav").source_uri == str(folder / "sub dir" / "clip00.wav")
    again = _wait_job(rest, rest.start_rebuild(folder=str(folder), mode="merge").job_id)
    assert again.state == "succeeded" and rest.stats().items == old.items + n, again
    for client in (rest, rpc):  # no mode, or another word: refused, naming how many items are stored
        for mode in ("", "overwrite"):
            with pytest.raises(ClientError) as e:
                client.start_rebuild(folder=str(folder), mode=mode)
            assert e.value.status == 400 and "merge" in e.value.message, (client.transport_name, mode)
