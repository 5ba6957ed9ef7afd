"""A connection reset is retried like a 429: a server resets a connection only when it closed with part of the
request unread (it refused it, or went away, before reading all of it), so the call was never carried out.

A scripted server (standard library sockets) resets the first uploads under their body, as a client far from a
gateway saw its refusals before the gateway drained refused bodies (the 429 is lost with the reset); the next attempt
gets the real answer."""

from __future__ import annotations

import json
import socket
import struct
import threading

import pytest

from blat_client import NO_RETRY, Client, ClientError, Retry

ITEM = {
    "id": "a/1",
    "source_uri": "",
    "duration_s": 1.0,
    "tags": [],
    "caption": "",
    "content_hash": "h",
    "added_at": "2026-01-01T00:00:00Z",
}


def _read_head(conn: socket.socket) -> tuple[bytes, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536)
    head, rest = data.split(b"\r\n\r\n", 1)
    return head, rest


def _created(body: dict) -> bytes:
    raw = json.dumps(body).encode()
    return (
        f"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: {len(raw)}\r\n"
        f"connection: close\r\n\r\n"
    ).encode() + raw


@pytest.fixture
def resetting_server():
    """Resets the first `resets` connections under their body (SO_LINGER 0), then answers 201 with ITEM."""
    listener = socket.create_server(("127.0.0.1", 0))
    seen = []

    def serve(resets: int) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                head, rest = _read_head(conn)
                seen.append(head.split(b"\r\n", 1)[0])
                if len(seen) <= resets:  # the 429 a gateway wrote is lost with the reset over a real network
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    continue  # closed with the body unread: a reset
                length = int(
                    next(
                        v
                        for k, v in (line.split(b": ", 1) for line in head.split(b"\r\n")[1:])
                        if k.lower() == b"content-length"
                    )
                )
                while len(rest) < length:
                    rest += conn.recv(65536)
                conn.sendall(_created(ITEM))

    def start(resets: int) -> str:
        threading.Thread(target=serve, args=(resets,), daemon=True).start()
        return f"http://127.0.0.1:{listener.getsockname()[1]}"

    yield start, seen
    listener.close()


BODY = b"RIFF" + b"\x00" * (8 << 20)  # large enough to be mid-send when the reset comes


def test_a_reset_after_a_refusal_is_retried(resetting_server):
    start, seen = resetting_server
    with Client(start(resets=2), retry=Retry(attempts=3, base_s=0.01)) as c:
        assert c.add_item("a/1", BODY).id == "a/1"
    assert len(seen) == 3


def test_without_retries_a_reset_says_so(resetting_server):
    start, _ = resetting_server
    with Client(start(resets=1), retry=NO_RETRY) as c:
        with pytest.raises(ClientError) as e:
            c.add_item("a/1", BODY)
    assert e.value.reason == "connection_reset" and e.value.code == "UNAVAILABLE" and e.value.retryable, e.value
