"""uvicorn's h11 protocol with the limits a public HTTP server needs before any request reaches the app.

- The request line and headers must arrive within limits.header_timeout_s of the connection (on a kept-alive
  one: of the request's first byte; idle kept-alive connections are uvicorn's keep-alive timeout's): a client that
  trickles partial headers (slowloris) gets 408 and the connection is closed.
- A request line longer than limits.max_header_bytes answers 414, a header block larger than that 431 (h11 alone
  would answer a bare 400, and a client still sending a 1 MB URL would see the connection reset).

A refusal is written, the sending side shut (FIN), and what the client still sends is read and dropped for a
moment, so the client reads the answer instead of a reset. Stalled bodies are the ASGI layer's job
(server/blat_gateway/front_door.py: limits.body_idle_s between chunks).
"""

from __future__ import annotations

from http import HTTPStatus

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from blat_gateway.browser import PAGE_CSP, SECURITY_HEADERS
from blat_gateway.errors import HeadersTooLarge, RequestTimeout, ServiceError, UriTooLong, http_answer

DRAIN_S = 2.0  # after a refusal, how long what the client still sends is read and dropped
# The headers every answer carries (server/blat_gateway/browser.py), these refusals included.
SECURED = (
    "".join(f"{k.decode()}: {v.decode()}\r\n" for k, v in SECURITY_HEADERS) + f"content-security-policy: {PAGE_CSP}\r\n"
)


def guarded_protocol(max_header_bytes: int, header_timeout_s: float) -> type[H11Protocol]:
    """An H11Protocol class with these limits (uvicorn instantiates the class it is given per connection)."""

    class GuardedH11Protocol(H11Protocol):
        def __init__(self, config, *args, **kwargs):
            config.h11_max_incomplete_event_size = max_header_bytes + 1  # ours answer first, with 414 / 431
            super().__init__(config, *args, **kwargs)
            self._header_timer = None
            self._refused = False

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def _arm(self) -> None:
            self._disarm()
            self._header_timer = self.loop.call_later(header_timeout_s, self._headers_too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self._refuse(
                    RequestTimeout(f"the request line and headers did not arrive within {header_timeout_s:g} s")
                )

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return  # drained: the answer is already on its way
            if self.conn.their_state is h11.IDLE:
                if self._header_timer is None:  # a new request on a kept-alive connection: its headers' clock
                    self._arm()
                pending = self.conn.trailing_data[0] + data
                if len(pending) > max_header_bytes and b"\r\n\r\n" not in pending[: max_header_bytes + 4]:
                    if b"\r\n" not in pending[:max_header_bytes]:
                        self._refuse(UriTooLong(f"request line over {max_header_bytes} bytes"))
                    else:
                        self._refuse(HeadersTooLarge(f"request headers over {max_header_bytes} bytes"))
                    return
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:
                self._disarm()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _refuse(self, error: ServiceError) -> None:
            self._refused = True
            self._disarm()
            self._unset_keepalive_if_required()
            status, headers, body = http_answer(error, close=True)
            head = "".join(f"{k.decode()}: {v.decode()}\r\n" for k, v in headers)
            reason = HTTPStatus(status).phrase
            self.transport.write(f"HTTP/1.1 {status} {reason}\r\n{head}{SECURED}\r\n".encode() + body)
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self.loop.call_later(DRAIN_S, self.transport.close)

    return GuardedH11Protocol
