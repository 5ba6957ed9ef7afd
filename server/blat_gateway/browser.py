"""Browser safety at the REST door (server/blat_gateway/front_door.py): a gateway without keys on a developer's machine
is
reachable from every web page that machine opens, so the door checks what a browser sends.

- Host: non-public routes answer only the names in `allowed_hosts` (localhost names and the bound address by
  default), so a page whose DNS name was rebound to this address cannot read or write (421).
- Origin: a state-changing request (POST, PUT, PATCH, DELETE, and any WebSocket) from a page of another origin is
  refused (403), unless settings.browser.cors_origins names that origin; requests without Origin (curl, SDKs) are
  not browsers' and pass.
- CORS: answered only for the configured origins (no credentials: keys travel in headers the page sets).
- Every answer carries a Content-Security-Policy (the page's own files only, no inline script), nosniff and no framing.
"""

from __future__ import annotations

from blat_gateway.endpoint import PUBLIC, Endpoint
from blat_gateway.errors import ForeignOrigin, MisdirectedRequest
from blat_gateway.settings import Settings

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
ANY_ADDRESS = frozenset({"0.0.0.0", "::", ""})
# A WebSocket ("WS", server/blat_gateway/api/models.py) counts as state-changing: the same-origin policy does not
# cover it (no CORS), so any page could open one to a gateway and read its answers.
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE", "WS"})
# The page (server/blat_gateway/web/) is one HTML file, one script and one style sheet from this origin; it plays audio
# it fetched
# (blob:) and calls the API here. JSON answers are not rendered, so the same policy covers them.
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; media-src 'self' blob:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-resource-policy", b"same-origin"),
)
CORS_ALLOW_HEADERS = b"authorization, x-api-key, content-type"
CORS_MAX_AGE_S = b"600"


def host_name(host: str) -> str:
    """'Example.com:8080' -> 'example.com'; '[::1]:8080' -> '::1'."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class BrowserGuard:
    def __init__(self, settings: Settings):
        browser = settings.browser
        self.any_host = "*" in browser.allowed_hosts
        names = {host_name(h) for h in browser.allowed_hosts if h != "*" and not h.startswith(".")}
        bound = host_name(settings.host)
        self.hosts = LOOPBACK_NAMES | names | ({bound} if bound not in ANY_ADDRESS else set())
        self.suffixes = tuple(h.lower() for h in browser.allowed_hosts if h.startswith("."))
        self.cors_origins = frozenset(o.lower() for o in browser.cors_origins)

    def host_allowed(self, host: str) -> bool:
        name = host_name(host)
        return self.any_host or name in self.hosts or any(name == s[1:] or name.endswith(s) for s in self.suffixes)

    def check(self, method: str, headers: dict[str, str], access: Endpoint) -> None:
        """MisdirectedRequest (421) for a Host this gateway does not answer to; ForeignOrigin (403) for a
        state-changing request from another origin's page."""
        host = headers.get("host")
        if access.scope != PUBLIC and host is not None and not self.host_allowed(host):
            raise MisdirectedRequest(
                f"this gateway does not answer to the host name {host_name(host)!r}: add it to browser.allowed_hosts"
            )
        origin = headers.get("origin")
        if method in STATE_CHANGING and origin is not None and not self.same_or_allowed_origin(origin, host):
            raise ForeignOrigin(
                f"a {method} from a page at {origin} is refused: only this gateway's own page and "
                "browser.cors_origins may change things here"
            )

    def same_or_allowed_origin(self, origin: str, host: str | None) -> bool:
        origin = origin.strip().lower()
        if origin in self.cors_origins:
            return True
        scheme, _, rest = origin.partition("://")
        return scheme in ("http", "https") and host is not None and rest == host.strip().lower()

    def cors_headers(self, origin: str | None) -> list[tuple[bytes, bytes]]:
        """The CORS headers of an answer to a page at `origin`: none unless it is configured."""
        if origin is None or origin.strip().lower() not in self.cors_origins:
            return []
        return [
            (b"access-control-allow-origin", origin.strip().encode("latin-1")),
            (b"vary", b"Origin"),
            (b"access-control-expose-headers", b"retry-after"),
        ]

    def preflight_headers(self, origin: str | None, methods: set[str]) -> list[tuple[bytes, bytes]]:
        cors = self.cors_headers(origin)
        if not cors:
            return []
        return cors + [
            (b"access-control-allow-methods", ", ".join(sorted(methods)).encode()),
            (b"access-control-allow-headers", CORS_ALLOW_HEADERS),
            (b"access-control-max-age", CORS_MAX_AGE_S),
        ]

    def secured(self, headers: list[tuple[bytes, bytes]], origin: str | None) -> list[tuple[bytes, bytes]]:
        """An answer's headers with the security headers (a route's own CSP is kept) and, for a configured
        origin, CORS."""
        names = {k.lower() for k, _ in headers}
        extra = [h for h in SECURITY_HEADERS if h[0] not in names]
        if b"content-security-policy" not in names:
            extra.append((b"content-security-policy", PAGE_CSP.encode()))
        if b"access-control-allow-origin" not in names:
            extra += self.cors_headers(origin)
        return list(headers) + extra
