"""Browser safety, on by default, against the real gateway without API keys (the embedded default): a page on another
origin cannot write (Origin checked on every state-changing route), a DNS-rebound name cannot reach the data (Host
checked), CORS is closed unless configured, and every answer carries CSP, nosniff and no-framing headers.

A real process started with the defaults, as a developer starts it: those defaults are what is checked.
"""

from __future__ import annotations

import json
import socket
from urllib.parse import urlsplit

import httpx
import pytest

from blat_gateway.__main__ import exposure_warning
from blat_gateway.settings import load_settings
from tests.server.conftest import running_server, start_server, synth_clip, wav

FOREIGN = "http://evil.example"
APP = "http://app.example:3000"


@pytest.fixture(scope="module")
def gw(tiny_bundle, tmp_path_factory):
    server = start_server(
        tiny_bundle,
        tmp_path_factory.mktemp("browser-safety"),
        env={"BLAT_SERVER_BROWSER__CORS_ORIGINS": json.dumps([APP])},
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def http(gw):
    with httpx.Client(base_url=gw.http_url, timeout=30) as c:
        yield c


CLIP = wav(synth_clip(1, 1.0))


def _refused(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, (r.status_code, r.text[:300])
    assert r.json()["error"]["reason"] == code, r.text[:300]


def test_a_foreign_origin_cannot_write(gw, http):
    hdr = {"origin": FOREIGN}
    _refused(http.post("/v1/items", params={"id": "x/1"}, content=CLIP, headers=hdr), 403, "forbidden_origin")
    _refused(http.post("/v1/index/rollback", headers=hdr), 403, "forbidden_origin")
    _refused(http.delete("/v1/items/x/1", headers=hdr), 403, "forbidden_origin")
    _refused(http.post("/v1/search/text", json={"query": "rain"}, headers={"origin": "null"}), 403, "forbidden_origin")
    assert http.get("/v1/index/stats").json()["items"] == 0  # nothing was stored
    # the gateway's own page (same origin), a configured CORS origin, and clients that send no Origin all may
    own = http.post("/v1/items", params={"id": "x/1"}, content=CLIP, headers={"origin": gw.http_url})
    assert own.status_code == 201
    assert http.post("/v1/search/text", json={"query": "rain"}, headers={"origin": APP}).status_code == 200
    assert http.delete("/v1/items/x/1").status_code == 200


def test_a_foreign_host_is_refused_on_the_api_but_health_checks_answer(gw, http):
    """DNS rebinding: a page at evil.example whose name now resolves to this gateway sends Host: evil.example."""
    for call in (
        lambda h: http.get("/v1/index/stats", headers=h),
        lambda h: http.post("/v1/items", params={"id": "x/2"}, content=CLIP, headers=h),
    ):
        _refused(call({"host": "evil.example:8080"}), 421, "misdirected_request")
    assert http.get("/v1/index/stats", headers={"host": "localhost"}).status_code == 200
    assert http.get("/readyz", headers={"host": "10.1.2.3:8080"}).status_code == 200  # probes use the pod address


def test_cors_answers_only_the_configured_origins(http):
    pre = {"access-control-request-method": "POST", "access-control-request-headers": "authorization, content-type"}
    ok = http.options("/v1/search/text", headers={"origin": APP, **pre})
    assert ok.status_code == 204 and ok.headers["access-control-allow-origin"] == APP
    assert "POST" in ok.headers["access-control-allow-methods"]
    assert "authorization" in ok.headers["access-control-allow-headers"].lower()
    no = http.options("/v1/search/text", headers={"origin": FOREIGN, **pre})
    assert "access-control-allow-origin" not in no.headers
    assert http.get("/v1/index/stats", headers={"origin": APP}).headers["access-control-allow-origin"] == APP
    assert "access-control-allow-origin" not in http.get("/v1/index/stats", headers={"origin": FOREIGN}).headers


def test_cors_is_off_unless_configured(tiny_bundle, tmp_path):
    with running_server(tiny_bundle, tmp_path) as server:
        r = httpx.options(
            f"{server.http_url}/v1/search/text", headers={"origin": APP, "access-control-request-method": "POST"}
        )
        assert "access-control-allow-origin" not in r.headers
        assert (
            httpx.post(f"{server.http_url}/v1/search/text", json={"query": "a"}, headers={"origin": APP}).status_code
            == 403
        )


@pytest.mark.parametrize(
    "path", ["/", "/web/app.js", "/docs", "/v1/index/stats", "/healthz", "/no/such/route", "/v1/items/no/such"]
)
def test_every_answer_carries_the_security_headers(http, path):
    r = http.get(path)
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    if path == "/":  # the page: its own files only, no inline script
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp.split("script-src")[1].split(";")[0]


def test_refusals_before_the_app_carry_the_headers_too(gw):
    u = urlsplit(gw.http_url)
    with socket.create_connection((u.hostname, u.port), timeout=10) as s:
        s.sendall(b"GET /v1/items/" + b"a" * (1 << 17) + b" HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
        answer = s.recv(65536).decode("latin-1").lower()
    assert answer.startswith("http/1.1 414") and "x-content-type-options: nosniff" in answer, answer[:300]


def test_a_public_address_without_keys_is_warned_about():
    assert exposure_warning(load_settings(environ={}, host="0.0.0.0"))
    assert exposure_warning(load_settings(environ={}, host="10.0.0.5"))
    assert exposure_warning(load_settings(environ={}, host="127.0.0.1")) is None
    assert exposure_warning(load_settings(environ={}, host="localhost")) is None
    assert exposure_warning(load_settings(environ={}, host="0.0.0.0", auth={"keys": {"k": ["read"]}})) is None
