"""Metadata (`extra`) written and filtered, duplicates by choice, and batches (tag many clips, add many items), over
real HTTP and gRPC against one in-process gateway, through `blat_client` and raw requests.

Each face must answer the same: the same items stored with the same metadata, the same filtered lists and hits, the
same per-item outcomes of a batch, the same refusals with the same code and reason.
"""

from __future__ import annotations

import base64
import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from blat_client import Client, ClientError
from tests.server.conftest import running_inproc, synth_clip, wav

LICENCES = ["CC0-1.0", "CC-BY-4.0", "GPL-2+"]


@pytest.fixture(scope="module")
def gateway(tiny_bundle, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("batches")
    with running_inproc(tiny_bundle, tmp) as gw:
        yield gw


@pytest.fixture(scope="module")
def faces(gateway):
    with Client(gateway.http_url) as rest, Client(f"grpc://{gateway.grpc_address}") as rpc:
        yield {"rest": rest, "grpc": rpc}


@pytest.fixture(scope="module")
def http(gateway):
    with httpx.Client(base_url=gateway.http_url, timeout=60) as c:
        yield c


def clip(seed: int, seconds: float = 0.6) -> bytes:
    return wav(synth_clip(seed, seconds=seconds))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def catalogue(faces):
    """12 items with metadata, half stored over each face: id -> extra."""
    stored = {}
    for i in range(12):
        extra = {
            "licence": LICENCES[i % 3],
            "year": 2015 + i,
            "date": f"202{i % 6}-0{i % 9 + 1}-15",
            "public": i % 2 == 0,
        }
        face = faces["rest" if i % 2 else "grpc"]
        got = face.add_item(f"cat/{i:02d}", clip(300 + i), tags=["catalogue"], extra=extra)
        assert got.extra == extra
        stored[got.id] = extra
    return stored


def test_extra_is_stored_and_read_back_the_same_on_both_faces(faces, catalogue):
    for item_id, extra in catalogue.items():
        a, b = faces["rest"].get_item(item_id), faces["grpc"].get_item(item_id)
        assert a.extra == b.extra == extra


FILTERS = [
    {"licence": "CC0-1.0"},
    {"licence": {"in": ["CC-BY-4.0", "GPL-2+"]}, "year": {"gte": 2020}},
    {"date": {"gte": "2022-01-01", "lt": "2025-01-01"}},
    {"public": True, "year": {"lt": 2020}},
    {"year": {"gt": "2020"}},  # a string bound never matches a number
]


@pytest.mark.parametrize("conditions", FILTERS, ids=range(len(FILTERS)))
def test_extra_filters_select_the_same_items_on_both_faces(faces, catalogue, conditions):
    from blat_gateway.index import ItemRecord, SearchFilter

    flt = SearchFilter(extra=conditions)
    want = sorted(i for i, extra in catalogue.items() if flt.matches(ItemRecord(id=i, extra=extra)))
    for name, face in faces.items():
        listed = [it.id for it in face.iter_items({"tags_any": ["catalogue"], "extra": conditions})]
        assert listed == want, name
        hits = face.search_text("a sound", k=50, filter={"tags_all": ["catalogue"], "extra": conditions}).ids
        assert sorted(hits) == want, name
        similar = face.search_audio(clip(300), k=50, filter={"extra": conditions, "tags_any": ["catalogue"]}).ids
        assert sorted(similar) == want, name


@pytest.mark.parametrize(
    "extra, words",
    [
        ({"predicted_tags": {"Dog": 1.0}}, "server's own"),
        ({"bad key": 1}, "extra key"),
        ({"big": "x" * 9000}, "bytes as JSON"),
    ],
)
def test_bad_extra_is_refused_alike_on_both_faces(faces, http, extra, words):
    codes = set()
    for face in faces.values():
        with pytest.raises(ClientError) as e:
            face.add_item("bad/extra", clip(1), extra=extra)
        assert e.value.status == 400 and e.value.code == "INVALID_ARGUMENT" and words in e.value.message
        codes.add((e.value.code, e.value.reason))
    r = http.post("/v1/items", params={"id": "bad/extra", "extra": "[1, 2]"}, content=clip(1))
    assert r.status_code == 400 and "JSON object" in r.json()["error"]["message"]
    r = http.get("/v1/items", params={"extra": json.dumps({"k": {"like": "x"}})})
    assert r.status_code == 400 and r.json()["error"]["code"] == "INVALID_ARGUMENT"
    assert len(codes) == 1
    with pytest.raises(ClientError) as gone:
        faces["rest"].get_item("bad/extra")
    assert gone.value.status == 404  # nothing was stored


def test_the_same_sound_is_stored_again_unless_dedupe_is_asked(faces):
    data = clip(77)
    for name, face in faces.items():
        first = face.add_item(f"dup/{name}/a", data)
        second = face.add_item(f"dup/{name}/b", data)  # the rule: duplicates are allowed by default
        assert first.content_hash == second.content_hash
        with pytest.raises(ClientError) as e:
            face.add_item(f"dup/{name}/c", data, dedupe=True)
        assert (e.value.status, e.value.code, e.value.reason) == (409, "ALREADY_EXISTS", "conflict")
        assert e.value.details["existing_id"].startswith("dup/") and "already stored" in e.value.message


def test_add_many_items_in_one_call_each_on_its_own(faces, http):
    """One AddItems call: good items, an undecodable one, one already stored, one repeated within the batch; each
    gets its own result, the same over both faces, and the stored ones are there."""
    for name, face in faces.items():
        face.add_item(f"batch/{name}/old", clip(900))
        entries = [
            {"item_id": f"batch/{name}/new-0", "audio": clip(901), "tags": ["x"], "extra": {"n": 1}},
            {"item_id": f"batch/{name}/bad", "audio": b"not audio"},
            {"item_id": f"batch/{name}/old", "audio": clip(902)},
            {"item_id": f"batch/{name}/new-1", "audio": clip(903), "caption": "c"},
        ]
        results = face._add_batch(entries)
        assert [r.id for r in results] == [e["item_id"] for e in entries]
        outcomes = [(r.item is not None, r.error.status if r.error else None) for r in results]
        assert outcomes == [(True, None), (False, 415), (False, 409), (True, None)], (name, results)
        assert results[1].error.code == "INVALID_ARGUMENT" and results[1].error.reason == "unsupported_format"
        assert face.get_item(f"batch/{name}/new-0").extra == {"n": 1}
        assert face.get_item(f"batch/{name}/new-1").caption == "c"
    # REST's JSON is the proto's: items with base64 audio, results with the error object of a refused call
    body = {"items": [{"id": "batch/raw", "audio": {"data": b64(clip(904))}, "extra": {"k": "v"}}, {"id": "batch/raw"}]}
    r = http.post("/v1/items/batch", json=body)
    assert r.status_code == 200, r.text
    first, second = r.json()["results"]
    assert first["item"]["extra"] == {"k": "v"} and first["error"] is None
    assert second["item"] is None and second["error"]["code"] == "INVALID_ARGUMENT"
    too_many = {"items": [{"id": f"batch/n{i}", "audio": {"data": b64(clip(1))}} for i in range(17)]}
    assert http.post("/v1/items/batch", json=too_many).status_code == 400


def test_client_add_items_sends_batches_and_resumes(faces, tmp_path):
    entries = [{"id": f"many/{i:02d}", "audio": clip(500 + i), "extra": {"i": i}} for i in range(10)]
    entries.append({"id": "many/missing", "audio": tmp_path / "no-such.wav"})
    seen = []
    report = faces["grpc"].add_items(entries, batch_size=4, concurrency=2, progress=lambda n, r: seen.append(n))
    assert sorted(report.added) == [f"many/{i:02d}" for i in range(10)] and not report.skipped
    assert [f["id"] for f in report.failed] == ["many/missing"] and seen == list(range(1, 12))
    again = faces["rest"].add_items(entries[:10], batch_size=3)  # a rerun skips what is stored
    assert sorted(again.skipped) == sorted(report.added) and not again.added and not again.failed
    assert [it.extra["i"] for it in faces["rest"].iter_items({"extra": {"i": {"gte": 7}}})] == [7, 8, 9]


def test_tag_many_clips_in_one_call_equals_one_at_a_time(faces, http):
    clips = [clip(40 + i, seconds=0.5 + 0.3 * i) for i in range(4)]
    for name, face in faces.items():
        together = face.tag_clips(clips, top_k=3)
        alone = [face.tag(c, top_k=3) for c in clips]
        assert [[t.label for t in r.tags] for r in together] == [[t.label for t in r.tags] for r in alone], name
        for a, b in zip(together, alone):
            assert [t.score for t in a.tags] == pytest.approx([t.score for t in b.tags], abs=1e-5)
    r = http.post("/v1/tag/clips", json={"audios": [{"data": b64(clips[0])}, {"data": b64(b"junk")}]})
    assert r.status_code == 415 and "audios[1]" in r.json()["error"]["message"]
    r = http.post("/v1/tag/clips", json={"audios": [{"data": b64(clips[0])}] * 17})
    assert r.status_code == 400
    for face in faces.values():
        with pytest.raises(ClientError) as e:
            face.tag_clips([clips[0], b"junk"])
        assert e.value.status == 415 and "audios[1]" in e.value.message


def test_batches_good_and_bad_together_under_load(faces):
    """Good and bad batch calls at once over both faces: every good one answers what it answers alone, every bad
    one is refused with a 4xx, and nothing fails otherwise."""
    clips = [clip(60 + i) for i in range(3)]
    expected = [[t.label for t in r.tags] for r in faces["rest"].tag_clips(clips, top_k=2)]

    def call(n: int) -> str:
        face = faces["rest" if n % 2 else "grpc"]
        if n % 3 == 0:
            try:
                face.tag_clips([clips[0], b"bad"])
            except ClientError as e:
                return f"refused {e.status}"
            return "accepted a bad clip"
        got = [[t.label for t in r.tags] for r in face.tag_clips(clips, top_k=2)]
        return "ok" if got == expected else f"differs {got}"

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(call, range(24)))
    assert {o for n, o in enumerate(outcomes) if n % 3 == 0} == {"refused 415"}
    assert {o for n, o in enumerate(outcomes) if n % 3} == {"ok"}
