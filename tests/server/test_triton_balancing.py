"""Triton replicas behind one gateway: with `triton.load_balancing = "round_robin"` the gateway's calls go to every
replica the address names; with the default "pick_first" they stay on one connection.

The replicas are real gRPC servers speaking Triton's `GRPCInferenceService` protocol (tritonclient's own stubs),
answering the health calls the gateway's readiness check makes and counting them."""

from __future__ import annotations

from concurrent import futures

import grpc
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from blat_gateway.backends.triton import TritonBackend
from blat_gateway.settings import TritonSettings


class Replica(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self):
        self.calls = 0

    def ServerReady(self, request, context):
        self.calls += 1
        return service_pb2.ServerReadyResponse(ready=True)

    def ModelReady(self, request, context):
        self.calls += 1
        return service_pb2.ModelReadyResponse(ready=True)


@pytest.fixture
def replicas():
    started = []
    for _ in range(2):
        replica = Replica()
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(replica, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        started.append((replica, server, port))
    yield started
    for _, server, _ in started:
        server.stop(0)


@pytest.mark.parametrize("policy", ["round_robin", "pick_first"])
def test_calls_spread_over_replicas_with_round_robin(tiny_bundle, replicas, policy):
    url = "ipv4:" + ",".join(f"127.0.0.1:{port}" for _, _, port in replicas)
    backend = TritonBackend(tiny_bundle, TritonSettings(url=url, load_balancing=policy))
    try:
        for _ in range(20):
            assert backend.ready()
    finally:
        backend.close()
    calls = [replica.calls for replica, _, _ in replicas]
    assert sum(calls) >= 20 * 2  # server readiness and every model's, per check
    if policy == "round_robin":
        assert min(calls) >= sum(calls) // 4, calls  # both replicas answer a fair share
    else:
        assert min(calls) == 0, calls  # one connection, one replica


def test_an_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="load_balancing"):
        TritonSettings(load_balancing="random")
