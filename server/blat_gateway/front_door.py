"""The ASGI layer in front of the REST routes: what every request passes before a route sees it.

In order: find the route and its declaration (server/blat_gateway/api/); start the request's deadline (it covers the
body); check the browser's Host and Origin (server/blat_gateway/browser.py: 421/403); check the API key (401/403);
refuse a declared body size over the cap (413: limits.max_upload_bytes for audio uploads, limits.max_json_bytes
for JSON); read the whole body (408 when it stalls for limits.body_idle_s or is not in by the deadline, 413 past
the cap, 429 past limits.max_body_bytes_in_flight); only then admit the request through its model input's gate
(429 with Retry-After).
A body that drips in therefore holds a connection, never an admission place. A refusal before the body is read
reads the rest of it first (up to the cap, within the deadline), so the client reads its answer, not a reset.
It also times every request for /metrics and adds the security headers to every answer. FastAPI parses a JSON body
before it runs a route's dependencies, so none of this could live in dependencies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque

from starlette.routing import Match, Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from blat_gateway.access import authorize, presented_key
from blat_gateway.admission import reset_deadline, set_deadline
from blat_gateway.api import UNDECLARED, by_route
from blat_gateway.browser import BrowserGuard
from blat_gateway.errors import (
    Overloaded,
    RequestTimeout,
    ServiceError,
    TooLarge,
    http_answer,
    unexpected,
)
from blat_gateway.observe import HEADER, choose_request_id, key_digest, log_access, request_id
from blat_gateway.service import Gateway

log = logging.getLogger(__name__)


class FrontDoor:
    def __init__(self, app: ASGIApp, gateway: Gateway, router: Router):
        self.app, self.gw, self.router = app, gateway, router
        self.browser = BrowserGuard(gateway.settings)
        self.body_bytes_held = 0  # of the bodies read and not yet answered (one event loop touches it: no lock)

    def _template(self, scope: Scope) -> str | None:
        for route in self.router.routes:
            match, _ = route.matches(scope)
            if match == Match.FULL:
                return route.path
        return None

    async def _options(self, scope: Scope, send: Send, origin: str | None) -> None:
        """OPTIONS: every method any route at this path takes (FastAPI has one route per method, and Starlette's 405
        would list only the first one's)."""
        methods: set[str] = set()
        for route in self.router.routes:
            match, _ = route.matches({**scope, "method": "GET"})
            if match != Match.NONE and getattr(route, "methods", None):
                methods.update(route.methods)
        status = 204 if methods else 404
        headers = [(b"allow", ", ".join(sorted(methods | {"OPTIONS"})).encode())] if methods else []
        if methods:  # a CORS preflight from a configured origin (none by default)
            headers += self.browser.preflight_headers(origin, methods | {"OPTIONS"})
        await send({"type": "http.response.start", "status": status, "headers": headers + [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # Every request is measured here, refusals included: a plain ASGI wrapper around `send` costs a function call,
        # where Starlette's BaseHTTPMiddleware ran each request in a task of its own with memory streams.
        t0, status, template = time.perf_counter(), 500, None
        headers = _headers(scope)
        origin = headers.get("origin")
        rid = choose_request_id(headers.get(HEADER))
        token = request_id.set(rid)

        async def measured(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                secured = self.browser.secured(message.get("headers", []), origin)
                message = {**message, "headers": [*secured, (HEADER.encode(), rid.encode())]}
            await send(message)

        try:
            if scope["method"] == "OPTIONS":
                await self._options(scope, measured, origin)
                return
            template = self._template(scope)
            if template is None:  # no such route, or a method it does not take: Starlette answers 404 / 405
                await self.app(scope, receive, measured)
                return
            await self._admit(scope, receive, measured, template, headers)
        finally:
            self._account("rest", scope, template, status, time.perf_counter() - t0, headers)
            request_id.reset(token)

    def _account(self, api: str, scope: Scope, template, status: int, seconds: float, headers, **more) -> None:
        """A request's metrics and, with settings.access_log, its access line."""
        self.gw.metrics.observe(api, template or "unmatched", status, seconds)
        if self.gw.settings.access_log:
            log_access(
                api=api,
                method=scope.get("method", "WS"),
                endpoint=template or "unmatched",
                path=scope["path"][:256],
                status=status,
                **more,
                duration_ms=round(seconds * 1000, 2),
                client=(scope.get("client") or ("", 0))[0],
                key=key_digest(headers),
            )

    def _check(self, method: str, headers: dict[str, str], access, what: str) -> None:
        """The browser's Host and Origin (421, 403), then the API key (401, 403)."""
        self.browser.check(method, headers, access)
        settings = self.gw.settings
        authorize(access, settings.auth.keys, presented_key(headers), what, read_only=settings.read_only)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A WebSocket's handshake passes the checks a request passes (its route's declaration, Host and Origin, the
        API key) and takes a place of limits.max_streams for the socket's life; a refusal is an HTTP answer in the
        error envelope (403, 421, 401, 429), sent before the handshake completes."""
        t0, status, close_code = time.perf_counter(), 500, None
        headers = _headers(scope)
        rid = choose_request_id(headers.get(HEADER))
        token = request_id.set(rid)
        template = self._template(scope)

        async def measured(message: Message) -> None:
            nonlocal status, close_code
            if message["type"] == "websocket.accept":
                status = 101
                message = {**message, "headers": [*message.get("headers", []), (HEADER.encode(), rid.encode())]}
            elif message["type"] == "websocket.http.response.start":
                status = message["status"]
                secured = self.browser.secured(message.get("headers", []), None)
                message = {**message, "headers": [*secured, (HEADER.encode(), rid.encode())]}
            elif message["type"] == "websocket.close":
                close_code = message.get("code", 1000)
            await send(message)

        place = contextlib.ExitStack()
        try:
            access = by_route("WS", template) if template else UNDECLARED
            try:
                self._check("WS", headers, access, f"WebSocket {template or scope['path'][:256]}")
                if access.stream:
                    place.enter_context(self.gw.streams.admitted())
            except ServiceError as e:
                code, refusal, body = http_answer(e)
                await measured({"type": "websocket.http.response.start", "status": code, "headers": refusal})
                await measured({"type": "websocket.http.response.body", "body": body})
                return
            with place:
                await self.app(scope, receive, measured)
        finally:
            self._account("ws", scope, template, status, time.perf_counter() - t0, headers, close_code=close_code)
            request_id.reset(token)

    async def _admit(self, scope: Scope, receive: Receive, send: Send, template: str, headers: dict[str, str]) -> None:
        access = by_route(scope["method"], template)
        limits = self.gw.limits
        cap = body_cap(access.body, limits)
        token = set_deadline(limits.request_timeout_s)  # the request's clock starts now, before its body
        body = _Body(self, cap, limits.body_idle_s, limits.request_timeout_s)
        admission = contextlib.ExitStack()
        try:
            try:
                self._check(scope["method"], headers, access, f"{scope['method']} {template}")
                declared = headers.get("content-length", "")
                if declared.isdigit() and int(declared) > cap:
                    raise TooLarge(f"request body of {int(declared)} bytes; the limit here is {cap}")
                if not await body.read(receive):
                    return  # the client went away
                if access.gate:
                    admission.enter_context(self.gw.gates[access.gate].admitted())
            except ServiceError as e:
                if _worth_draining(e, headers, cap):
                    await body.drain(receive)
                await _answer(send, e)
                return
            with admission:
                await self._serve(scope, body.replay(receive), send)
        finally:
            body.release()
            reset_deadline(token)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The route, with a catch-all: whatever escapes it is answered in the error envelope (504 for a timeout),
        never as a plain-text 500."""
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as e:
            if started:
                raise
            await _answer(send, unexpected(e, log, f"{scope['method']} {scope['path']}"))


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}


def body_cap(kind: str | None, limits) -> int:
    """The most bytes a request body of this kind may hold (413 past it)."""
    if kind == "audio":
        return limits.max_upload_bytes
    if kind == "audio_json":  # base64 audio inside JSON: 4 bytes per 3, plus the rest of the document
        return limits.max_upload_bytes * 4 // 3 + limits.max_json_bytes
    return limits.max_json_bytes


def _worth_draining(e: ServiceError, headers: dict[str, str], cap: int) -> bool:
    """Whether to read what the client still sends before refusing it: not past the cap or a stall (it would not
    end), nor for a client that waits for 100 Continue (it sends no body unless asked)."""
    declared = headers.get("content-length", "")
    return (
        not isinstance(e, (TooLarge, RequestTimeout))
        and headers.get("expect", "").lower() != "100-continue"
        and (not declared.isdigit() or int(declared) <= cap)
    )


class _Body:
    """A request body read in full before admission, counted against limits.max_body_bytes_in_flight, then handed
    to the app as it came."""

    def __init__(self, door: FrontDoor, cap: int, idle_s: float, deadline_s: float):
        self.door, self.cap, self.idle_s, self.deadline_s = door, cap, idle_s, deadline_s
        self.ends_at = time.monotonic() + deadline_s
        self.chunks: deque[bytes] = deque()
        self.seen = self.held = 0
        self.done = self.gone = False

    async def _next(self, receive: Receive) -> Message:
        """The next message, or RequestTimeout (408) after idle_s of silence or at the request's deadline."""
        left = self.ends_at - time.monotonic()
        try:
            return await asyncio.wait_for(receive(), max(0.0, min(self.idle_s, left)))
        except TimeoutError:
            if self.idle_s < left:
                raise RequestTimeout(f"no part of the request body arrived for {self.idle_s:g} s") from None
            raise RequestTimeout(
                f"the request body was not in within the request's deadline "
                f"(limits.request_timeout_s, {self.deadline_s:g} s)"
            ) from None

    async def read(self, receive: Receive) -> bool:
        """Read the whole body; False when the client disconnected instead."""
        while not self.done:
            message = await self._next(receive)
            if message["type"] != "http.request":
                self.gone = True
                return False
            chunk = message.get("body", b"")
            self.seen += len(chunk)
            self.done = not message.get("more_body", False)
            if self.seen > self.cap:
                raise TooLarge(f"request body over {self.cap} bytes, the limit here")
            self._hold(chunk)
        return True

    def _hold(self, chunk: bytes) -> None:
        budget = self.door.gw.limits.max_body_bytes_in_flight
        if self.door.body_bytes_held + len(chunk) > budget:
            raise Overloaded(
                f"request bodies of {self.door.body_bytes_held} bytes are being served (the limit is "
                f"{budget}); retry shortly",
                retry_after_s=1.0,
            )
        self.door.body_bytes_held += len(chunk)
        self.held += len(chunk)
        self.chunks.append(chunk)

    async def drain(self, receive: Receive) -> None:
        """Before a refusal: read and drop the rest of the body (up to the cap, within the deadline), so the close
        that follows the answer is clean (closing on unread bytes makes the kernel reset the connection, and a
        client still sending then loses the answer)."""
        self.release()
        try:
            while not (self.done or self.gone) and self.seen <= self.cap:
                message = await self._next(receive)
                self.gone = message["type"] != "http.request"
                self.seen += len(message.get("body", b""))
                self.done = not message.get("more_body", False)
        except RequestTimeout:
            pass

    def replay(self, receive: Receive) -> Receive:
        async def replayed() -> Message:
            if self.chunks:  # handed on and dropped here one by one: the app's copy is the only one left
                chunk = self.chunks.popleft()
                return {"type": "http.request", "body": chunk, "more_body": bool(self.chunks)}
            return await receive()  # after the body: the disconnect, with no time limit

        return replayed

    def release(self) -> None:
        self.door.body_bytes_held -= self.held
        self.held = 0
        self.chunks.clear()


async def _answer(send: Send, e: ServiceError) -> None:
    status, headers, body = http_answer(e, close=True)  # the body may be unread: the connection ends here
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
