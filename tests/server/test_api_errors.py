"""Hostile and mistaken requests against the gateway: every bad input gets a 4xx (a non-OK, non-INTERNAL gRPC
code), never a crash, and the server keeps answering. Also: upload limits (413), API keys (401/403), overload (429
with Retry-After) and a Triton backend that goes away (503 within the deadline, search by stored id still works).
The clients that must see a 429 or 503 are built with `retry=NO_RETRY`: by default `blat_client` retries them.

The overload and Triton tests run the gateway in-process (the app, door, uvicorn protocol and gRPC server of
`python -m blat_gateway`, on real ports). The others use a real process: what it writes to its log is checked, and
an upload refused while the client still sends must reach that client with the server's own scheduling (in the test
process, the GIL delays the server's reads, and the refused client can see a reset instead of its 413).
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

import grpc
import httpx
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from blat_client import NO_RETRY, Client, ClientError
from blat_gateway.audio import AudioLimits, encode_wav
from blat_wire import blat_pb2 as pb
from blat_wire import blat_pb2_grpc as pb_grpc
from tests.server.badinputs import bad_inputs
from tests.server.conftest import running_inproc, running_server, start_server, synth_clip, wav

MAX_UPLOAD = 1_572_864  # 1.5 MiB: the over-size cases stay small
MAX_SECONDS = 20.0
LIMITS_ENV = {
    "BLAT_SERVER_LIMITS__MAX_UPLOAD_BYTES": str(MAX_UPLOAD),
    "BLAT_SERVER_LIMITS__MAX_AUDIO_SECONDS": str(MAX_SECONDS),
}
CASES = bad_inputs(limits=AudioLimits(max_bytes=MAX_UPLOAD, max_seconds=MAX_SECONDS))
REST_UPLOADS = ["/v1/search/audio", "/v1/tag", "/v1/caption", "/v1/embed/audio", "/v1/items"]
GRPC_UPLOADS = {
    "SearchAudio": lambda data: pb.SearchAudioRequest(audio=pb.Audio(data=data)),
    "Tag": lambda data: pb.TagRequest(audio=pb.Audio(data=data)),
    "Caption": lambda data: pb.CaptionRequest(audio=pb.Audio(data=data)),
    "EmbedAudio": lambda data: pb.EmbedAudioRequest(audio=pb.Audio(data=data)),
    "AddItem": lambda data: pb.AddItemRequest(id="bad-upload", audio=pb.Audio(data=data)),
}
NEVER = {grpc.StatusCode.OK, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}


@pytest.fixture(scope="module")
def gw(tiny_bundle, tmp_path_factory):
    """One gateway (ONNX Runtime) with small upload and duration limits, for every test up to the last one."""
    server = start_server(tiny_bundle, tmp_path_factory.mktemp("errors"), env=LIMITS_ENV)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def http(gw):
    with httpx.Client(base_url=gw.http_url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def stub(gw):
    with grpc.insecure_channel(gw.grpc_address, options=[("grpc.max_send_message_length", 64 << 20)]) as channel:
        yield pb_grpc.BlatStub(channel)


@pytest.fixture(scope="module")
def good_wav():
    return wav(synth_clip(1, 1.0))


def grpc_code(call, request) -> grpc.StatusCode:
    try:
        call(request, timeout=60)
    except grpc.RpcError as e:
        return e.code()
    return grpc.StatusCode.OK


def error_json(r: httpx.Response) -> dict:
    body = r.json()
    assert set(body) == {"error"} and body["error"]["code"] and body["error"]["message"], body
    return body["error"]


# ------------------------------------------------------------------------------------------------ bad audio


def test_catalogue_is_broad():
    assert len(CASES) >= 40 and len({c.name for c in CASES}) == len(CASES)
    kinds = {c.name.split("_")[0] for c in CASES}
    assert {"empty", "wav", "flac", "ogg", "oversize"} <= kinds


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_audio_is_refused_everywhere(gw, http, stub, case):
    for path in REST_UPLOADS:
        params = {"id": f"bad-{case.name}"} if path == "/v1/items" else {}
        r = http.post(path, params=params, content=case.data, headers={"content-type": case.content_type})
        assert r.status_code in case.expect_status, (path, r.status_code, r.text[:300])
        assert error_json(r)["reason"] in {"bad_audio", "unsupported_format", "too_large"}
    # the same bytes as a server-side file under the ingest roots
    file = gw.roots / "bad" / case.name / case.filename
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_bytes(case.data)
    r = http.post("/v1/items/from-path", json={"id": f"bad-{case.name}", "path": str(file)})
    assert r.status_code in case.expect_status, ("from-path", r.status_code, r.text[:300])

    expect = (
        {grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.RESOURCE_EXHAUSTED}
        if 413 in case.expect_status
        else {grpc.StatusCode.INVALID_ARGUMENT}
    )
    for method, make in GRPC_UPLOADS.items():
        code = grpc_code(getattr(stub, method), make(case.data))
        assert code in expect and code not in NEVER, (method, code)
    assert grpc_code(stub.AddItem, pb.AddItemRequest(id=f"bad-{case.name}", path=str(file))) in expect
    assert http.get("/healthz").status_code == 200


def test_upload_over_the_limit_is_413(gw, http, stub):
    big = wav(np.zeros(MAX_UPLOAD // 4 + 1000, np.float32), rate=48_000)  # valid audio, a few kB over the limit
    assert MAX_UPLOAD < len(big) < MAX_UPLOAD + 64 * 1024
    for path in REST_UPLOADS:
        params = {"id": "too-big"} if path == "/v1/items" else {}
        r = http.post(path, params=params, content=big)
        assert r.status_code == 413 and error_json(r)["reason"] == "too_large", path

        def chunks():  # no Content-Length: the limit is enforced while the body streams in
            for i in range(0, len(big), 65536):
                yield big[i : i + 65536]

        r = http.post(path, params=params, content=chunks())
        assert r.status_code == 413 and "limit" in error_json(r)["message"], path
    too_long = wav(np.zeros(int((MAX_SECONDS + 1) * 8000), np.float32), rate=8000, subtype="PCM_16")
    assert len(too_long) < MAX_UPLOAD
    assert http.post("/v1/embed/audio", content=too_long).status_code == 413
    for method, make in GRPC_UPLOADS.items():
        assert grpc_code(getattr(stub, method), make(big)) == grpc.StatusCode.OUT_OF_RANGE, method
        assert grpc_code(getattr(stub, method), make(too_long)) == grpc.StatusCode.OUT_OF_RANGE, method
        huge = make(bytes(MAX_UPLOAD + 200 * 1024))  # over the gRPC message limit: refused before it is parsed
        assert grpc_code(getattr(stub, method), huge) == grpc.StatusCode.RESOURCE_EXHAUSTED, method
    with Client(gw.http_url) as c:
        with pytest.raises(ClientError) as e:
            c.embed_audio(big)
    assert e.value.status == 413 and not e.value.retryable


# ---------------------------------------------------------------------------------------- text, ids, JSON


def test_bad_text(http, stub):
    for text in ["", "   ", "x" * 513]:
        r = http.post("/v1/search/text", json={"query": text})
        assert r.status_code == 400 and error_json(r)["reason"] == "bad_request", text[:10]
        assert http.post("/v1/embed/text", json={"texts": ["fine", text]}).status_code == 400
        assert grpc_code(stub.SearchText, pb.SearchTextRequest(query=text)) == grpc.StatusCode.INVALID_ARGUMENT
        assert grpc_code(stub.EmbedText, pb.EmbedTextRequest(texts=[text])) == grpc.StatusCode.INVALID_ARGUMENT
    assert http.post("/v1/search/text", json={"query": "x" * 512}).status_code == 200  # exactly at the limit
    assert http.post("/v1/embed/text", json={"texts": []}).status_code == 400
    assert http.post("/v1/embed/text", json={"texts": ["a"] * 65}).status_code == 400
    assert grpc_code(stub.EmbedText, pb.EmbedTextRequest(texts=[])) == grpc.StatusCode.INVALID_ARGUMENT


def test_bad_ids(http, stub, good_wav):
    for bad in ["has space", "x" * 201, "naïve", "semi;colon", "quote'", "tab\there", ""]:
        for method in ("GET", "DELETE"):
            r = http.request(method, f"/v1/items/{quote(bad, safe='')}")
            assert r.status_code == 400 and "invalid item id" in error_json(r)["message"], (method, bad)
        r = http.post("/v1/items", params={"id": bad}, content=good_wav)
        assert r.status_code == 400, bad
        assert http.post("/v1/search/item", json={"id": bad}).status_code == 400
        for call, request in (
            (stub.GetItem, pb.ItemRequest(id=bad)),
            (stub.DeleteItem, pb.ItemRequest(id=bad)),
            (stub.SearchItem, pb.SearchItemRequest(id=bad)),
            (stub.AddItem, pb.AddItemRequest(id=bad, audio=pb.Audio(data=good_wav))),
        ):
            assert grpc_code(call, request) == grpc.StatusCode.INVALID_ARGUMENT, bad
    assert http.post("/v1/items", content=good_wav).status_code == 400  # no id at all
    for item in ("never-stored", "a/b:c.d_e-f"):  # valid ids that are not there
        assert http.get(f"/v1/items/{item}").status_code == 404
        assert http.post("/v1/search/item", json={"id": item}).status_code == 404
        assert grpc_code(stub.GetItem, pb.ItemRequest(id=item)) == grpc.StatusCode.NOT_FOUND


JSON_ROUTES = ["/v1/search/text", "/v1/search/item", "/v1/embed/text", "/v1/items/from-path", "/v1/index/rebuild"]
BROKEN_JSON = [b"{not json", b"", b"[1, 2]", b"null", b'"a string"', b'{"query": "a",}', b"\xff\xfe{}"]
WRONG_TYPES = [
    ("/v1/search/text", {"query": 5}),
    ("/v1/search/text", {"query": ["a"]}),
    ("/v1/search/text", {"query": "a", "k": "ten"}),
    ("/v1/search/text", {"query": "a", "k": 1.5}),
    ("/v1/search/text", {"query": "a", "filter": {"tags_any": "dog"}}),
    ("/v1/search/text", {"query": "a", "filter": {"min_duration_s": "long"}}),
    ("/v1/search/text", {"query": "a", "filter": {"min_duration_s": 5, "max_duration_s": 1}}),
    ("/v1/search/text", {"query": "a", "filter": {"tag_any": ["dog"]}}),  # misspelt: not silently ignored
    ("/v1/search/text", {"query": "a", "filter": []}),
    ("/v1/search/item", {"id": 5}),
    ("/v1/search/item", {}),
    ("/v1/embed/text", {"texts": "not a list"}),
    ("/v1/embed/text", {"texts": [1, 2]}),
    ("/v1/embed/text", {}),
    ("/v1/items/from-path", {"id": "x"}),
    ("/v1/items/from-path", {"id": "x", "path": "/a.wav", "tags": "dog"}),
    ("/v1/items/from-path", {"id": "x", "path": "/a.wav", "upsert": "maybe"}),
    ("/v1/index/rebuild", {}),
    ("/v1/index/rebuild", {"folder": "/a", "manifest": "/b"}),
    ("/v1/index/rebuild", {"folder": 7}),
    ("/v1/index/rebuild", {"folder": "/x"}),  # no mode: a rebuild never replaces by default
    ("/v1/index/rebuild", {"folder": "/x", "mode": "overwrite"}),
]


def test_bad_json(http, stub):
    for route in JSON_ROUTES:
        for body in BROKEN_JSON:
            r = http.post(route, content=body, headers={"content-type": "application/json"})
            assert r.status_code == 400, (route, body, r.status_code, r.text[:200])
            assert error_json(r)["reason"] == "bad_request"
    for route, body in WRONG_TYPES:
        r = http.post(route, json=body)
        assert r.status_code == 400, (route, body, r.status_code, r.text[:200])
        error_json(r)
    for path, params in [
        ("/v1/search/audio", {"k": "ten"}),
        ("/v1/tag", {"top_k": "x"}),
        ("/v1/tag", {"window_s": "wide"}),
        ("/v1/caption", {"n_best": "two"}),
        ("/v1/items", {"id": "x", "upsert": "maybe"}),
    ]:
        r = http.post(path, params=params, content=b"RIFF")
        assert r.status_code == 400, (path, params, r.text[:200])
    # not JSON at all: unknown routes and methods answer in the same error shape
    r = http.get("/v1/no-such-route")
    assert r.status_code == 404 and error_json(r)["reason"] == "not_found"
    r = http.put("/v1/index/stats")
    assert r.status_code == 405 and error_json(r)["reason"] == "method_not_allowed"


def test_parameters_out_of_range(http, stub, good_wav):
    http.post("/v1/items", params={"id": "anchor"}, content=good_wav).raise_for_status()
    for k in (0, -1, 101, 10**9, 10**30):
        assert http.post("/v1/search/text", json={"query": "a", "k": k}).status_code == 400, k
        assert http.post("/v1/search/item", json={"id": "anchor", "k": k}).status_code == 400, k
        assert http.post("/v1/search/audio", params={"k": k}, content=good_wav).status_code == 400, k
    for k in (-1, 101):  # 0 is "the default" on gRPC
        assert grpc_code(stub.SearchText, pb.SearchTextRequest(query="a", k=k)) == grpc.StatusCode.INVALID_ARGUMENT
        assert grpc_code(stub.SearchItem, pb.SearchItemRequest(id="anchor", k=k)) == grpc.StatusCode.INVALID_ARGUMENT
    for params in [
        {"top_k": 0},
        {"window_s": -1},
        {"window_s": "nan"},
        {"window_s": "inf"},
        {"window_s": 1e30},
        {"window_s": 1, "hop_s": "nan"},
        {"labels": [""]},
        {"labels": ["x" * 513]},
        {"labels": [f"label {i}" for i in range(1001)]},
    ]:
        r = http.post("/v1/tag", params=params, content=good_wav)
        assert r.status_code == 400, (params, r.status_code, r.text[:200])
    for window in (float("nan"), float("inf"), -2.0):
        assert (
            grpc_code(stub.Tag, pb.TagRequest(audio=pb.Audio(data=good_wav), window_s=window))
            == grpc.StatusCode.INVALID_ARGUMENT
        )
    for params in [{"n_best": 0}, {"n_best": 5, "beam_size": 3}, {"beam_size": 11}, {"beam_size": -1}]:
        assert http.post("/v1/caption", params=params, content=good_wav).status_code == 400, params
    assert (
        grpc_code(stub.Caption, pb.CaptionRequest(audio=pb.Audio(data=good_wav), n_best=-1))
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    for flt in [{"min_duration_s": "nan"}, {"min_duration_s": 5, "max_duration_s": 1}]:
        assert http.post("/v1/search/text", json={"query": "a", "filter": flt}).status_code == 400, flt
    assert (
        grpc_code(stub.SearchText, pb.SearchTextRequest(query="a", filter=pb.Filter(min_duration_s=float("nan"))))
        == grpc.StatusCode.INVALID_ARGUMENT
    )

    def stream(requests, timeout):
        return list(stub.StreamTag(requests, timeout=timeout))

    bad_stream = [pb.StreamTagRequest(pcm=b"\0" * 64)]  # audio before the config
    assert grpc_code(stream, iter(bad_stream)) == grpc.StatusCode.INVALID_ARGUMENT
    for config in [
        pb.StreamConfig(sample_rate=32000, encoding="mp3"),
        pb.StreamConfig(sample_rate=100, encoding="f32le"),
        pb.StreamConfig(sample_rate=32000, encoding="f32le", window_s=1.0, hop_s=2.0),
    ]:
        reqs = [pb.StreamTagRequest(config=config), pb.StreamTagRequest(pcm=b"\0" * 64)]
        assert grpc_code(stream, iter(reqs)) == grpc.StatusCode.INVALID_ARGUMENT, config
    nan_pcm = [
        pb.StreamTagRequest(config=pb.StreamConfig(sample_rate=32000, encoding="f32le")),
        pb.StreamTagRequest(pcm=np.full(100, np.nan, "<f4").tobytes()),
    ]
    assert grpc_code(stream, iter(nan_pcm)) == grpc.StatusCode.INVALID_ARGUMENT


def test_stream_tag_pcm_is_checked_as_uploads_are(http, stub):
    """StreamTag's PCM passes the uploads' sample checks (blat_gateway.audio.check_samples): samples far over full
    scale, or NaN, are refused with the error an upload of the same samples gets (bad_audio: 422, INVALID_ARGUMENT)."""
    config = pb.StreamTagRequest(config=pb.StreamConfig(sample_rate=32000, encoding="f32le"))
    for samples in (np.full(3200, 5000.0, "<f4"), np.full(3200, np.nan, "<f4")):
        r = http.post("/v1/tag", content=encode_wav(samples, 32000, "FLOAT"))
        assert r.status_code == 422 and error_json(r)["reason"] == "bad_audio", r.text[:200]
        with pytest.raises(grpc.RpcError) as upload:
            stub.Tag(pb.TagRequest(audio=pb.Audio(data=encode_wav(samples, 32000, "FLOAT"))), timeout=30)
        with pytest.raises(grpc.RpcError) as streamed:
            list(stub.StreamTag(iter([config, pb.StreamTagRequest(pcm=samples.tobytes())]), timeout=30))
        assert streamed.value.code() == upload.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert streamed.value.details() == upload.value.details() == error_json(r)["message"]


def test_unknown_caption_tags(http, stub, good_wav):
    r = http.post("/v1/caption", params={"tags": ["Dog", "Not An AudioSet Label"]}, content=good_wav)
    assert r.status_code == 400 and "Not An AudioSet Label" in error_json(r)["message"]
    request = pb.CaptionRequest(audio=pb.Audio(data=good_wav), tags=["Not An AudioSet Label"])
    assert grpc_code(stub.Caption, request) == grpc.StatusCode.INVALID_ARGUMENT
    assert http.post("/v1/caption", params={"tags": ["Dog"]}, content=good_wav).status_code == 200


def test_server_side_paths(gw, http, stub, good_wav, tmp_path):
    outside = tmp_path / "outside.wav"  # a valid clip, but not under the ingest roots
    outside.write_bytes(good_wav)
    link_dir = gw.roots / "links"
    link_dir.mkdir(exist_ok=True)
    (link_dir / "escape.wav").symlink_to(outside)
    (gw.roots / "a-folder").mkdir(exist_ok=True)
    forbidden = [
        str(outside),
        "/etc/hostname",
        f"{gw.roots}/../../../../etc/hostname",
        str(link_dir / "escape.wav"),
        "relative/path.wav",
    ]
    for path in forbidden:
        r = http.post("/v1/items/from-path", json={"id": "p", "path": path})
        assert r.status_code == 403 and "ingest roots" in error_json(r)["message"], (path, r.text)
        assert grpc_code(stub.AddItem, pb.AddItemRequest(id="p", path=path)) == grpc.StatusCode.PERMISSION_DENIED
    for path in (str(gw.roots / "missing.wav"), str(gw.roots / "nested" / "missing.wav")):
        assert http.post("/v1/items/from-path", json={"id": "p", "path": path}).status_code == 404
        assert grpc_code(stub.AddItem, pb.AddItemRequest(id="p", path=path)) == grpc.StatusCode.NOT_FOUND
    assert http.post("/v1/items/from-path", json={"id": "p", "path": str(gw.roots / "a-folder")}).status_code == 400
    assert http.post("/v1/items/from-path", json={"id": "p", "path": ""}).status_code == 400
    # rebuilds: the folder or manifest must be under the roots, and so must every file a folder's symlinks lead to
    for body, status in [
        ({"folder": str(tmp_path)}, 403),
        ({"folder": "/"}, 403),
        ({"manifest": "/etc/hostname"}, 403),
        ({"folder": str(gw.roots / "nope")}, 404),
        ({"folder": str(link_dir)}, 403),
        ({"folder": str(link_dir / "escape.wav")}, 403),
    ]:
        r = http.post("/v1/index/rebuild", json={**body, "mode": "merge"})
        assert r.status_code == status, (body, r.status_code, r.text)
    assert (
        grpc_code(stub.StartRebuild, pb.RebuildRequest(folder="/", mode="replace")) == grpc.StatusCode.PERMISSION_DENIED
    )
    manifest = gw.roots / "manifest.jsonl"
    manifest.write_text(json.dumps({"id": "m", "audio": str(outside)}) + "\n")
    r = http.post("/v1/index/rebuild", json={"manifest": str(manifest), "mode": "replace"})
    assert r.status_code == 403, r.text  # a manifest under the roots cannot point outside them
    manifest.write_text("this is not JSON\n")
    assert http.post("/v1/index/rebuild", json={"manifest": str(manifest), "mode": "replace"}).status_code == 400
    assert http.post("/v1/items/from-path", json={"id": "p", "path": str(link_dir / "escape.wav")}).status_code == 403


def test_the_server_survived_all_of_it(gw, http, good_wav):
    """After every bad request above: alive, healthy, and serving normal requests."""
    assert gw.alive(), gw.log_tail()
    assert http.get("/healthz").json() == {"status": "ok"}
    assert http.get("/readyz").status_code == 200
    with Client(gw.http_url) as rest, Client(f"grpc://{gw.grpc_address}") as rpc:
        rest.add_item("survivor", audio=wav(synth_clip(2, 1.0)), tags=["ok"])
        assert rest.search_text("a sound", k=5, filter={"tags_any": ["ok"]}).hits[0].id == "survivor"
        assert len(rpc.embed_audio(good_wav)) == len(rest.embed_text("fine")[0])
        assert rpc.get_item("survivor").tags == ("ok",)
    metrics = http.get("/metrics").text
    assert 'status="500"' not in metrics and 'status="INTERNAL"' not in metrics and 'status="UNKNOWN"' not in metrics
    assert "Traceback" not in gw.log_text(), gw.log_tail()
    lines = gw.log_text().splitlines()
    assert lines and all(line.startswith("{") and json.loads(line) for line in lines), [  # uvicorn's own lines too
        line for line in lines if not line.startswith("{")
    ][:5]
    rids = [json.loads(line).get("request_id") for line in lines if '"blat_gateway.access"' in line]
    assert len(rids) > 100 and all(rids), "an access line, with its request id, for every request above"


# ------------------------------------------------------------------------------------------------------- auth

KEYS = {"reader-key": ["read"], "writer-key": ["read", "write"]}


def test_api_keys(tiny_bundle, tmp_path, good_wav):
    env = {"BLAT_SERVER_AUTH__KEYS": json.dumps(KEYS)}
    with running_server(tiny_bundle, tmp_path, env=env) as gw:
        assert "reader-key" not in gw.log_path.read_text()  # keys are redacted in the start-up log
        url = gw.http_url
        for key, status in [(None, 401), ("wrong-key", 401)]:
            with Client(url, api_key=key) as c:
                for call in (
                    c.stats,
                    lambda: c.search_text("a"),
                    lambda: c.embed_audio(good_wav),
                    lambda: c.add_item("x", audio=good_wav),
                    lambda: c.get_item("x"),
                ):
                    with pytest.raises(ClientError) as e:
                        call()
                    assert e.value.status == status and e.value.reason == "unauthorized"
        for path in ("/healthz", "/readyz", "/metrics"):  # operations endpoints stay open
            assert httpx.get(url + path, timeout=10).status_code == 200
        with Client(url, api_key="reader-key") as reader:
            assert reader.stats().items == 0 and reader.search_text("a").hits == []
            for call in (
                lambda: reader.add_item("x", audio=good_wav),
                lambda: reader.delete_item("x"),
                lambda: reader.add_item("x", path=str(gw.roots / "a.wav")),
                lambda: reader.start_rebuild(folder=str(gw.roots), mode="merge"),
                reader.rollback,
                lambda: reader.cancel_rebuild("v0002"),
            ):
                with pytest.raises(ClientError) as e:
                    call()
                assert e.value.status == 403 and "write" in e.value.message
        r = httpx.post(
            f"{url}/v1/items",
            params={"id": "by-header"},
            content=good_wav,
            headers={"x-api-key": "writer-key"},
            timeout=30,
        )
        assert r.status_code == 201
        with Client(url, api_key="writer-key") as writer:
            stored = writer.get_item("by-header")
            assert stored.id == "by-header"
            assert writer.delete_item("by-header") == stored

        for key, code in [(None, "UNAUTHENTICATED"), ("wrong-key", "UNAUTHENTICATED")]:
            with Client(f"grpc://{gw.grpc_address}", api_key=key) as c:
                for call in (
                    c.stats,
                    lambda: c.search_text("a"),
                    lambda: c.add_item("x", audio=good_wav),
                    lambda: list(c.stream_tag(iter([b"\0" * 64]), 32000, "f32le", timeout=60)),
                ):
                    with pytest.raises(ClientError) as e:
                        call()
                    assert e.value.code == code and e.value.status == 401
        with Client(f"grpc://{gw.grpc_address}", api_key="reader-key") as reader:
            assert reader.stats().items == 0
            for call in (
                lambda: reader.add_item("x", audio=good_wav),
                lambda: reader.delete_item("x"),
                lambda: reader.start_rebuild(folder=str(gw.roots), mode="merge"),
                reader.rollback,
                lambda: reader.cancel_rebuild("v0002"),
            ):
                with pytest.raises(ClientError) as e:
                    call()
                assert e.value.code == "PERMISSION_DENIED" and e.value.status == 403
        with Client(f"grpc://{gw.grpc_address}", api_key="writer-key") as writer:
            assert writer.add_item("grpc-writer", audio=good_wav).id == "grpc-writer"
        with grpc.insecure_channel(gw.grpc_address) as channel:  # x-api-key metadata works too
            health = health_pb2_grpc.HealthStub(channel)  # health checks need no key
            assert (
                health.Check(health_pb2.HealthCheckRequest(service="blat.v1.Blat"), timeout=10).status
                == health_pb2.HealthCheckResponse.SERVING
            )
            stub = pb_grpc.BlatStub(channel)
            assert (
                stub.GetItem(pb.ItemRequest(id="grpc-writer"), metadata=(("x-api-key", "reader-key"),), timeout=10).id
                == "grpc-writer"
            )


# --------------------------------------------------------------------------------------------------- overload


@pytest.mark.slow
def test_overload_answers_429_with_retry_after(tiny_bundle, tmp_path):
    env = {"BLAT_SERVER_BATCHING__MAX_QUEUE": "1", "BLAT_SERVER_BATCHING__MAX_BATCH": "1"}
    clips = [wav(synth_clip(50 + i, 6.0)) for i in range(24)]
    with running_inproc(tiny_bundle, tmp_path, env=env) as gw:
        with httpx.Client(base_url=gw.http_url, timeout=60, limits=httpx.Limits(max_connections=64)) as http:
            barrier = threading.Barrier(len(clips))

            def rest_call(data):
                barrier.wait()
                return http.post("/v1/embed/audio", content=data)

            with ThreadPoolExecutor(len(clips)) as pool:
                answers = list(pool.map(rest_call, clips))
            statuses = [r.status_code for r in answers]
            assert set(statuses) <= {200, 429}, statuses
            assert statuses.count(429) >= 1 and statuses.count(200) >= 1, statuses
            for r in answers:
                if r.status_code == 429:
                    assert int(r.headers["retry-after"]) >= 1 and error_json(r)["reason"] == "overloaded"
            with Client(gw.http_url, retry=NO_RETRY) as c:  # retrying would hide the 429
                with pytest.raises(ClientError) as e:
                    with ThreadPoolExecutor(len(clips)) as pool:
                        list(pool.map(c.embed_audio, clips))
                assert e.value.status == 429 and e.value.retry_after >= 1 and e.value.retryable

        with Client(f"grpc://{gw.grpc_address}", retry=NO_RETRY) as rpc:
            barrier = threading.Barrier(len(clips))

            def grpc_call(data):
                barrier.wait()
                try:
                    rpc.embed_audio(data)
                    return "OK"
                except ClientError as e:
                    return e.code

            with ThreadPoolExecutor(len(clips)) as pool:
                codes = list(pool.map(grpc_call, clips))
            assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED"} and "RESOURCE_EXHAUSTED" in codes and "OK" in codes, codes
            assert len(rpc.embed_audio(clips[0])) > 0  # the burst is over: served again
        assert httpx.get(f"{gw.http_url}/metrics").text.count('status="429"') >= 1


# ------------------------------------------------------------------------------------------------ backend down


@pytest.mark.slow
def test_triton_going_down(tiny_bundle, triton_repo, tmp_path, good_wav):
    from tests.server.conftest import launch_triton

    triton = launch_triton(triton_repo)
    env = {
        "BLAT_SERVER_TRITON__TIMEOUT_S": "5",
        "BLAT_SERVER_TRITON__RETRIES": "2",
        "BLAT_SERVER_TRITON__BREAKER_FAILURES": "3",
        "BLAT_SERVER_LIMITS__REQUEST_TIMEOUT_S": "10",
    }
    try:
        with (
            running_inproc(tiny_bundle, tmp_path, backend="triton", triton_url=triton.grpc_url, env=env) as gw,
            Client(gw.http_url, retry=NO_RETRY) as rest,
            Client(f"grpc://{gw.grpc_address}", retry=NO_RETRY) as rpc,
        ):  # the 503s must be seen, not retried
            for i in range(3):
                rest.add_item(f"kept-{i}", audio=wav(synth_clip(70 + i)))
            assert len(rest.search_text("a dog", k=3).hits) == 3
            triton.stop()  # mid-test: the model backend goes away

            messages = []
            for _ in range(5):  # the breaker opens after 3 failures: the later calls fail fast
                t0 = time.monotonic()
                with pytest.raises(ClientError) as e:
                    rest.search_text("a dog", k=3)
                assert time.monotonic() - t0 < 10, "slower than the request deadline"
                assert e.value.status == 503 and e.value.reason == "backend_unavailable" and e.value.retryable
                messages.append(e.value.message)
            assert "Triton" in messages[0] and "unavailable" in messages[0] and "3 attempts" in messages[0], messages
            assert "circuit open" in messages[-1], messages
            with pytest.raises(ClientError) as e:
                rpc.search_text("a dog")
            assert e.value.code == "UNAVAILABLE" and e.value.status == 503
            with pytest.raises(ClientError) as e:
                rest.embed_audio(good_wav)
            assert e.value.status == 503

            found = rest.search_item("kept-0", k=2)  # the index alone: no model call
            assert sorted(found.ids) == ["kept-1", "kept-2"]
            assert rpc.search_item("kept-0", k=2).ids == found.ids
            assert rest.get_item("kept-1").id == "kept-1" and rest.stats().items == 3
            ready = httpx.get(f"{gw.http_url}/readyz", timeout=10)
            assert ready.status_code == 503
            assert ready.json()["ready"] is False and "triton" in ready.json()["detail"]
            with grpc.insecure_channel(gw.grpc_address) as channel:  # gRPC health follows readiness too
                health = health_pb2_grpc.HealthStub(channel)
                deadline = time.monotonic() + 10
                while (
                    health.Check(health_pb2.HealthCheckRequest(service="blat.v1.Blat"), timeout=5).status
                    != health_pb2.HealthCheckResponse.NOT_SERVING
                ):
                    assert time.monotonic() < deadline, "gRPC health still SERVING with the backend down"
                    time.sleep(0.2)
            assert httpx.get(f"{gw.http_url}/healthz", timeout=10).json() == {"status": "ok"} and gw.alive()
    finally:
        triton.stop()
