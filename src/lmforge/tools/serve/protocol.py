"""The HTTP/1.1 connection under uvicorn, with the two limits uvicorn lacks: a header deadline and a
connection cap answered in the server's JSON error shape.

uvicorn closes an idle kept-alive connection after ``timeout_keep_alive`` and caps header size
(``h11_max_incomplete_event_size``; larger headers get 400), but it waits forever for the headers of
a request: a client that opens a connection and sends nothing, or a few header bytes now and then,
holds it open for good. Here a request's line and headers must all arrive within
``Limits.header_timeout_s``, counted from the connection's opening (or, on a kept-alive connection,
from the first byte of the next request; the wait between requests is the keep-alive timeout's).
Past it the client gets ``408`` and the connection is closed. It is a deadline, not an idle timer, so
dripping one byte a second does not extend it. Once the headers are in, ``Limits.timeout_s`` counts
(body upload included; see :class:`lmforge.tools.serve.limits.Guard`).

A connection opened while ``Limits.max_connections`` are open already is answered ``503 overloaded``
to its first request and closed (uvicorn's own ``limit_concurrency`` answers in plain text).
"""

from __future__ import annotations

import json

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from lmforge.tools.serve.limits import Limits, error_body, send_json

MAX_HEADER_BYTES = 16 * 1024  # request line + headers; h11 answers 400 above this
_PIECE = 4096


def _raw_json_response(status: int, reason: str, body: dict) -> bytes:
    data = json.dumps(body).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(data)}\r\n"
            "connection: close\r\n\r\n")
    return head.encode() + data


class LimitedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol plus the header deadline and the connection cap (class attributes)."""

    header_timeout_s: float = Limits.header_timeout_s
    max_connections: int = Limits.max_connections

    def connection_made(self, transport) -> None:
        self._header_timer = None
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:  # this one included
            self.app = _busy_app(len(self.connections) - 1, self.max_connections)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE:  # bytes of a request whose headers are not complete yet
            self._arm()
        # h11 caps the headers only while they are incomplete: fed in pieces, headers that came in one
        # large read (up to 256 KiB) are capped too (400 past MAX_HEADER_BYTES + one piece)
        while len(data) > _PIECE and self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            super().data_received(data[:_PIECE])
            data = data[_PIECE:]
        if data and not self.transport.is_closing():
            super().data_received(data)

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:  # the headers are in (or the connection failed)
            self._disarm()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_deadline)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_deadline(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        body = error_body(408, f"request headers not received within {self.header_timeout_s:g} s", "timeout")
        self.transport.write(_raw_json_response(408, "Request Timeout", body))
        self.transport.close()


def _busy_app(open_connections: int, limit: int):
    body = error_body(503, f"server busy: {open_connections} connections open (limit {limit}); retry later",
                      "overloaded")

    async def busy(scope, receive, send):
        await send_json(send, 503, body, [(b"retry-after", b"1"), (b"connection", b"close")])

    return busy


def protocol_class(limits: Limits) -> type[LimitedH11Protocol]:
    """A protocol class carrying ``limits``' header deadline and connection cap."""
    return type("LmforgeH11Protocol", (LimitedH11Protocol,),
                {"header_timeout_s": limits.header_timeout_s, "max_connections": limits.max_connections})


def server_config(app, **kwargs) -> uvicorn.Config:
    """uvicorn's config for an app made by :func:`lmforge.tools.serve.app.create_app`, with its ``Limits``:
    the header deadline and connection cap above, the keep-alive timeout and the header size cap."""
    limits: Limits = app.state.limits
    return uvicorn.Config(app, http=protocol_class(limits), timeout_keep_alive=limits.keep_alive_s,
                          h11_max_incomplete_event_size=MAX_HEADER_BYTES, **kwargs)
