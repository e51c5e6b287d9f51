"""Issue 12.6: sockets that send their headers or body slowly are cut off (DESIGN §10).

Real sockets against uvicorn with Keel's protocol and short limits; the only time bound
asserted is a generous "closed before this", never a duration."""

from __future__ import annotations

import contextlib
import json
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from app.main import create_app
from app.server import http_protocol
from app.settings import Settings
from tests.fakes.servers import free_port

pytestmark = pytest.mark.slow

LIMIT_S = 0.5
BOUND_S = 30.0  # generous: the machine is busy; the old code never closes at all


@contextlib.contextmanager
def _serving(app: FastAPI, implementation: str) -> Iterator[int]:
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=2,
        http=http_protocol(LIMIT_S, LIMIT_S, implementation=implementation),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive(), "server thread died"
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.01)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _until_all_closed(
    socks: list[socket.socket], trickle: Callable[[socket.socket], None] | None = None
) -> dict[socket.socket, bytes]:
    """Read every socket until the server closes it (bounded); return what each received."""
    received = dict.fromkeys(socks, b"")
    open_ = set(socks)
    deadline = time.monotonic() + BOUND_S
    next_trickle = 0.0
    while open_ and time.monotonic() < deadline:
        if trickle is not None and time.monotonic() >= next_trickle:
            next_trickle = time.monotonic() + 0.1  # a byte per socket every 0.1 s, no faster
            for s in list(open_):
                with contextlib.suppress(OSError):
                    trickle(s)
        readable, _, _ = select.select(list(open_), [], [], 0.1)
        for s in readable:
            try:
                chunk = s.recv(65536)
            except OSError:
                chunk = b""
            if chunk:
                received[s] += chunk
            else:
                open_.discard(s)
    assert not open_, f"{len(open_)} of {len(socks)} slow sockets still open after {BOUND_S} s"
    return received


def _problem(raw: bytes) -> dict[str, object]:
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), head
    assert b"application/problem+json" in head
    problem: dict[str, object] = json.loads(body)
    return problem


@pytest.mark.parametrize("implementation", ["auto", "h11"])
def test_slow_headers_are_cut_off(
    make_settings: Callable[..., Settings], implementation: str
) -> None:
    app = create_app(make_settings())
    with _serving(app, implementation) as port:
        socks = []
        for _ in range(60):
            s = socket.create_connection(("127.0.0.1", port), timeout=BOUND_S)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
            socks.append(s)
        idle = socket.create_connection(("127.0.0.1", port), timeout=BOUND_S)  # sends nothing
        try:
            # A header byte at a time, forever: only the deadline ends these requests.
            def trickle(s: socket.socket) -> None:
                if s is not idle:
                    s.sendall(b"x")

            received = _until_all_closed([*socks, idle], trickle=trickle)
            # Meanwhile the server kept serving well-behaved clients.
            assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=BOUND_S).is_success
        finally:
            for s in [*socks, idle]:
                s.close()
    answered = [raw for raw in received.values() if raw]
    assert answered, "no slow socket got a 408"
    for raw in answered:
        assert _problem(raw)["code"] == "request_timeout"


@pytest.mark.parametrize("implementation", ["auto", "h11"])
def test_a_body_that_stops_arriving_is_cut_off(
    make_settings: Callable[..., Settings], implementation: str
) -> None:
    app = create_app(make_settings())
    with _serving(app, implementation) as port:
        s = socket.create_connection(("127.0.0.1", port), timeout=BOUND_S)
        try:
            s.sendall(
                b"POST /v1/conversations HTTP/1.1\r\nHost: localhost\r\n"
                b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"ti'
            )
            received = _until_all_closed([s])
        finally:
            s.close()
        assert _problem(received[s])["code"] == "request_timeout"
        # Nothing was created from the partial body; a keep-alive client is still served.
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=BOUND_S) as client:
            assert client.get("/v1/conversations").json()["data"] == []
            assert client.get("/healthz").is_success
            assert client.get("/healthz").is_success


@pytest.mark.parametrize("implementation", ["auto", "h11"])
def test_slow_headers_on_a_kept_alive_connection(
    make_settings: Callable[..., Settings], implementation: str
) -> None:
    app = create_app(make_settings())
    with _serving(app, implementation) as port:
        s = socket.create_connection(("127.0.0.1", port), timeout=BOUND_S)
        try:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            first = b""
            while b'"ok"' not in first:
                chunk = s.recv(65536)
                assert chunk, "closed before answering"
                first += chunk
            assert first.startswith(b"HTTP/1.1 200")
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
            received = _until_all_closed([s], trickle=lambda sock: sock.sendall(b"x"))
        finally:
            s.close()
    assert _problem(received[s])["code"] == "request_timeout"


def test_keel_serve_installs_the_deadlines(monkeypatch: pytest.MonkeyPatch) -> None:
    from app.cli import main
    from app.server import RequestDeadlines

    seen: dict[str, object] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: seen.update(kwargs))
    monkeypatch.setenv("KEEL_HEADER_TIMEOUT_S", "3")
    monkeypatch.setenv("KEEL_BODY_TIMEOUT_S", "7")
    assert main(["serve"]) == 0
    protocol = seen["http"]
    assert isinstance(protocol, type)
    assert issubclass(protocol, RequestDeadlines)
    assert (protocol.header_timeout_s, protocol.body_timeout_s) == (3.0, 7.0)
