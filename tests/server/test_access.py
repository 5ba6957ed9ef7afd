"""The endpoint declarations (server/blat_gateway/api/): every REST route and every RPC is declared once and served
by its adapter (so none is closed or open by accident), and anything undeclared is refused on both faces."""

from __future__ import annotations

import pytest
from fastapi.routing import APIRoute, APIWebSocketRoute

from blat_gateway.access import authorize, redact
from blat_gateway.api import ENDPOINTS, UNDECLARED, by_route, by_rpc
from blat_gateway.endpoint import endpoint
from blat_gateway.errors import Forbidden, Unauthorized
from blat_gateway.grpc_service import BlatServicer
from blat_gateway.rest import create_app
from blat_gateway.service import Gateway
from blat_gateway.settings import load_settings
from blat_wire import blat_pb2 as pb
from blat_wire import blat_pb2_grpc as pb_grpc


@pytest.fixture(scope="module")
def app(tiny_bundle, tmp_path_factory):
    gw = Gateway(load_settings(environ={}, bundle=str(tiny_bundle), index_dir=str(tmp_path_factory.mktemp("idx"))))
    yield create_app(gw)
    gw.close()


def test_every_rest_route_is_declared_and_every_declared_route_served(app):
    routes = {(m, r.path) for r in app.routes for m in getattr(r, "methods", ()) if m != "HEAD"}
    routes |= {("WS", r.path) for r in app.routes if isinstance(r, APIWebSocketRoute)}
    declared = {(ep.method, ep.path) for ep in ENDPOINTS if ep.route}
    assert routes == declared, f"served, undeclared: {routes - declared}; declared, not served: {declared - routes}"
    assert all(by_route(m, p) is not UNDECLARED for m, p in routes)
    assert all(isinstance(r, (APIRoute, APIWebSocketRoute)) for r in app.routes if r.path.startswith("/v1/"))


def test_every_rpc_is_declared_and_served_by_its_adapter():
    service = pb.DESCRIPTOR.services_by_name["Blat"]
    declared = {ep.rpc: ep for ep in ENDPOINTS if ep.rpc}
    assert set(service.methods_by_name) == set(declared)
    for name, method in service.methods_by_name.items():
        ep = declared[name]
        assert ep.serve_grpc is not None, f"{name} is declared without a gRPC adapter"
        assert ep.stream == (method.client_streaming and method.server_streaming), name
        # the servicer's method is the declared adapter, not the generated stub that answers UNIMPLEMENTED
        assert getattr(BlatServicer, name) is not getattr(pb_grpc.BlatServicer, name), name


def test_declarations_are_complete_and_unique():
    for ep in ENDPOINTS:
        assert ep.scope in ("read", "write", "public") and ep.gate in (None, "audio", "text"), ep.name
        assert ep.body in (None, "audio", "json", "audio_json") and (ep.route or ep.rpc), ep.name
        assert ep.route is None or ep.make_rest is not None or ep.name == "openapi", f"{ep.name}: no REST adapter"
        assert ep.gate is None or ep.scope != "public", f"{ep.name}: a public model call"
    with pytest.raises(ValueError, match="declared twice"):
        endpoint("search_text_again", route="POST /v1/search/text", scope="read")
    with pytest.raises(ValueError, match="declared twice"):
        endpoint("SearchTextAgain", rpc="SearchText", scope="read")


def test_undeclared_calls_are_refused_even_without_keys():
    assert by_route("POST", "/v1/new-thing") is UNDECLARED and by_rpc("NewThing") is UNDECLARED
    for keys, key in (({}, ""), ({"k": ["read", "write"]}, "k")):
        with pytest.raises(Forbidden):
            authorize(UNDECLARED, keys, key, "NewThing")


def test_scopes():
    keys = {"r": ["read"], "w": ["read", "write"]}
    authorize(by_rpc("SearchText"), keys, "r", "SearchText")
    authorize(by_rpc("AddItem"), keys, "w", "AddItem")
    authorize(by_route("GET", "/healthz"), keys, "", "healthz")
    with pytest.raises(Forbidden):
        authorize(by_rpc("AddItem"), keys, "r", "AddItem")
    with pytest.raises(Unauthorized):
        authorize(by_route("GET", "/v1/index/stats"), keys, "nope", "stats")


def test_redaction_keeps_no_character_of_the_key():
    for key in ("ab", "abc", "a-much-longer-secret-key"):
        shown = redact(key)
        assert key not in shown and shown.startswith("key:") and redact(key) == shown
    assert redact("abc") != redact("abd")
