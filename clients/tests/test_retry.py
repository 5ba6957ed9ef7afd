"""Retries and timeouts against scripted servers (standard library HTTP, grpcio): they answer 429 or 503 with a
Retry-After first, which a real gateway only does under overload, then the real answer's shape."""

from __future__ import annotations

import json
import threading
import time
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import pytest

from blat_client import NO_RETRY, Client, ClientError, Retry
from blat_client._wire import blat_pb2 as pb
from blat_client._wire import blat_pb2_grpc as pb_grpc

STATS = {  # blat.proto's StatsResponse field names, as REST answers them
    "items": 3,
    "deleted_pending": 0,
    "index_kind": "flat",
    "index_version": "v0002",
    "previous_version": "v0001",
    "dim": 8,
    "bundle": "b@1",
    "index_engine": "faiss",
}
ERRORS = {
    429: ("RESOURCE_EXHAUSTED", "overloaded"),
    503: ("UNAVAILABLE", "unavailable"),
    404: ("NOT_FOUND", "not_found"),
}


class Script:
    """The statuses to answer, in order (then 200), and when each request came."""

    def __init__(self, statuses: list[int], retry_after: str | None = "1", hang_s: float = 0.0):
        self.statuses, self.retry_after, self.hang_s, self.times = list(statuses), retry_after, hang_s, []


@pytest.fixture
def http_server():
    servers = []

    def start(script: Script) -> str:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                script.times.append(time.monotonic())
                time.sleep(script.hang_s)
                status = script.statuses.pop(0) if script.statuses else 200
                body = json.dumps(
                    STATS
                    if status == 200
                    else {
                        "error": {
                            "code": ERRORS[status][0],
                            "http_status": status,
                            "reason": ERRORS[status][1],
                            "message": "busy, try later",
                        }
                    }
                ).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                if status != 200 and script.retry_after:
                    self.send_header("retry-after", script.retry_after)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for s in servers:
        s.shutdown()


def test_rest_retries_429_after_retry_after(http_server):
    script = Script([429, 503])
    with Client(http_server(script), retry=Retry(attempts=3, base_s=0.01)) as c:
        stats = c.stats()
    assert stats.items == 3 and stats.previous_version == "v0001"
    assert len(script.times) == 3
    assert script.times[1] - script.times[0] >= 0.95 and script.times[2] - script.times[1] >= 0.95  # Retry-After: 1


def test_rest_gives_up_with_the_server_message(http_server):
    script = Script([429, 429, 429], retry_after="0")
    with Client(http_server(script), retry=Retry(attempts=1, base_s=0.01)) as c, pytest.raises(ClientError) as e:
        c.stats()
    assert e.value.status == 429 and e.value.message == "busy, try later" and e.value.retry_after == 0
    assert len(script.times) == 2
    script = Script([503])
    with Client(http_server(script), retry=NO_RETRY) as c, pytest.raises(ClientError) as e:
        c.stats()
    assert e.value.status == 503 and len(script.times) == 1


def test_client_errors_are_not_retried(http_server):
    script = Script([404])
    with Client(http_server(script)) as c, pytest.raises(ClientError) as e:
        c.stats()
    assert e.value.status == 404 and len(script.times) == 1


def test_timeout(http_server):
    script = Script([], hang_s=3.0)
    with Client(http_server(script), timeout=0.5) as c, pytest.raises(ClientError) as e:
        c.stats()
    assert e.value.status == 0 and e.value.code == "DEADLINE_EXCEEDED" and e.value.reason == "timeout"
    assert Client("http://127.0.0.1:9").transport.timeout == 60.0  # a timeout even when none is given


class ScriptedBlat(pb_grpc.BlatServicer):
    def __init__(self, script: Script):
        self.script = script

    def Stats(self, request, context):
        self.script.times.append(time.monotonic())
        if self.script.statuses:
            self.script.statuses.pop(0)
            context.set_trailing_metadata((("retry-after", self.script.retry_after),))
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "busy, try later")
        return pb.StatsResponse(items=3, index_kind="flat", index_version="v0002", dim=8, bundle="b@1")


def test_grpc_retries_resource_exhausted_after_retry_after():
    script = Script([429])
    server = grpc.server(futures.ThreadPoolExecutor(2))
    pb_grpc.add_BlatServicer_to_server(ScriptedBlat(script), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with Client(f"grpc://127.0.0.1:{port}", retry=Retry(attempts=2, base_s=0.01)) as c:
            assert c.stats().items == 3
        assert len(script.times) == 2 and script.times[1] - script.times[0] >= 0.95
        script.statuses = [429]
        with Client(f"grpc://127.0.0.1:{port}", retry=NO_RETRY) as c, pytest.raises(ClientError) as e:
            c.stats()
        assert e.value.status == 429 and e.value.code == "RESOURCE_EXHAUSTED" and e.value.retry_after == 1.0
    finally:
        server.stop(0)
