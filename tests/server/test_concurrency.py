"""Requests together, against the real gateway: one bad request never fails or blocks another.

Poison texts mixed into concurrent good traffic; JSON bodies that are too big, with and without a key; idle gRPC
streams that must not shut out unary calls and health checks; overload that sheds with a quick 429 while the
admitted requests finish; NUL bytes and lone surrogates in every text field; ids with dot segments.

A real process: raw sockets, slow clients and signals share it as they would in production.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

from blat_wire import blat_pb2 as pb
from blat_wire import blat_pb2_grpc as pb_grpc
from tests.server.conftest import running_server, start_server, synth_clip, wav
from tests.server.test_api import bundle_json  # noqa: F401 - a fixture

KEY = "concurrency-test-key"
AUTH = {"authorization": f"Bearer {KEY}"}
META = (("authorization", f"Bearer {KEY}"),)
ENV = {"BLAT_SERVER_AUTH__KEYS": json.dumps({KEY: ["read", "write"]}), "BLAT_SERVER_LIMITS__STREAM_IDLE_S": "3"}
POISON = b'{"query": "\\ud800 x", "k": 3}'  # valid JSON; no UTF-8 encoding exists for the lone surrogate


@pytest.fixture(scope="module")
def gw(tiny_bundle, tmp_path_factory):
    server = start_server(tiny_bundle, tmp_path_factory.mktemp("concurrency"), env=ENV)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def http(gw):
    with httpx.Client(base_url=gw.http_url, timeout=60, headers=AUTH, limits=httpx.Limits(max_connections=64)) as c:
        yield c


@pytest.fixture(scope="module")
def channel(gw):
    with grpc.insecure_channel(gw.grpc_address) as ch:
        yield ch


def test_poison_texts_fail_alone_among_concurrent_good_requests(http):
    jobs = []
    for i in range(150):
        if i % 5 == 2:
            jobs.append(("poison", "/v1/search/text", POISON))
        elif i % 5 == 4:  # a batch of texts with one bad one: the request fails, not the neighbours
            jobs.append(("poison", "/v1/embed/text", b'{"texts": ["a dog", "nul \\u0000 byte", "rain"]}'))
        else:
            jobs.append(("good", "/v1/search/text", json.dumps({"query": f"sound number {i}", "k": 3}).encode()))
    jobs += [("good", "/v1/embed/text", json.dumps({"texts": [f"text {i}", "a door"]}).encode()) for i in range(30)]
    start = threading.Event()

    def call(job):
        kind, path, body = job
        start.wait(10)
        r = http.post(path, content=body, headers={"content-type": "application/json"})
        return kind, path, r.status_code, r.json()

    with ThreadPoolExecutor(32) as pool:
        pending = [pool.submit(call, job) for job in jobs]
        start.set()
        results = [f.result() for f in pending]
    for kind, path, status, body in results:
        if kind == "good":
            assert status == 200, (path, status, body)
        else:
            assert status == 400 and body["error"]["reason"] == "bad_request", (path, status, body)
    for kind, path, _, body in results:  # the answer names the field at fault
        if kind == "poison":
            assert ("query" if path == "/v1/search/text" else "texts[1]") in body["error"]["message"], body


def test_a_100_mib_json_body_without_a_key_is_refused_unread(gw):
    """The answer comes while almost all of the declared body is still unsent: it was never read."""
    for headers, status in ((b"", 401), (f"authorization: Bearer {KEY}\r\n".encode(), 413)):
        host, port = urlsplit(gw.http_url).hostname, urlsplit(gw.http_url).port
        with socket.create_connection((host, port), timeout=5) as s:
            t0 = time.monotonic()
            s.sendall(
                b"POST /v1/search/text HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
                + headers
                + f"content-length: {100 << 20}\r\n\r\n".encode()
                + b'{"query": "'
                + b"a" * 65536
            )
            answer = b""
            while chunk := s.recv(65536):  # the server answers and closes the connection
                answer += chunk
            assert time.monotonic() - t0 < 1.0
            answer = answer.decode("latin-1")
        assert answer.startswith(f"HTTP/1.1 {status}"), answer[:200]
        assert '"error"' in answer


def test_a_json_body_over_the_cap_without_a_length_is_413(http):
    def chunks():  # chunked: no Content-Length to refuse up front; counted while it streams in
        yield b'{"query": "'
        for _ in range(40):
            yield b"a" * 65536
        yield b'"}'

    r = http.post("/v1/search/text", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["reason"] == "too_large"
    assert http.post("/v1/search/text", json={"query": "still fine"}).status_code == 200


def test_idle_streams_never_block_health_checks_or_searches(gw, channel):
    stub, health = pb_grpc.BlatStub(channel), health_pb2_grpc.HealthStub(channel)
    config = pb.StreamTagRequest(config=pb.StreamConfig(encoding="f32le", sample_rate=32000))
    release = threading.Event()

    def idle():  # the config, then nothing
        yield config
        release.wait(30)

    calls = [stub.StreamTag(idle(), metadata=META, timeout=30) for _ in range(17)]
    try:
        time.sleep(0.5)  # the streams are open and waiting
        t0 = time.monotonic()
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == health_pb2.HealthCheckResponse.SERVING
        stub.SearchText(pb.SearchTextRequest(query="a dog", k=3), metadata=META, timeout=1)
        assert time.monotonic() - t0 < 1.0
        codes = []
        for call in calls:  # past the cap: refused at once; the rest end on the idle timeout (3 s here)
            try:
                list(call)
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as e:
                codes.append(e.code())
        assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 17 - 8, codes
        assert codes.count(grpc.StatusCode.DEADLINE_EXCEEDED) == 8, codes
        assert time.monotonic() - t0 < 10
    finally:
        release.set()


def test_overload_sheds_quickly_and_the_admitted_requests_finish(tiny_bundle, tmp_path):
    """More concurrent requests than the audio gate admits (batching.max_queue, 64 by default) and than the HTTP
    thread pool once had (40): the excess is refused at once with 429, the admitted ones all finish."""
    clip, n = wav(synth_clip(7, 4.0)), 150
    with running_server(tiny_bundle, tmp_path) as gw:
        with httpx.Client(base_url=gw.http_url, timeout=60, limits=httpx.Limits(max_connections=n + 8)) as c:
            start = threading.Event()

            def tag(_):
                start.wait(10)
                t0 = time.monotonic()
                r = c.post("/v1/tag", content=clip, params={"top_k": 3})
                return r.status_code, time.monotonic() - t0, r.headers.get("retry-after")

            with ThreadPoolExecutor(n) as pool:
                pending = [pool.submit(tag, i) for i in range(n)]
                time.sleep(0.5)
                start.set()
                answers = [f.result() for f in pending]
            assert c.post("/v1/search/text", json={"query": "rain"}).status_code == 200
            gauges = c.get("/metrics").text
        statuses = [s for s, _, _ in answers]
        assert set(statuses) <= {200, 429}, statuses
        assert statuses.count(429) >= 20 and statuses.count(200) >= 20, statuses
        shed = sorted(t for s, t, _ in answers if s == 429)
        assert shed[len(shed) * 9 // 10] < 1.0, f"429s must come at once; p90 {shed[len(shed) * 9 // 10]:.2f} s"
        assert all(ra and int(ra) >= 1 for s, _, ra in answers if s == 429)
        assert 'blat_admitted{gate="audio"} 0.0' in gauges  # every admission was given back


BAD_TEXTS = {"nul": "a\x00b", "surrogate": "a\ud800b"}


@pytest.mark.parametrize("bad", BAD_TEXTS, ids=list(BAD_TEXTS))
def test_nul_and_lone_surrogates_are_400_in_every_text_field(gw, http, bad):
    text = BAD_TEXTS[bad]
    clip = wav(synth_clip(3, 1.0))
    (gw.roots / "ok.wav").write_bytes(clip)

    def post_json(path, obj):  # json.dumps writes the surrogate as \ud800: valid JSON, as a client may send
        return http.post(path, content=json.dumps(obj).encode(), headers={"content-type": "application/json"})

    answers = {
        "from-path path": post_json("/v1/items/from-path", {"id": "x1", "path": str(gw.roots / "ok.wav") + text}),
        "from-path caption": post_json(
            "/v1/items/from-path", {"id": "x2", "path": str(gw.roots / "ok.wav"), "caption": text}
        ),
        "from-path tag": post_json(
            "/v1/items/from-path", {"id": "x3", "path": str(gw.roots / "ok.wav"), "tags": [text]}
        ),
        "from-path source_uri": post_json(
            "/v1/items/from-path", {"id": "x4", "path": str(gw.roots / "ok.wav"), "source_uri": text}
        ),
        "rebuild folder": post_json("/v1/index/rebuild", {"folder": str(gw.roots) + text, "mode": "replace"}),
        "rebuild manifest": post_json(
            "/v1/index/rebuild", {"manifest": str(gw.roots / "m.jsonl") + text, "mode": "replace"}
        ),
        "search query": post_json("/v1/search/text", {"query": text}),
        "filter tag": post_json("/v1/search/text", {"query": "ok", "filter": {"tags_any": [text]}}),
    }
    if bad == "nul":  # a URL cannot carry a lone surrogate (its UTF-8 bytes do not exist); %00 it can
        answers["upload caption"] = http.post("/v1/items", params={"id": "x5", "caption": text}, content=clip)
        answers["tag label"] = http.post("/v1/tag", params={"labels": [text]}, content=clip)
    for what, r in answers.items():
        assert r.status_code == 400, (what, r.status_code, r.text[:300])
        assert r.json()["error"]["reason"] == "bad_request", what
    stub = pb_grpc.BlatStub(grpc.insecure_channel(gw.grpc_address))
    if bad == "nul":  # protobuf cannot even carry a lone surrogate; NUL it carries
        for call, req in (
            (stub.SearchText, pb.SearchTextRequest(query=text)),
            (stub.AddItem, pb.AddItemRequest(id="x6", path=str(gw.roots / "ok.wav"), caption=text)),
            (stub.StartRebuild, pb.RebuildRequest(folder=str(gw.roots) + text, mode="replace")),
        ):
            with pytest.raises(grpc.RpcError) as e:
                call(req, metadata=META, timeout=10)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert http.get("/v1/index/stats").json()["items"] == 0  # nothing half-stored


@pytest.mark.parametrize("item_id", ["a/../b", "./a", "a/./b", "a//b", "/a", "a/", ".."])
def test_ids_with_dot_or_empty_segments_are_refused(gw, http, item_id):
    r = http.post("/v1/items", params={"id": item_id}, content=wav(synth_clip(4, 1.0)))
    assert r.status_code == 400 and "segment" in r.json()["error"]["message"]


def test_grpc_reflection_v1_and_v1alpha_list_the_service(channel):
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    for package in ("grpc.reflection.v1", "grpc.reflection.v1alpha"):
        call = channel.stream_stream(
            f"/{package}.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        names = {s.name for r in call(iter([request]), timeout=10) for s in r.list_services_response.service}
        assert "blat.v1.Blat" in names and f"{package}.ServerReflection" in names, (package, names)


def test_windows_score_the_same_over_rest_and_the_stream(gw, http, channel):
    samples = synth_clip(11, 5.5)
    rest = http.post("/v1/tag", params={"window_s": 2.0, "hop_s": 1.0, "top_k": 527}, content=wav(samples)).json()

    def messages():
        yield pb.StreamTagRequest(
            config=pb.StreamConfig(encoding="f32le", sample_rate=32000, window_s=2.0, hop_s=1.0, top_k=527)
        )
        raw = samples.astype("<f4").tobytes()
        for i in range(0, len(raw), 12_000):  # chunks that do not line up with windows or samples
            yield pb.StreamTagRequest(pcm=raw[i : i + 12_000])

    streamed = list(pb_grpc.BlatStub(channel).StreamTag(messages(), metadata=META, timeout=60))
    assert [(w["start_s"], w["end_s"]) for w in rest["windows"]] == [(w.start_s, w.end_s) for w in streamed]
    for a, b in zip(rest["windows"], streamed):  # every label's score (the tiny model's top scores nearly tie)
        scores = {t.label: t.score for t in b.tags}
        assert len(scores) == 527
        assert {t["label"]: t["score"] for t in a["tags"]} == pytest.approx(scores, rel=1e-4, abs=1e-7)


def test_options_lists_every_method_of_a_path(http):
    r = http.options("/v1/items/some/id")
    assert r.status_code == 204 and set(r.headers["allow"].split(", ")) == {"GET", "DELETE", "OPTIONS"}


def test_the_schema_tells_metrics_is_prometheus_text(http):
    content = http.get("/openapi.json").json()["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(content) == [http.get("/metrics").headers["content-type"]]
    assert "application/json" not in content


def test_windows_shorter_than_a_frame_step_are_refused_not_clamped(http, bundle_json):  # noqa: F811 - the fixture
    step = bundle_json["audio"]["frame_seconds"]
    r = http.post("/v1/tag", params={"window_s": step / 2}, content=wav(synth_clip(5, 1.0)))
    assert r.status_code == 400 and "frame step" in r.json()["error"]["message"]


def test_new_custom_labels_are_embedded_in_batches(http):
    def text_batches() -> float:
        for line in http.get("/metrics").text.splitlines():
            if line.startswith('blat_batch_size_count{batcher="text_embed"}'):
                return float(line.split()[-1])
        return 0.0

    before = text_batches()
    labels = [f"custom label number {i}" for i in range(40)]
    r = http.post("/v1/tag", params={"labels": labels, "top_k": 40}, content=wav(synth_clip(6, 1.0)))
    assert r.status_code == 200 and len(r.json()["tags"]) == 40
    assert text_batches() - before <= 40 / 16 + 1, "40 new labels must share batches, not take one call each"


# ------------------------------------------------------------------------------------------ slow and huge requests

SLOW_ENV = {"BLAT_SERVER_LIMITS__HEADER_TIMEOUT_S": "2", "BLAT_SERVER_LIMITS__BODY_IDLE_S": "2"}


@pytest.fixture(scope="module")
def slow_gw(tiny_bundle, tmp_path_factory):
    server = start_server(tiny_bundle, tmp_path_factory.mktemp("slow"), env=SLOW_ENV)
    yield server
    server.stop()


def _exchange(server, parts, pause_s: float = 0.0, read_timeout_s: float = 10.0) -> tuple[str, float]:
    """Send `parts` (pausing between them), then read until the server closes; (answer, seconds until closed)."""
    url = urlsplit(server.http_url)
    with socket.create_connection((url.hostname, url.port), timeout=read_timeout_s) as s:
        t0 = time.monotonic()
        try:
            for part in parts:
                s.sendall(part)
                time.sleep(pause_s)
        except (BrokenPipeError, ConnectionResetError):
            pass  # it may close on us mid-send: what it answered is still to be read
        answer = b""
        try:
            while chunk := s.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
        return answer.decode("latin-1"), time.monotonic() - t0


def test_slowloris_headers_get_408_and_the_connection_closed(slow_gw):
    trickle = [b"GET /healthz HTTP/1.1\r\n"] + [f"x-pad-{i}: {i}\r\n".encode() for i in range(20)]
    answer, seconds = _exchange(slow_gw, trickle, pause_s=0.5)
    assert answer.startswith("HTTP/1.1 408") and "request_timeout" in answer, answer[:200]
    assert seconds < 2.0 + 0.5 + DRAIN_MARGIN_S


def test_a_stalled_body_gets_408(slow_gw):
    head = (
        b"POST /v1/search/text HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: 100\r\n"
        b'\r\n{"query": '
    )
    t0 = time.monotonic()
    answer, _ = _exchange(slow_gw, [head])
    assert answer.startswith("HTTP/1.1 408"), answer[:200]
    assert 1.9 < time.monotonic() - t0 < 2.0 + DRAIN_MARGIN_S


def test_huge_urls_and_headers_get_414_and_431(slow_gw):
    answer, _ = _exchange(slow_gw, [b"GET /v1/items/" + b"a" * (1 << 20) + b" HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n"])
    assert answer.startswith("HTTP/1.1 414"), answer[:200]
    big = b"".join(f"x-h{i}: {'v' * 1000}\r\n".encode() for i in range(100))
    answer, _ = _exchange(slow_gw, [b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n" + big + b"\r\n"])
    assert answer.startswith("HTTP/1.1 431"), answer[:200]
    assert httpx.get(f"{slow_gw.http_url}/healthz").status_code == 200


def test_keep_alive_requests_after_a_pause_still_work(slow_gw):
    with httpx.Client(base_url=slow_gw.http_url) as c:
        assert c.get("/healthz").status_code == 200
        time.sleep(2.5)  # longer than the header timeout: an idle kept-alive connection is not a slow request
        assert c.get("/healthz").status_code == 200


DRAIN_MARGIN_S = 3.0  # the refusal is followed by up to 2 s of draining before the close
