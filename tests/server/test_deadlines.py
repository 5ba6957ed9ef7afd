"""Past the request's deadline every path answers 504 with the error envelope (gRPC DEADLINE_EXCEEDED), never a
plain 500 or UNKNOWN: label embedding and windowed tagging once let a concurrent.futures.TimeoutError escape.

A gateway with a 0.25 s deadline gets heavy requests (1,000 new custom labels, hundreds of windows) at once.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc
import httpx
import pytest

from blat_wire import blat_pb2 as pb
from blat_wire import blat_pb2_grpc as pb_grpc
from tests.server.conftest import inproc_gateway, synth_clip, wav

ENV = {"BLAT_SERVER_LIMITS__REQUEST_TIMEOUT_S": "0.25"}


@pytest.fixture(scope="module")
def gw(tiny_bundle, tmp_path_factory):
    server = inproc_gateway(tiny_bundle, tmp_path_factory.mktemp("deadlines"), env=ENV)  # API only: in-process
    yield server
    server.stop()


def _labels(seed: int) -> list[str]:  # new each time: none is in the gateway's label cache
    return [f"a made up sound {seed} number {i}" for i in range(1000)]


CLIP = wav(synth_clip(1, 30.0), subtype="PCM_16")
HEAVY = [("labels", {"labels": None, "top_k": 3}), ("windows", {"window_s": 1.0, "hop_s": 0.125, "top_k": 3})]


def test_rest_answers_504_with_the_envelope(gw):
    def call(i: int) -> httpx.Response:
        kind, params = HEAVY[i % 2]
        params = {**params, "labels": _labels(i)} if kind == "labels" else params
        with httpx.Client(base_url=gw.http_url, timeout=30) as c:
            return c.post("/v1/tag", content=CLIP, params=params)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(call, range(16)))
    statuses = [r.status_code for r in answers]
    # 408: a body not in by the deadline (it covers the upload too), under this load on 2 cores
    assert set(statuses) <= {200, 408, 504}, [(r.status_code, r.text[:200]) for r in answers if r.status_code != 200]
    assert 504 in statuses
    for r in answers:
        if r.status_code == 504:
            assert r.json()["error"]["reason"] == "deadline_exceeded", r.text[:200]
        if r.status_code == 408:
            assert r.json()["error"]["reason"] == "request_timeout", r.text[:200]


def test_grpc_answers_deadline_exceeded(gw):
    def call(i: int) -> grpc.StatusCode:
        kind, params = HEAVY[i % 2]
        req = pb.TagRequest(
            audio=pb.Audio(data=CLIP),
            top_k=3,
            labels=_labels(100 + i) if kind == "labels" else [],
            window_s=params.get("window_s", 0.0),
            hop_s=params.get("hop_s", 0.0),
        )
        try:
            stub.Tag(req, timeout=30)
            return grpc.StatusCode.OK
        except grpc.RpcError as e:
            return e.code()

    with grpc.insecure_channel(gw.grpc_address) as channel:
        stub = pb_grpc.BlatStub(channel)
        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(call, range(16)))
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.DEADLINE_EXCEEDED}, codes
    assert grpc.StatusCode.DEADLINE_EXCEEDED in codes
