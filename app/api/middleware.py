"""The one ASGI middleware in front of every route.

It gives each request an id, applies the edge policy (``app/api/edge.py``: Host, Origin and
CORS, JSON bodies), enforces the bearer token on ``/v1/*`` and the body size limit,
turns unknown exceptions into a 500 problem (while nothing has been sent yet), records the HTTP
metrics under the route template, and writes one log line per request. A pure ASGI class
rather than ``BaseHTTPMiddleware`` so streaming responses pass through untouched.

Given ``direct`` routes (``app/api/direct.py``), it serves those itself instead of passing them
to the app: ``KeelAPI`` enters such an instance before FastAPI's own layers for the proxy's hot
endpoints, while every other request meets this middleware inside FastAPI.
"""

from __future__ import annotations

import hmac
import logging
import os
import re
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.direct import DirectRoutes
from app.api.edge import HEADERS as EDGE_HEADERS
from app.api.edge import EdgePolicy, Preflight, Verdict
from app.api.problems import BodyTooLarge, problem_response
from app.core import set_request_id
from app.errors import BadRequest, KeelError, PayloadTooLarge, Unauthorized
from app.errors import InternalError as InternalErrorProblem
from app.observability.logging import request_id_var
from app.observability.metrics import Metrics

log = logging.getLogger("keel.http")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_UNMATCHED = "unmatched"
_UNMETERED_PATHS = frozenset({"/metrics"})
_ADMITTED = Verdict()


class KeelMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: Metrics,
        api_token: str | None,
        max_body_bytes: int,
        edge: EdgePolicy | None = None,
        direct: DirectRoutes | None = None,
    ) -> None:
        self.app = app
        self.edge = edge
        self.direct = direct
        self.metrics = metrics
        self.token = api_token.encode() if api_token else None
        self.max_body = max_body_bytes
        # labels() costs a lock and a dict walk per call; the label sets are few and bounded.
        self._series: dict[tuple[str, str, str], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        headers, repeated = _headers(scope)
        incoming = headers.get("x-request-id", "")
        # 128 random bits as 32 hex digits, the shape of uuid4().hex at a fifth of its cost.
        request_id = incoming if _REQUEST_ID.match(incoming) else os.urandom(16).hex()
        set_request_id(scope, request_id)
        # Every log line written while this request is served carries its id (the filter in
        # app/observability/logging.py), also from code that never sees the request.
        serving = request_id_var.set(request_id)
        path: str = scope["path"]
        method: str = scope["method"]
        head = method == "HEAD"
        if head:
            # Every GET route answers HEAD: the route runs as GET and its body is dropped.
            scope = {**scope, "method": "GET"}
        started = time.perf_counter()
        status = 500
        response_started = False
        cors: list[tuple[bytes, bytes]] | None = None

        async def send_wrapper(message: Message) -> None:
            nonlocal status, response_started
            if head and message["type"] == "http.response.body":
                # The HEAD answer ended with its start; a stream (SSE) is stopped here.
                if message.get("more_body", False):
                    raise _HeadAnswered
                return
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                raw = list(message.get("headers", []))
                if not any(k.lower() == b"x-request-id" for k, _ in raw):
                    raw.append((b"x-request-id", request_id.encode()))
                if cors:
                    raw.extend(cors)
                message = {**message, "headers": raw}
                if head:
                    await send(message)
                    await send({"type": "http.response.body", "body": b""})
                    return
            await send(message)

        self.metrics.serving += 1
        try:
            verdict = self._admit(method, path, headers, repeated)
            if isinstance(verdict, Preflight):
                cors = verdict.headers
                await send_wrapper({"type": "http.response.start", "status": 204, "headers": []})
                await send_wrapper({"type": "http.response.body", "body": b""})
                return
            if isinstance(verdict, Verdict):
                # An allowed origin may read every answer from here on, refusals included.
                cors = verdict.cors
                refusal = self._reject(path, headers)
            else:
                refusal = verdict
            route = self.direct.match(method, path) if self.direct is not None else None
            if refusal is not None:
                await problem_response(refusal, request_id)(scope, receive, send_wrapper)
            elif route is not None:
                await DirectRoutes.serve(route, scope, self._limited(receive), send_wrapper)
            else:
                await self.app(scope, self._limited(receive), send_wrapper)
        except _HeadAnswered:
            pass
        except BodyTooLarge as exc:
            if not response_started:
                too_large = PayloadTooLarge(
                    f"The request body exceeds {exc.limit} bytes.", extra={"limit": exc.limit}
                )
                await problem_response(too_large, request_id)(scope, receive, send_wrapper)
        except Exception as exc:
            if response_started:
                log.error(
                    "error after response started", exc_info=exc, extra={"request_id": request_id}
                )
            else:
                err = (
                    exc
                    if isinstance(exc, KeelError)
                    else InternalErrorProblem(
                        "An internal error occurred; quote the request id when reporting it."
                    )
                )
                if not isinstance(exc, KeelError):
                    log.error("unhandled error", exc_info=exc, extra={"request_id": request_id})
                await problem_response(err, request_id)(scope, receive, send_wrapper)
        finally:
            self.metrics.serving -= 1
            elapsed = time.perf_counter() - started
            self._observe(scope, method, path, status, elapsed, request_id)
            request_id_var.reset(serving)

    def _admit(
        self, method: str, path: str, headers: dict[str, str], repeated: bytes | None
    ) -> KeelError | Preflight | Verdict:
        """What the edge makes of the headers: a refusal, a preflight answer, or admission."""
        if repeated is not None:
            # Two Authorization (or Host) headers: code that reads the first and code that
            # reads the last would disagree about who is calling.
            name = repeated.decode().title()
            return BadRequest(f"Send one {name} header, not several.")
        if self.edge is None:
            return _ADMITTED
        return self.edge.check(method, path, headers)

    def _reject(self, path: str, headers: dict[str, str]) -> KeelError | None:
        if self.token is not None and (path == "/v1" or path.startswith("/v1/")):
            given = headers.get("authorization", "")
            scheme, _, credential = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                credential.strip().encode(), self.token
            ):
                return Unauthorized("A valid bearer token is required.")
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            return PayloadTooLarge(
                f"The request body exceeds {self.max_body} bytes.", extra={"limit": self.max_body}
            )
        return None

    def _limited(self, receive: Receive) -> Receive:
        seen = 0
        limit = self.max_body

        async def wrapped() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        return wrapped

    def _observe(
        self,
        scope: Scope,
        method: str,
        path: str,
        status: int,
        elapsed: float,
        request_id: str,
    ) -> None:
        route = getattr(scope.get("route"), "path", None) or _UNMATCHED
        # Dry runs promise no side effects, metrics included; scrapes do not count themselves.
        dry_run = b"dry_run=true" in scope.get("query_string", b"")
        if not dry_run and path not in _UNMETERED_PATHS:
            key = (route, method, str(status))
            series = self._series.get(key)
            if series is None:
                series = (
                    self.metrics.http_requests.labels(route=route, method=method, status=key[2]),
                    self.metrics.http_latency.labels(route=route, method=method),
                )
                self._series[key] = series
            series[0].inc()
            series[1].observe(elapsed)
        if log.isEnabledFor(logging.INFO):  # else not even the record's fields are built
            log.info(
                "%s %s %d",
                method,
                path,
                status,
                extra={
                    "request_id": request_id,
                    "route": route,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 2),
                },
            )


class _HeadAnswered(Exception):
    """Raised into a GET route's stream once its HEAD answer is complete."""


_WANTED = frozenset({b"x-request-id", b"authorization", b"content-length"}) | EDGE_HEADERS
_SINGLE = frozenset({b"authorization", b"host"})


def _headers(scope: Scope) -> tuple[dict[str, str], bytes | None]:
    """Only the headers this middleware reads (ASGI header names are already lower-case), and
    the name of a header that must appear once but came more than once."""
    out: dict[str, str] = {}
    repeated: bytes | None = None
    for k, v in scope["headers"]:
        if k in _WANTED:
            name = k.decode("latin-1")
            if k in _SINGLE and name in out:
                repeated = k
            out[name] = v.decode("latin-1")
    return out, repeated
