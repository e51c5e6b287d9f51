"""A fake OpenAI-compatible upstream on a raw asyncio socket, with injectable faults.

Raw sockets rather than an ASGI app, because the faults we need live below HTTP: a reset before
any response, a stream that stops mid-body, and noticing the instant a client hangs up.
Every error body carries ``MARKER`` so tests can prove Keel never forwards upstream text.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

MARKER = "UPSTREAM-SECRET-MARKER-7f3a"
HANG_S = 60.0  # a "hung" request is held this long at most, or until the client hangs up


@dataclass
class Faults:
    error_rate: float = 0.0  # probability of answering error_status
    error_status: int = 503
    statuses: deque[int] = field(default_factory=deque)  # forced statuses, consumed in order
    retry_after: str | None = None  # sent with 429/503
    latency_s: float = 0.0  # before the response starts
    reset_rate: float = 0.0  # probability of closing the socket without answering
    drop_after_chunks: int | None = None  # stream: abort the connection after N chunks
    chunk_delay_s: float = 0.0  # stream: gap between chunks
    chunks: int = 3  # stream: content chunks before [DONE]
    down: bool = False  # every request gets error_status, GET /models included
    hang_rate: float = 0.0  # probability of never answering (until the client hangs up)
    drop_rate: float = 0.0  # stream: probability of aborting after the first chunk
    error_param: str | None = None  # the ``error.param`` an error body names
    ok_body: bytes | None = None  # a 200 (not streamed) answers these bytes instead
    stream_error_at: int | None = None  # stream: report an error in-band before chunk N
    stream_error_style: str = "event"  # "event": an ``event: error``; "data": a data object
    role_chunk_first: bool = False  # stream: a role-only delta before the content, as OpenAI


@dataclass
class Seen:
    at: float
    path: str
    headers: dict[str, str]
    body: dict[str, Any] | None


class FakeUpstream:
    def __init__(self, seed: int = 1234, models: tuple[str, ...] = ("small", "large")) -> None:
        self.faults = Faults()
        self.models = models
        self.rng = random.Random(seed)
        self.requests: list[Seen] = []
        self.disconnects: list[float] = []  # monotonic times a client hung up mid-response
        self.completed = 0
        self.hangs = 0  # requests held without an answer (hang_rate)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> FakeUpstream:
        started = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            self._server = loop.run_until_complete(
                asyncio.start_server(self._handle, "127.0.0.1", 0, backlog=512)
            )
            self.port = self._server.sockets[0].getsockname()[1]
            started.set()
            loop.run_forever()
            # Handlers still holding a hung request: cancel them so none is left pending.
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.wait(pending))
            self._server.close()
            loop.run_until_complete(self._server.wait_closed())
            loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        started.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def calls(self) -> int:
        return sum(1 for r in self.requests if r.path.endswith("/chat/completions"))

    def calls_to(self, endpoint: str) -> int:
        return sum(1 for r in self.requests if r.path.endswith("/v1/" + endpoint))

    def reset(self) -> None:
        self.faults = Faults()
        self.requests.clear()
        self.disconnects.clear()

    # -- protocol --------------------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    return
                keep = await self._respond(request, reader, writer)
                if not keep:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _respond(
        self,
        req: tuple[str, str, dict[str, str], bytes],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        method, path, headers, raw = req
        body = json.loads(raw) if raw else None
        self.requests.append(Seen(time.monotonic(), path, headers, body))
        f = self.faults
        if path.endswith("/models") and method == "GET" and f.down:
            await _send(writer, f.error_status, b'{"error": {"message": "down"}}')
            return True
        if path.endswith("/models") and method == "GET":
            data = {
                "object": "list",
                "data": [
                    {"id": m, "object": "model", "created": 0, "owned_by": "fake"}
                    for m in self.models
                ],
            }
            await _send(writer, 200, json.dumps(data).encode())
            return True
        if f.reset_rate and self.rng.random() < f.reset_rate:
            writer.transport.abort()
            return False
        if f.hang_rate and self.rng.random() < f.hang_rate:
            self.hangs += 1
            if await _client_gone_within(reader, HANG_S):
                self.disconnects.append(time.monotonic())
            return False
        if f.latency_s and await _client_gone_within(reader, f.latency_s):
            self.disconnects.append(time.monotonic())
            return False
        status = 200
        if f.statuses:
            status = f.statuses.popleft()
        elif f.down or (f.error_rate and self.rng.random() < f.error_rate):
            status = f.error_status
        if status != 200:
            err = {
                "error": {
                    "message": f"{MARKER} internal stack at /srv/upstream.py",
                    "type": "server_error",
                    "code": status,
                    "param": f.error_param,
                }
            }
            extra = {"Retry-After": f.retry_after} if f.retry_after and status in (429, 503) else {}
            await _send(writer, status, json.dumps(err).encode(), extra)
            return True
        assert isinstance(body, dict)
        if path.endswith("/embeddings"):
            await _send(writer, 200, json.dumps(_embeddings(body)).encode())
            self.completed += 1
            return True
        if body.get("stream"):
            return await self._stream(body, reader, writer)
        if path.endswith("/v1/completions"):  # the legacy text completion
            await _send(writer, 200, json.dumps(_text_completion(body)).encode())
            self.completed += 1
            return True
        if f.ok_body is not None:
            await _send(writer, 200, f.ok_body)
            return True
        content = _answer(body)
        payload = {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": 1700000000,
            "model": body.get("model"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
        }
        await _send(writer, 200, json.dumps(payload).encode())
        self.completed += 1
        return True

    async def _stream(
        self, body: dict[str, Any], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        f = self.faults
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        words = _answer(body).split(" ")
        pieces = [w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words)]
        pieces = (pieces * f.chunks)[: max(f.chunks, 1)]
        drop_after = f.drop_after_chunks
        if f.role_chunk_first:
            role = {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}],
            }
            writer.write(_chunk(f"data: {json.dumps(role)}\n\n".encode()))
        if f.drop_rate and self.rng.random() < f.drop_rate:
            drop_after = 1
        for i, piece in enumerate(pieces):
            if drop_after is not None and i >= drop_after:
                writer.transport.abort()
                return False
            if f.stream_error_at == i:
                error = {"error": {"message": f"{MARKER} overloaded", "type": "server_error"}}
                head = b"event: error\n" if f.stream_error_style == "event" else b""
                writer.write(_chunk(head + f"data: {json.dumps(error)}\n\n".encode()))
                writer.write(b"0\r\n\r\n")
                await writer.drain()
                return True
            chunk = {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": 1700000000,
                "model": body.get("model"),
                "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}],
            }
            writer.write(_chunk(f"data: {json.dumps(chunk)}\n\n".encode()))
            try:
                await writer.drain()
            except ConnectionError:
                self.disconnects.append(time.monotonic())
                return False
            if f.chunk_delay_s and await _client_gone_within(reader, f.chunk_delay_s):
                self.disconnects.append(time.monotonic())
                return False
        final = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": body.get("model"),
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        }
        writer.write(_chunk(f"data: {json.dumps(final)}\n\n".encode()))
        writer.write(_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
        await writer.drain()
        self.completed += 1
        return True


def _answer(body: dict[str, Any]) -> str:
    messages = body.get("messages") or [{}]
    last = str(messages[-1].get("content", ""))
    return f"echo: {last}"


def _embeddings(body: dict[str, Any]) -> dict[str, Any]:
    inputs = body.get("input")
    items = (
        inputs
        if isinstance(inputs, list) and inputs and not isinstance(inputs[0], int)
        else [inputs]
    )
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": [float(len(str(x))), 0.5, -0.25]}
            for i, x in enumerate(items)
        ],
        "model": body.get("model"),
        "usage": {"prompt_tokens": len(items), "total_tokens": len(items)},
    }


def _text_completion(body: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "cmpl-fake",
        "object": "text_completion",
        "created": 1700000000,
        "model": body.get("model"),
        "choices": [{"index": 0, "text": f"echo: {body.get('prompt')}", "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
    }


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


async def _client_gone_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    """Wait ``seconds`` unless the client closes first; True when it closed."""
    try:
        data = await asyncio.wait_for(reader.read(1), seconds)
    except TimeoutError:
        return False
    return data == b""


async def _send(
    writer: asyncio.StreamWriter, status: int, body: bytes, headers: dict[str, str] | None = None
) -> None:
    reason = {
        200: "OK",
        400: "Bad Request",
        401: "Unauthorized",
        404: "Not Found",
        408: "Request Timeout",
        429: "Too Many Requests",
        500: "Internal Server Error",
        502: "Bad Gateway",
        503: "Service Unavailable",
        504: "Gateway Timeout",
    }.get(status, "Status")
    head = [
        f"HTTP/1.1 {status} {reason}",
        "content-type: application/json",
        f"content-length: {len(body)}",
    ]
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
    await writer.drain()


async def _read_request(
    reader: asyncio.StreamReader,
) -> tuple[str, str, dict[str, str], bytes] | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    length = int(headers.get("content-length", "0"))
    body = await reader.readexactly(length) if length else b""
    return method, path, headers, body
