"""The ASGI layer in front of the REST routes: what every request passes before any of its body is read.

In order: find the route and its entry in server/access.py; check the API key (401/403); refuse a declared body
size over the cap (413: limits.max_upload_bytes for audio uploads, limits.max_json_bytes for JSON) and count the
bytes of a body that declares none; admit the request through its model input's gate (429 with Retry-After) and
start its deadline. It also times every request for /metrics. FastAPI parses a JSON body before it runs a route's
dependencies, so none of this could live in dependencies: a 200 MiB body would be read in full before its 401.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import time

from starlette.routing import Match, Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.access import authorize, presented_key, rest_access
from server.errors import Overloaded, RequestTimeout, ServiceError, TooLarge
from server.service import Gateway


class FrontDoor:
    def __init__(self, app: ASGIApp, gateway: Gateway, router: Router):
        self.app, self.gw, self.router = app, gateway, router

    def _template(self, scope: Scope) -> str | None:
        for route in self.router.routes:
            match, _ = route.matches(scope)
            if match == Match.FULL:
                return route.path
        return None

    async def _options(self, scope: Scope, send: Send) -> None:
        """OPTIONS: every method any route at this path takes (FastAPI has one route per method, and Starlette's 405
        would list only the first one's)."""
        methods: set[str] = set()
        for route in self.router.routes:
            match, _ = route.matches({**scope, "method": "GET"})
            if match != Match.NONE and getattr(route, "methods", None):
                methods.update(route.methods)
        status = 204 if methods else 404
        headers = [(b"allow", ", ".join(sorted(methods | {"OPTIONS"})).encode())] if methods else []
        await send({"type": "http.response.start", "status": status, "headers": headers + [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # Every request is measured here, refusals included: a plain ASGI wrapper around `send` costs a function call,
        # where Starlette's BaseHTTPMiddleware ran each request in a task of its own with memory streams.
        t0, status, template = time.perf_counter(), 500, None

        async def measured(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if scope["method"] == "OPTIONS":
                await self._options(scope, measured)
                return
            template = self._template(scope)
            if template is None:  # no such route, or a method it does not take: Starlette answers 404 / 405
                await self.app(scope, receive, measured)
                return
            await self._admit(scope, receive, measured, template)
        finally:
            self.gw.metrics.observe("rest", template or "unmatched", status, time.perf_counter() - t0)

    async def _admit(self, scope: Scope, receive: Receive, send: Send, template: str) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        access = rest_access(scope["method"], template)
        limits = self.gw.limits
        admission = contextlib.ExitStack()
        try:
            authorize(access, self.gw.settings.auth.keys, presented_key(headers), f"{scope['method']} {template}",
                      read_only=self.gw.settings.read_only)
            cap = limits.max_upload_bytes if access.body == "audio" else limits.max_json_bytes
            declared = headers.get("content-length", "")
            if declared.isdigit() and int(declared) > cap:
                raise TooLarge(f"request body of {int(declared)} bytes; the limit here is {cap}")
            admission.enter_context(self.gw.admitted(access.gate))
        except ServiceError as e:
            await _answer(send, e)
            return
        with admission:
            await self.app(scope, _capped(receive, cap, limits.body_idle_s), send)


def _capped(receive: Receive, cap: int, idle_s: float) -> Receive:
    """`receive` that raises TooLarge (413, through the app's error handler) once the body passes `cap` bytes, and
    RequestTimeout (408) when no part of it arrives for `idle_s` (a stalled body must not hold a request open)."""
    seen, body_done = 0, False

    async def wrapped() -> Message:
        nonlocal seen, body_done
        if body_done:  # after the body, receive() waits for the disconnect: no time limit on that
            return await receive()
        try:
            message = await asyncio.wait_for(receive(), idle_s)
        except asyncio.TimeoutError:
            raise RequestTimeout(f"no part of the request body arrived for {idle_s:g} s") from None
        if message["type"] == "http.request":
            body_done = not message.get("more_body", False)
            seen += len(message.get("body", b""))
            if seen > cap:
                raise TooLarge(f"request body over {cap} bytes, the limit here")
        return message

    return wrapped


async def _answer(send: Send, e: ServiceError) -> None:
    body = json.dumps(e.to_json()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close")]  # the unread body is not drained: the connection ends with this answer
    if isinstance(e, Overloaded):
        headers.append((b"retry-after", str(max(1, round(e.retry_after_s))).encode()))
    await send({"type": "http.response.start", "status": e.http_status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
