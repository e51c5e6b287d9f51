"""Any OpenAI-compatible HTTP endpoint (OpenAI, vLLM, Ollama's /v1, ...) as a Provider.

One long-lived client per provider (a ``Wire``: aiohttp by default, httpx on request or when a
transport is injected), with explicit timeouts and connection limits. Transport errors and
upstream statuses become ``UpstreamFailure`` so the resilience kit can decide; the upstream's
error body is read, truncated for the log and never forwarded. The API key is read from the
named environment variable when the client is built and lives only in its default headers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import httpx
import orjson

from app.providers.base import Completion
from app.providers.upstream_checks import (
    capped_retry_after,
    completion_failure,
    stream_event_failure,
)
from app.providers.wire import Timeouts, Wire, WireError, WireReason, WireResponse
from app.providers.wire_aiohttp import AiohttpWire
from app.providers.wire_httpx import HttpxWire
from app.resilience.backoff import parse_retry_after
from app.resilience.deadline import Deadline
from app.resilience.failures import UpstreamFailure
from app.settings import ProviderSettings

log = logging.getLogger("keel.providers.http")

_MAX_ERROR_LOG = 300
# The only piece of an upstream error body Keel passes on: the name of the field it blamed.
_PARAM = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\[\]-]{0,63}$")
_DONE = b"data: [DONE]"
_JSON = {"Content-Type": "application/json"}
_JSON_SSE = {"Content-Type": "application/json", "Accept": "text/event-stream"}
_NO_HEADERS: dict[str, str] = {}


class OpenAIHTTPProvider:
    def __init__(
        self,
        name: str,
        settings: ProviderSettings,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        max_retry_after_s: float = 60.0,
    ) -> None:
        self.name = name
        self.settings = settings
        # A provider's Retry-After is copied to clients and honoured by backoff: Keel's own
        # limit (``resilience.max_throttle_s``) bounds it first.
        self.max_retry_after_s = max_retry_after_s
        headers = {"Accept-Encoding": "identity"}
        key = settings.api_key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        elif settings.api_key_env:
            # Not fatal: a local endpoint may not need it. /v1/readiness names it as well.
            log.warning(
                "provider %s: environment variable %s is not set; calls go without a key",
                name,
                settings.api_key_env,
                extra={"provider": name, "env": settings.api_key_env},
            )
        self._full_timeouts = Timeouts(settings.connect_timeout_s, settings.timeout_s, None)
        self._full_timeouts_after = max(settings.connect_timeout_s, settings.timeout_s or 0.0)
        self._wire: Wire
        if transport is None and settings.http_transport == "aiohttp":
            self._wire = AiohttpWire(
                settings.base_url, headers, max_connections=settings.max_concurrency + 1
            )
        else:
            self._wire = HttpxWire(
                settings.base_url,
                headers,
                max_connections=settings.max_concurrency + 1,
                transport=transport,
            )

    def model_names(self) -> list[str]:
        return list(self.settings.models)

    async def aclose(self) -> None:
        await self._wire.aclose()

    def complete(
        self, body: dict[str, Any], model: str, deadline: Deadline
    ) -> Coroutine[Any, Any, Completion]:
        # The relay's own coroutine, not awaited here: one await level less on the hot path.
        return self.relay("chat/completions", {**body, "stream": False}, model, deadline)

    async def relay(
        self, path: str, body: dict[str, Any], model: str, deadline: Deadline
    ) -> Completion:
        payload = _encode({**body, "model": model})
        try:
            resp = await self._wire.send("POST", path, payload, _JSON, self._timeouts(deadline))
            content = await resp.read()
        except WireError as exc:
            raise _transport_failure(exc.reason, self.name) from exc
        if resp.status != 200:
            raise self._status_failure(resp, content)
        failure = completion_failure(
            content, "data" if path.rstrip("/").endswith("embeddings") else "choices"
        )
        if failure is not None:
            log.warning(
                "upstream answered 200 without the expected answer",
                extra={"provider": self.name, "reason": failure.reason},
            )
            raise failure
        return Completion(content, "application/json")

    async def open_stream(
        self, body: dict[str, Any], model: str, deadline: Deadline
    ) -> HTTPChatStream:
        return await self.open_relay_stream("chat/completions", body, model, deadline)

    async def open_relay_stream(
        self, path: str, body: dict[str, Any], model: str, deadline: Deadline
    ) -> HTTPChatStream:
        payload = _encode({**body, "model": model, "stream": True})
        try:
            resp = await self._wire.send("POST", path, payload, _JSON_SSE, self._timeouts(deadline))
        except WireError as exc:
            raise _transport_failure(exc.reason, self.name) from exc
        if resp.status != 200:
            try:
                content = await resp.read()
            except WireError:
                content = b""
            raise self._status_failure(resp, content)
        return HTTPChatStream(resp, self.name)

    async def probe(self, deadline: Deadline) -> None:
        """``GET models``, the cheap request that tells an open breaker the server is back.

        Any answer but a 5xx, 408 or 429 counts: a 401 or 404 still proves the server is up,
        and whether chat works is what the half-open trial call finds out.
        """
        try:
            resp = await self._wire.send(
                "GET", "models", None, _NO_HEADERS, self._timeouts(deadline)
            )
            await resp.read()
        except WireError as exc:
            raise _transport_failure(exc.reason, self.name) from exc
        if resp.status >= 500 or resp.status in (408, 429):
            raise UpstreamFailure(status_code=resp.status)

    def _timeouts(self, deadline: Deadline) -> Timeouts:
        """Connecting keeps its own cap (a refused or silent host fails fast, as ``connect``),
        reading its own only when ``timeout_s`` asks for one; the deadline bounds the rest.
        The pool never waits for long: Keel's limiter admits at most ``max_concurrency``
        calls, and the pool holds one connection more (for a probe)."""
        left = max(deadline.remaining(), 0.001)
        s = self.settings
        if left >= self._full_timeouts_after:
            return self._full_timeouts  # the usual case: one object, and the wire reuses its own
        return Timeouts(
            connect=min(s.connect_timeout_s, left),
            read=min(s.timeout_s, left) if s.timeout_s else None,
            pool=None,
        )

    def _status_failure(self, resp: WireResponse, content: bytes) -> UpstreamFailure:
        header = resp.header("retry-after")
        retry_after = capped_retry_after(
            parse_retry_after(header, time.time()) if header else None, self.max_retry_after_s
        )
        log.warning(
            "upstream answered %d",
            resp.status,
            extra={
                "provider": self.name,
                "status": resp.status,
                "upstream_body": content[:_MAX_ERROR_LOG].decode("utf-8", "replace"),
            },
        )
        return UpstreamFailure(
            status_code=resp.status, retry_after=retry_after, param=_blamed_param(content)
        )


class HTTPChatStream:
    def __init__(self, resp: WireResponse, provider: str) -> None:
        self._resp = resp
        self._provider = provider

    async def events(self, idle_timeout_s: float) -> AsyncIterator[bytes]:
        buffer = b""
        saw_done = False
        relayed = False  # whether an event went out: an error after that is committed
        idle = IdleWatch(idle_timeout_s)
        try:
            while True:
                idle.begin()
                try:
                    chunk = await self._resp.next_chunk()
                except asyncio.CancelledError:
                    if idle.expired():
                        raise UpstreamFailure("stream_idle", committed=True) from None
                    raise
                except WireError as exc:
                    raise UpstreamFailure("stream_drop", committed=True) from exc
                finally:
                    idle.end()
                if not chunk:
                    break
                buffer += chunk.replace(b"\r\n", b"\n")
                if b"\n\n" not in buffer:
                    continue
                *events, buffer = buffer.split(b"\n\n")
                out: list[bytes] = []
                failure: UpstreamFailure | None = None
                for event in events:
                    if not event.strip():
                        continue
                    if event.startswith(_DONE):
                        saw_done = True
                    else:
                        failure = stream_event_failure(event, committed=relayed or bool(out))
                        if failure is not None:
                            log.warning(
                                "upstream reported an error in its stream",
                                extra={"provider": self._provider, "committed": failure.committed},
                            )
                            break
                    out.append(event)
                    out.append(b"\n\n")
                if out:
                    relayed = True
                    # What arrived together goes out together: one write to the client, not
                    # one per event (the bare relay writes whatever it read, too).
                    yield b"".join(out)
                if failure is not None:
                    raise failure
        finally:
            idle.close()
        if not saw_done:
            raise UpstreamFailure("stream_truncated", committed=True)

    async def aclose(self) -> None:
        await self._resp.aclose()


def _blamed_param(content: bytes) -> str | None:
    """``error.param`` of an OpenAI-style error body, if it is a plain field name."""
    if not content.startswith(b"{") or len(content) > 65536:
        return None
    try:
        error = json.loads(content).get("error")
    except (ValueError, AttributeError):
        return None
    param = error.get("param") if isinstance(error, dict) else None
    return param if isinstance(param, str) and _PARAM.match(param) else None


def _encode(body: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(body)  # a tenth of json.dumps' time on the hot path
    except orjson.JSONEncodeError:  # a lone surrogate: json writes it as an escape
        return json.dumps(body, separators=(",", ":")).encode()


def _transport_failure(reason: WireReason, provider: str) -> UpstreamFailure:
    log.info("upstream transport error", extra={"provider": provider, "reason": reason})
    return UpstreamFailure(reason)


class IdleWatch:
    """Cancels the task reading a stream when one wait for the upstream's next bytes lasts
    ``idle_s``; ``expired()`` then tells that cancellation from any other.

    One timer per idle period instead of an ``asyncio.timeout`` per chunk: a wait only notes
    when it began, and the timer, when it fires, either cancels the waiting task or re-arms
    for the current wait's own limit. Time spent away from the wait (the client being sent
    the previous event) does not count.
    """

    __slots__ = ("_fired", "_handle", "_idle", "_loop", "_since", "_task")

    def __init__(self, idle_s: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._idle = idle_s
        self._since: float | None = None
        self._task: asyncio.Task[Any] | None = None
        self._fired = False
        self._handle = self._loop.call_later(idle_s, self._check)

    def begin(self) -> None:
        self._since = self._loop.time()
        self._task = asyncio.current_task()  # the reader may change (peek, then relay)

    def end(self) -> None:
        self._since = None

    def expired(self) -> bool:
        """The cancellation being handled is this watch's (consumed: asked once)."""
        task = self._task
        if not self._fired or task is None:
            return False
        self._fired = False
        return task.uncancel() == 0  # else someone else cancelled as well: that one wins

    def close(self) -> None:
        self._handle.cancel()

    def _check(self) -> None:
        since = self._since
        now = self._loop.time()
        if since is not None and now - since >= self._idle and self._task is not None:
            self._fired = True
            self._task.cancel()
            return
        self._handle = self._loop.call_at(
            (since if since is not None else now) + self._idle, self._check
        )
