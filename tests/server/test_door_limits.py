"""The request door under slow and refused clients, against the real gateway: bodies that drip must not hold the
admission gates, every body has the request's deadline, stalled gRPC calls and streams end, and a refused upload
reads its 429 instead of a connection reset.

Limits are shrunk through settings (a 3 s deadline, 8 admission places) so each test takes seconds.

A real process: slow clients hold its sockets and threads as they would in production.
"""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import grpc
import httpx
import pytest

from blat_wire import blat_pb2 as pb
from blat_wire import blat_pb2_grpc as pb_grpc
from tests.server.conftest import running_server, start_server, synth_clip, wav

DEADLINE_S = 3.0
ENV = {
    "BLAT_SERVER_LIMITS__REQUEST_TIMEOUT_S": str(DEADLINE_S),
    "BLAT_SERVER_LIMITS__BODY_IDLE_S": "2",
    "BLAT_SERVER_LIMITS__STREAM_IDLE_S": "2",
    "BLAT_SERVER_BATCHING__MAX_QUEUE": "8",
}
DRIPS = 64


@pytest.fixture(scope="module")
def gw(tiny_bundle, tmp_path_factory):
    server = start_server(tiny_bundle, tmp_path_factory.mktemp("door"), env=ENV)
    yield server
    server.stop()


class Drip:
    """A raw connection that sends a request's headers, then its body one byte every `every_s` seconds; it stops when
    the server answers or closes, and keeps what it read."""

    def __init__(self, url: str, path: str, content_type: str, length: int = 100_000, every_s: float = 0.5):
        u = urlsplit(url)
        self.sock = socket.create_connection((u.hostname, u.port), timeout=30)
        self.sock.sendall(
            f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: {content_type}\r\n"
            f"content-length: {length}\r\n\r\n".encode()
        )
        self.every_s, self.answer, self.ended_after = every_s, b"", None
        self.t0 = time.monotonic()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.sock.settimeout(self.every_s)
        try:
            while True:
                try:
                    chunk = self.sock.recv(65536)
                    if not chunk:
                        break
                    self.answer += chunk
                    continue
                except TimeoutError:
                    pass
                self.sock.sendall(b"{")
        except OSError:
            pass
        finally:
            self.ended_after = time.monotonic() - self.t0
            self.sock.close()

    def status(self) -> int:
        self.thread.join(30)
        return int(self.answer.split(b" ", 2)[1]) if self.answer.startswith(b"HTTP/1.1 ") else 0


def _timed(fn) -> tuple[int, float]:
    t0 = time.monotonic()
    status = fn()
    return status, time.monotonic() - t0


@pytest.mark.parametrize(
    "path, content_type",
    [("/v1/tag", "audio/wav"), ("/v1/search/text", "application/json")],
    ids=["audio-gate", "text-gate"],
)
def test_dripping_bodies_do_not_hold_the_gates(gw, path, content_type):
    """64 connections dripping a body (8 admission places) while good requests of the same gate keep getting 200
    at once; every drip ends with 408 by the request's deadline."""
    drips = [Drip(gw.http_url, path, content_type) for _ in range(DRIPS)]
    time.sleep(0.5)  # every drip is in
    clip = wav(synth_clip(1, 1.0))
    with httpx.Client(base_url=gw.http_url, timeout=30) as c:
        good = (
            (lambda: c.post("/v1/tag", content=clip, params={"top_k": 3}).status_code)
            if path == "/v1/tag"
            else (lambda: c.post("/v1/search/text", json={"query": "rain", "k": 3}).status_code)
        )
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda _: _timed(good), range(24)))
    assert [s for s, _ in answers] == [200] * 24, answers
    slowest = max(t for _, t in answers)
    assert slowest < 1.0, f"a good request waited {slowest:.2f} s behind the drips"
    statuses = [d.status() for d in drips]
    assert statuses == [408] * DRIPS, statuses
    assert max(d.ended_after for d in drips) < DEADLINE_S + 2.0


def test_a_body_that_keeps_dripping_gets_408_at_the_deadline(gw):
    """One byte every 0.5 s never trips the 2 s idle timer: the request's deadline ends it."""
    drip = Drip(gw.http_url, "/v1/search/text", "application/json", length=100, every_s=0.5)
    assert drip.status() == 408 and b"request_timeout" in drip.answer, drip.answer[:300]
    assert DEADLINE_S - 0.5 < drip.ended_after < DEADLINE_S + 1.5, drip.ended_after


def _stalled_calls(channel: grpc.Channel, n: int, method: str = "Tag") -> tuple[list, threading.Event]:
    """n calls whose request message never comes: the client opens the call and then sends nothing."""
    release = threading.Event()

    def never():
        release.wait(30)
        return
        yield  # a generator that yields nothing until released

    call = channel.stream_unary(
        f"/blat.v1.Blat/{method}", request_serializer=lambda b: b, response_deserializer=lambda b: b
    )
    return [call.future(never(), timeout=20) for _ in range(n)], release


def test_stalled_grpc_calls_end_at_the_deadline_and_good_calls_pass(gw):
    clip = wav(synth_clip(2, 1.0))
    with grpc.insecure_channel(gw.grpc_address) as channel:
        stub = pb_grpc.BlatStub(channel)
        t0 = time.monotonic()
        stalled, release = _stalled_calls(channel, DRIPS)
        try:
            time.sleep(0.5)
            for _ in range(12):
                assert stub.Tag(pb.TagRequest(audio=pb.Audio(data=clip), top_k=3), timeout=10).tags
            codes = []
            for f in stalled:
                try:
                    f.result()
                    codes.append(grpc.StatusCode.OK)
                except grpc.RpcError as e:
                    codes.append(e.code())
            elapsed = time.monotonic() - t0
        finally:
            release.set()
    assert codes == [grpc.StatusCode.DEADLINE_EXCEEDED] * DRIPS, codes
    assert elapsed < DEADLINE_S + 2.0, f"stalled calls were ended after {elapsed:.1f} s (the client's own 20 s?)"


def test_a_stream_that_trickles_audio_is_closed(gw):
    """A StreamTag that sends a few samples every 0.5 s (never idle for stream_idle_s) but far slower than real
    time holds a stream place: it is closed once it falls behind the least rate."""

    def trickle():
        yield pb.StreamTagRequest(config=pb.StreamConfig(encoding="s16le", sample_rate=32000, window_s=1.0))
        for _ in range(40):  # 20 s of calls carrying 40 ms of audio in all
            time.sleep(0.5)
            yield pb.StreamTagRequest(pcm=b"\x00\x01" * 32)

    t0 = time.monotonic()
    with grpc.insecure_channel(gw.grpc_address) as channel:
        with pytest.raises(grpc.RpcError) as e:
            list(pb_grpc.BlatStub(channel).StreamTag(trickle(), timeout=30))
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, e.value
    assert "real time" in e.value.details()
    assert time.monotonic() - t0 < 8


def test_a_stream_at_real_time_is_not_closed(gw):
    def live():
        yield pb.StreamTagRequest(config=pb.StreamConfig(encoding="s16le", sample_rate=32000, window_s=1.0))
        for i in range(8):  # 0.5 s of audio every 0.5 s: a microphone
            time.sleep(0.5)
            yield pb.StreamTagRequest(pcm=(synth_clip(i, 0.5) * 32767).astype("<i2").tobytes())

    with grpc.insecure_channel(gw.grpc_address) as channel:
        windows = list(pb_grpc.BlatStub(channel).StreamTag(live(), timeout=30))
    assert len(windows) == 4


def _upload_slowly(url: str, body: bytes, piece: int = 65536, pause_s: float = 0.002) -> tuple[str, bytes]:
    """A client on a slower link: the whole body in pieces, then the answer. (what failed while sending, answer)"""
    u = urlsplit(url)
    with socket.create_connection((u.hostname, u.port), timeout=30) as s:
        failed = ""
        try:
            s.sendall(f"POST /v1/tag HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: {len(body)}\r\n\r\n".encode())
            for i in range(0, len(body), piece):
                s.sendall(body[i : i + piece])
                time.sleep(pause_s)
        except OSError as e:  # the gateway closed on a body it had not read: the kernel resets the connection
            failed = repr(e)
        answer = b""
        try:
            while chunk := s.recv(65536):
                answer += chunk
                if b"\r\n\r\n" in answer and answer.endswith(b"}"):
                    break
        except OSError as e:
            failed = failed or repr(e)
        return failed, answer


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0


def test_an_upload_refused_by_a_full_gate_reads_its_429(tiny_bundle, tmp_path):
    """One admission place, held by a long windowed tag: uploads meanwhile are refused with 429 only once their
    body is in, so the client sends all of it and reads the answer (before, the 429 came first and the close reset
    the connection under a client still sending)."""
    held, clip = wav(synth_clip(4, 120.0)), wav(synth_clip(5, 30.0))
    with running_server(tiny_bundle, tmp_path, env={"BLAT_SERVER_BATCHING__MAX_QUEUE": "1"}) as server:
        with httpx.Client(base_url=server.http_url, timeout=60) as c, ThreadPoolExecutor(1) as pool:
            holder = pool.submit(c.post, "/v1/tag", content=held, params={"window_s": 1.0, "hop_s": 0.125})
            time.sleep(0.5)
            failed, answer = _upload_slowly(server.http_url, clip)
            assert holder.result().status_code == 200
    assert not failed, failed
    assert _status(answer) == 429 and b"retry-after: 1" in answer.lower(), answer[:300]


def test_uploads_past_the_body_budget_read_their_429(tiny_bundle, tmp_path):
    """limits.max_body_bytes_in_flight bounds the request bodies held at once: uploads past it are refused (429),
    and the rest of their body is read and dropped so that each client reads its answer."""
    clip = wav(synth_clip(6, 28.0))  # 3.6 MB: two fit in 8 MiB
    env = {
        "BLAT_SERVER_LIMITS__MAX_BODY_BYTES_IN_FLIGHT": str(8 << 20),
        "BLAT_SERVER_LIMITS__MAX_UPLOAD_BYTES": str(4 << 20),
    }
    with running_server(tiny_bundle, tmp_path, env=env) as server:
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: _upload_slowly(server.http_url, clip), range(8)))
        assert httpx.get(f"{server.http_url}/healthz").status_code == 200
    assert [f for f, _ in answers if f] == []
    statuses = [_status(a) for _, a in answers]
    assert set(statuses) <= {200, 429} and 200 in statuses and 429 in statuses, statuses
    assert all(b"retry-after: 1" in a.lower() for _, a in answers if _status(a) == 429)
