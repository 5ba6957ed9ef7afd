"""The access table: every REST route and every RPC is declared (so none is closed by accident), and anything
undeclared is refused on both faces."""

from __future__ import annotations

import pytest
from fastapi.routing import APIRoute

from blat_gateway.access import GRPC, REST, UNDECLARED, authorize, grpc_access, redact, rest_access
from blat_gateway.errors import Forbidden, Unauthorized
from blat_gateway.rest import create_app
from blat_gateway.service import Gateway
from blat_gateway.settings import load_settings
from blat_wire import blat_pb2 as pb


@pytest.fixture(scope="module")
def app(tiny_bundle, tmp_path_factory):
    gw = Gateway(load_settings(environ={}, bundle=str(tiny_bundle), index_dir=str(tmp_path_factory.mktemp("idx"))))
    yield create_app(gw)
    gw.close()


def test_every_rest_route_is_declared_and_nothing_else(app):
    routes = {(m, r.path) for r in app.routes for m in getattr(r, "methods", ()) if m != "HEAD"}
    assert routes <= set(REST), f"routes missing from server/blat_gateway/access.py: {sorted(routes - set(REST))}"
    api = {k for k in routes if k[1].startswith("/v1/")}
    assert {k for k in REST if k[1].startswith("/v1/")} == api, (
        "server/blat_gateway/access.py declares routes that do not exist"
    )
    assert all(isinstance(r, APIRoute) for r in app.routes if getattr(r, "path", "").startswith("/v1/"))


def test_every_rpc_is_declared_and_nothing_else():
    methods = set(pb.DESCRIPTOR.services_by_name["Blat"].methods_by_name)
    assert methods == set(GRPC)


def test_undeclared_calls_are_refused_even_without_keys():
    assert rest_access("POST", "/v1/new-thing") is UNDECLARED and grpc_access("NewThing") is UNDECLARED
    for keys, key in (({}, ""), ({"k": ["read", "write"]}, "k")):
        with pytest.raises(Forbidden):
            authorize(UNDECLARED, keys, key, "NewThing")


def test_scopes():
    keys = {"r": ["read"], "w": ["read", "write"]}
    authorize(grpc_access("SearchText"), keys, "r", "SearchText")
    authorize(grpc_access("AddItem"), keys, "w", "AddItem")
    authorize(rest_access("GET", "/healthz"), keys, "", "healthz")
    with pytest.raises(Forbidden):
        authorize(grpc_access("AddItem"), keys, "r", "AddItem")
    with pytest.raises(Unauthorized):
        authorize(rest_access("GET", "/v1/index/stats"), keys, "nope", "stats")


def test_redaction_keeps_no_character_of_the_key():
    for key in ("ab", "abc", "a-much-longer-secret-key"):
        shown = redact(key)
        assert key not in shown and shown.startswith("key:") and redact(key) == shown
    assert redact("abc") != redact("abd")
