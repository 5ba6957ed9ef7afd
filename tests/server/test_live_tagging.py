"""Live tagging over a WebSocket (`/v1/tag/stream`, server/blat_gateway/api/live.py) against StreamTag over gRPC: the
same windows and scores for the same PCM, the same caps (one limits.max_streams for both faces), time limits and
keys, refusals in the error envelope, and good and bad streams at once.

In-process gateway (real uvicorn with its WebSocket protocol, real gRPC server), driven by the `websockets` client.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from blat_client import Client, ClientError
from tests.server.conftest import RATE, running_inproc, synth_clip, wav

KEY = "live-key"
MAX_STREAMS = 3
IDLE_S = 2.0


@pytest.fixture(scope="module")
def gw(tiny_bundle, tmp_path_factory):
    env = {
        "BLAT_SERVER_AUTH__KEYS": json.dumps({KEY: ["read"]}),
        "BLAT_SERVER_LIMITS__MAX_STREAMS": str(MAX_STREAMS),
        "BLAT_SERVER_LIMITS__STREAM_IDLE_S": str(IDLE_S),
    }
    with running_inproc(tiny_bundle, tmp_path_factory.mktemp("live"), env=env) as gw:
        yield gw


def ws_url(gw) -> str:
    return gw.http_url.replace("http://", "ws://") + "/v1/tag/stream"


def open_ws(gw, key: str | None = KEY, uri: str | None = None, **kwargs):
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return connect(
        uri or ws_url(gw), additional_headers=headers, subprotocols=["blat.tag.v1"], open_timeout=10, **kwargs
    )


def ws_windows(gw, chunks, config: dict, **kwargs) -> list[dict]:
    """Every window a WebSocket stream answers for these chunks, and its closing message."""
    with open_ws(gw, **kwargs) as ws:
        ws.send(json.dumps(config))
        for c in chunks:
            ws.send(c)
        ws.send(json.dumps({"end": True}))
        got = [json.loads(m) for m in ws]  # until the server closes
    assert got[-1] == {"end": True, "windows": len(got) - 1}
    assert ws.close_code == 1000
    return got[:-1]


def closing_error(ws) -> tuple[dict, int]:
    """The error message a refused stream gets, and its close code."""
    messages = []
    try:
        while True:
            messages.append(json.loads(ws.recv(timeout=30)))
    except ConnectionClosed:  # a close code other than 1000 ends the iteration with an exception
        pass
    assert len(messages) == 1 and "error" in messages[-1], messages
    return messages[-1]["error"], ws.close_code


def grpc_windows(gw, chunks, rate: int, encoding: str, **kwargs):
    with Client(f"grpc://{gw.grpc_address}", api_key=KEY, timeout=60) as c:
        return list(c.stream_tag(iter(chunks), rate, encoding, **kwargs))


def assert_same_windows(ws: list[dict], rpc) -> None:
    assert len(ws) == len(rpc) > 0
    for a, b in zip(ws, rpc):
        assert (a["start_s"], a["end_s"]) == pytest.approx((b.start_s, b.end_s), abs=1e-6)
        assert [t["label"] for t in a["tags"]] == [t.label for t in b.tags]
        assert [t["score"] for t in a["tags"]] == pytest.approx([t.score for t in b.tags], abs=1e-6)
        assert [t["scorer"] for t in a["tags"]] == [t.scorer for t in b.tags]


def f32_chunks(clip: np.ndarray, chunk_s: float, rate: int = RATE) -> list[bytes]:
    raw, step = clip.astype("<f4").tobytes(), int(chunk_s * rate) * 4
    return [raw[i : i + step] for i in range(0, len(raw), step)]


def test_websocket_windows_equal_stream_tag(gw):
    clip = synth_clip(6100, 4.3)
    chunks = f32_chunks(clip, 0.25)
    chunks = [chunks[0][:5], chunks[0][5:], *chunks[1:]]  # a message that splits a sample
    ws = ws_windows(gw, chunks, {"encoding": "f32le", "sample_rate": RATE, "top_k": 527})
    assert [w["start_s"] for w in ws] == pytest.approx([0.0, 1.0, 2.0, 3.0], abs=1e-6)  # StreamConfig's defaults
    assert_same_windows(ws, grpc_windows(gw, chunks, RATE, "f32le", top_k=527))

    # int16 at 16 kHz (resampled as it streams), other windows, custom labels beside the bank's
    s16 = (np.clip(clip[::2], -1, 1) * 32767).astype("<i2").tobytes()
    chunks = [s16[i : i + 3001] for i in range(0, len(s16), 3001)]
    config = {"window_s": 1.5, "hop_s": 0.5, "top_k": 2, "labels": ["dog barking", "Speech", "silence"]}
    ws = ws_windows(gw, chunks, {"encoding": "s16le", "sample_rate": 16_000, **config})
    assert len(ws) >= 5
    assert_same_windows(ws, grpc_windows(gw, chunks, 16_000, "s16le", **config))


def test_a_browser_sends_its_key_as_a_subprotocol_and_gets_the_request_id(gw):
    key = base64.urlsafe_b64encode(KEY.encode()).decode().rstrip("=")
    with connect(ws_url(gw), subprotocols=["blat.tag.v1", f"bearer.{key}"], open_timeout=10) as ws:
        assert ws.subprotocol == "blat.tag.v1"  # never the key's
        assert ws.response.headers["x-request-id"]
        ws.send(json.dumps({"encoding": "f32le", "sample_rate": RATE}))
        ws.send(synth_clip(1, 2.5).astype("<f4").tobytes())
        assert json.loads(ws.recv(timeout=30))["start_s"] == 0.0


@pytest.mark.parametrize(
    "how, status, code",
    [
        ({"key": None}, 401, "UNAUTHENTICATED"),
        ({"key": "wrong"}, 401, "UNAUTHENTICATED"),
        ({"origin": "http://evil.example"}, 403, "PERMISSION_DENIED"),  # a page of another site
        ({"host": "rebound.example"}, 421, "PERMISSION_DENIED"),  # a page whose DNS name was rebound here
    ],
)
def test_handshakes_are_refused_as_requests_are(gw, how, status, code):
    kwargs = {"key": how.get("key", KEY), "origin": how.get("origin")}
    if "host" in how:  # the connection goes to the gateway, the Host header names another site
        port = int(gw.http_url.rsplit(":", 1)[1])
        kwargs["uri"] = f"ws://{how['host']}:{port}/v1/tag/stream"
        kwargs["sock"] = socket.create_connection(("127.0.0.1", port))
    with pytest.raises(InvalidStatus) as e:
        open_ws(gw, **kwargs)
    response = e.value.response
    assert response.status_code == status
    error = json.loads(response.body)["error"]
    assert (error["http_status"], error["code"]) == (status, code)
    assert response.headers["content-security-policy"]  # the door's headers on a refusal too


def test_undeclared_websocket_paths_are_refused(gw):
    with pytest.raises(InvalidStatus) as e:
        connect(gw.http_url.replace("http", "ws") + "/v1/search/text", open_timeout=10)
    assert e.value.response.status_code == 403


@pytest.mark.parametrize(
    "first, then, reason",
    [
        (b"\0" * 64, None, "config"),  # audio before the config
        ("not json", None, "config"),
        (json.dumps({"encoding": "f32le"}), None, "sample_rate"),
        (json.dumps({"encoding": "mp3", "sample_rate": RATE}), None, "encoding"),
        (json.dumps({"encoding": "f32le", "sample_rate": RATE, "window_s": 1, "hop_s": 2}), None, "hop_s"),
        (json.dumps({"encoding": "f32le", "sample_rate": RATE, "colour": "red"}), None, "colour"),
        (json.dumps({"encoding": "f32le", "sample_rate": RATE}), json.dumps({"more": 1}), "end"),
    ],
    ids=["audio-first", "not-json", "no-rate", "mp3", "hop-over-window", "unknown-field", "text-after-config"],
)
def test_bad_streams_get_an_invalid_argument_and_a_4400_close(gw, first, then, reason):
    with open_ws(gw) as ws:
        ws.send(first)
        if then is not None:
            ws.send(then)
        error, close = closing_error(ws)
    assert (error["code"], error["http_status"], close) == ("INVALID_ARGUMENT", 400, 4400)
    assert reason in error["message"]


def test_unusable_audio_is_refused_as_an_upload_is(gw):
    with open_ws(gw) as ws:
        ws.send(json.dumps({"encoding": "f32le", "sample_rate": RATE}))
        ws.send(np.full(100, np.nan, "<f4").tobytes())
        error, close = closing_error(ws)
    assert (error["http_status"], close) == (422, 4422)


def test_a_silent_stream_is_closed_after_stream_idle_s(gw):
    with open_ws(gw) as ws:
        ws.send(json.dumps({"encoding": "f32le", "sample_rate": RATE}))
        t0 = time.monotonic()
        error, close = closing_error(ws)
    assert (error["code"], close) == ("DEADLINE_EXCEEDED", 4504)
    assert IDLE_S - 0.1 <= time.monotonic() - t0 < IDLE_S + 5


def test_a_drip_is_closed_under_min_realtime(gw):
    with open_ws(gw) as ws:
        ws.send(json.dumps({"encoding": "f32le", "sample_rate": RATE}))
        error = None
        for _ in range(40):  # 40 ms of audio every 0.3 s: 0.13x real time, under the 0.25x default
            try:
                ws.send(np.zeros(int(0.04 * RATE), "<f4").tobytes())
                got = json.loads(ws.recv(timeout=0.3))
            except TimeoutError:
                continue
            except ConnectionClosed:
                break
            if "error" in got:
                error = got["error"]
                break
    assert error is not None and error["code"] == "DEADLINE_EXCEEDED" and "real time" in error["message"]


def test_the_stream_cap_is_shared_by_both_faces_and_good_streams_run_beside_bad_ones(gw):
    clip = synth_clip(6200, 3.2)
    chunks = f32_chunks(clip, 0.2)
    expected = grpc_windows(gw, chunks, RATE, "f32le")
    hold = [open_ws(gw) for _ in range(MAX_STREAMS)]  # every place taken, by WebSockets
    try:
        with pytest.raises(InvalidStatus) as e:
            open_ws(gw)
        assert e.value.response.status_code == 429 and e.value.response.headers["retry-after"]
        with pytest.raises(ClientError) as g:  # gRPC's StreamTag shares the cap
            grpc_windows(gw, chunks, RATE, "f32le")
        assert g.value.code == "RESOURCE_EXHAUSTED"
    finally:
        for ws in hold:
            ws.close()
    time.sleep(0.3)  # the closes reach the server

    # good and bad streams together, on both faces, with searches beside them: every good one gets its windows
    bad = {"encoding": "f32le", "sample_rate": 1}
    results: dict[str, object] = {}

    def good_ws(i):
        results[f"ws{i}"] = ws_windows(gw, chunks, {"encoding": "f32le", "sample_rate": RATE})

    def bad_ws(i):
        with open_ws(gw) as ws:
            ws.send(json.dumps(bad))
            results[f"bad{i}"] = closing_error(ws)

    def good_grpc(i):
        results[f"grpc{i}"] = grpc_windows(gw, chunks, RATE, "f32le")

    def search(i):
        with Client(gw.http_url, api_key=KEY, timeout=60) as c:
            results[f"tag{i}"] = c.tag(wav(clip), top_k=3)

    jobs = [(good_ws, 0), (bad_ws, 0), (good_grpc, 0), (search, 0), (bad_ws, 1), (search, 1)]
    barrier = threading.Barrier(len(jobs))

    def run(job):
        fn, i = job
        barrier.wait()
        for _ in range(20):  # a place can be briefly full while MAX_STREAMS streams overlap: retry 429s
            try:
                return fn(i)
            except InvalidStatus as e:
                if e.response.status_code != 429:
                    raise
            except ClientError as e:
                if e.code != "RESOURCE_EXHAUSTED":
                    raise
            time.sleep(0.2)
        raise AssertionError(f"{fn.__name__} never got a place")

    with ThreadPoolExecutor(len(jobs)) as pool:
        list(pool.map(run, jobs))
    assert_same_windows(results["ws0"], expected)
    assert [(w.start_s, [t.label for t in w.tags]) for w in results["grpc0"]] == [
        (w.start_s, [t.label for t in w.tags]) for w in expected
    ]
    for i in (0, 1):
        error, close = results[f"bad{i}"]
        assert (error["code"], close) == ("INVALID_ARGUMENT", 4400)
        assert len(results[f"tag{i}"].tags) == 3
    assert gw.gateway.streams.held == 0  # every place given back
