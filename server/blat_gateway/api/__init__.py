"""The gateway's endpoints, each declared once (server/blat_gateway/endpoint.py) with its REST and gRPC adapters,
by concern: search, models (tag, caption, embed), live (tag streams), items, index, and pages (health, metrics, the
web page, the docs).

The faces (rest.py, grpc_service.py) serve `ENDPOINTS`; the front door and the gRPC guard look calls up here.
"""

from __future__ import annotations

from blat_gateway.api import index, items, live, models, pages, search  # noqa: F401  (importing declares)
from blat_gateway.endpoint import ENDPOINTS, PUBLIC, READ, UNDECLARED, WRITE, Endpoint

__all__ = ["ENDPOINTS", "PUBLIC", "READ", "UNDECLARED", "WRITE", "Endpoint", "by_route", "by_rpc"]

_ROUTES = {(ep.method, ep.path): ep for ep in ENDPOINTS if ep.route}
_RPCS = {ep.rpc: ep for ep in ENDPOINTS if ep.rpc}


def by_route(method: str, path_template: str) -> Endpoint:
    """The endpoint of a REST call (HEAD is answered like GET: Starlette routes it there), or UNDECLARED."""
    return _ROUTES.get(("GET" if method == "HEAD" else method, path_template), UNDECLARED)


def by_rpc(method: str) -> Endpoint:
    """The endpoint of a gRPC method of blat.v1.Blat, or UNDECLARED."""
    return _RPCS.get(method, UNDECLARED)
