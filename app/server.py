"""uvicorn's HTTP protocol with deadlines for receiving a request (DESIGN §10, slow clients).

uvicorn bounds the idle time between requests (``timeout_keep_alive``) and the size of a head
(h11's incomplete-event limit), but nothing bounds how long a client may take to send its
headers or its body: one byte every few seconds holds a socket, a task and a buffer forever,
and a few hundred such sockets exhaust the process. No ASGI middleware can see this (the app
is called only once the headers are complete), so the deadline lives in the protocol:

- from the connection (or the first byte of a later keep-alive request) to the end of the
  headers: ``header_timeout_s``;
- from the end of the headers to the end of the body: ``body_timeout_s``.

When one expires before a response has started, the client gets a 408 ``request_timeout``
problem; either way the connection is closed (the app, if running, sees a disconnect).
The mixin touches only what both uvicorn protocols share: ``cycle`` (the request being read,
with ``more_body`` and ``response_started``), ``transport`` and ``loop``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from app.errors import RequestTimeout

_HEADERS, _BODY = "headers", "body"


def _timeout_response() -> bytes:
    problem = RequestTimeout("The request did not arrive in time; the connection is closed.")
    body = json.dumps(problem.problem(None), separators=(",", ":")).encode()
    head = (
        b"HTTP/1.1 408 Request Timeout\r\n"
        b"content-type: application/problem+json\r\n"
        b"connection: close\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    return head + body


_TIMEOUT_RESPONSE = _timeout_response()


class RequestDeadlines:
    """Mixin placed before a uvicorn HTTP protocol class in the bases."""

    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    # Provided by the uvicorn protocol this is mixed into.
    cycle: Any
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop

    _deadline: asyncio.TimerHandle | None = None
    _phase: str | None = None
    _seen: Any = None

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._arm(_HEADERS)

    def data_received(self, data: bytes) -> None:
        # The first bytes of the next request on a kept-alive connection: usually the whole
        # request, and then no timer is armed at all (a timer per request is measurable).
        starting = self._phase is None and (self.cycle is None or self.cycle.response_complete)
        super().data_received(data)  # type: ignore[misc]
        if starting and self.cycle is self._seen:
            self._arm(_HEADERS)  # the headers are not complete yet
        self._advance()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        self._advance()  # a pipelined request may have started

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)  # type: ignore[misc]

    def _advance(self) -> None:
        cycle = self.cycle
        if cycle is None:
            return
        if cycle is not self._seen:  # the headers of a new request are complete
            self._seen = cycle
            if cycle.more_body:
                self._arm(_BODY)
            else:
                self._disarm()
        elif self._phase == _BODY and not cycle.more_body:
            self._disarm()

    def _arm(self, phase: str) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        delay = self.header_timeout_s if phase == _HEADERS else self.body_timeout_s
        self._phase = phase
        self._deadline = self.loop.call_later(delay, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = None
        self._phase = None

    def _expired(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        answered = self._phase == _BODY and cycle is not None and cycle.response_started
        if not answered:
            self.transport.write(_TIMEOUT_RESPONSE)
        self._phase = None
        self.transport.close()


def http_protocol(
    header_timeout_s: float, body_timeout_s: float, *, implementation: str = "auto"
) -> type[asyncio.Protocol]:
    """uvicorn's protocol with deadlines: ``auto`` is uvicorn's own choice (httptools when
    installed, else h11)."""
    base: type[asyncio.Protocol]
    if implementation == "h11":
        from uvicorn.protocols.http.h11_impl import H11Protocol

        base = H11Protocol
    else:
        from uvicorn.protocols.http.auto import AutoHTTPProtocol

        base = AutoHTTPProtocol
    attrs = {"header_timeout_s": header_timeout_s, "body_timeout_s": body_timeout_s}
    return type(f"Keel{base.__name__}", (RequestDeadlines, base), attrs)
