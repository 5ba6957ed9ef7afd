"""What operators see per request: a request id taken from `x-request-id` (or made) and echoed on both faces, one
access line per request and RPC carrying it, the same id on the audit lines a request writes, the build-info and
per-model latency metrics."""

from __future__ import annotations

import logging
import re

import grpc
import httpx
import pytest

from blat_gateway.observe import RequestIdFilter
from blat_wire import blat_pb2 as pb
from blat_wire import blat_pb2_grpc as pb_grpc
from tests.server.conftest import running_inproc, synth_clip, wav


@pytest.fixture(scope="module")
def gw(tiny_bundle, tmp_path_factory):
    with running_inproc(tiny_bundle, tmp_path_factory.mktemp("observe")) as server:
        yield server


@pytest.fixture
def logs(caplog):
    """Every record at INFO, with the gateway's request-id filter on the capturing handler."""
    caplog.handler.addFilter(RequestIdFilter())
    with caplog.at_level(logging.INFO):
        yield caplog
    caplog.handler.removeFilter(caplog.handler.filters[-1])


def access_lines(logs, **match):
    return [
        r
        for r in logs.records
        if r.name == "blat_gateway.access" and all(getattr(r, k, None) == v for k, v in match.items())
    ]


def test_rest_request_ids_are_echoed_and_logged(gw, logs):
    with httpx.Client(base_url=gw.http_url, timeout=30) as http:
        given = http.post("/v1/search/text", json={"query": "rain", "k": 2}, headers={"x-request-id": "trace-42.a/b"})
        made = http.get("/v1/index/stats")
        odd = http.get("/v1/index/stats", headers={"x-request-id": "no spaces or <tags> here"})
        refused = http.get("/v1/items/no-such-item", headers={"x-request-id": "missing-1"})
    assert given.status_code == 200 and given.headers["x-request-id"] == "trace-42.a/b"
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["x-request-id"])
    assert re.fullmatch(r"[0-9a-f]{32}", odd.headers["x-request-id"])  # an unusable id is replaced, not echoed
    assert refused.status_code == 404 and refused.headers["x-request-id"] == "missing-1"
    line = access_lines(logs, request_id="trace-42.a/b")
    assert len(line) == 1 and (line[0].api, line[0].endpoint, line[0].status) == ("rest", "/v1/search/text", 200)
    assert line[0].duration_ms > 0 and line[0].key == ""
    assert access_lines(logs, request_id="missing-1")[0].status == 404


def test_grpc_request_ids_are_echoed_and_logged(gw, logs):
    with grpc.insecure_channel(gw.grpc_address) as channel:
        stub = pb_grpc.BlatStub(channel)
        _, call = stub.Stats.with_call(pb.Empty(), metadata=(("x-request-id", "grpc-7"),), timeout=30)
        assert dict(call.initial_metadata())["x-request-id"] == "grpc-7"
        with pytest.raises(grpc.RpcError) as e:
            stub.GetItem(pb.ItemRequest(id="nope"), metadata=(("x-request-id", "grpc-8"),), timeout=30)
        assert dict(e.value.initial_metadata())["x-request-id"] == "grpc-8"
    assert (access_lines(logs, request_id="grpc-7")[0].endpoint, access_lines(logs, request_id="grpc-7")[0].status) == (
        "Stats",
        "OK",
    )
    assert access_lines(logs, request_id="grpc-8")[0].status == "NOT_FOUND"


def test_audit_lines_carry_the_request_id(gw, logs):
    with httpx.Client(base_url=gw.http_url, timeout=30) as http:
        assert http.post("/v1/items?id=audited", content=wav(synth_clip(77))).status_code == 201
        assert http.delete("/v1/items/audited", headers={"x-request-id": "delete-9"}).status_code == 200
    audit = [r for r in logs.records if r.name == "blat_gateway.audit"]
    assert [(r.action, r.id, r.request_id) for r in audit] == [("delete", "audited", "delete-9")]


def test_build_info_and_model_latency_metrics(gw):
    with httpx.Client(base_url=gw.http_url, timeout=30) as http:
        http.post("/v1/search/text", json={"query": "a bell", "k": 1})
        text = http.get("/metrics").text
    bundle = gw.gateway.manifest.id
    assert re.search(rf'blat_build_info\{{[^}}]*bundle="{re.escape(bundle)}"[^}}]*\}} 1\.0', text), text[:2000]
    count = re.search(r'blat_model_seconds_count\{batcher="text_embed"\} (\d+)', text)
    assert count and int(count.group(1)) >= 1
