"""The HTTP client under a remote provider, reduced to what the provider needs.

``OpenAIHTTPProvider`` decides (statuses, checks, SSE framing); a ``Wire`` only moves bytes.
Two wires exist: ``AiohttpWire`` (the default: aiohttp straight, measured in
docs/benchmarks.md) and ``HttpxWire`` (``http_transport = "httpx"``, and the one the narrow
unit tests drive through respx or an injected transport). Each wire turns its library's
exceptions into ``WireError`` with one of the reasons below, so the provider's failure mapping
is the same whichever carries the bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

# connect: no connection could be made; timeout: a phase ran out of time (pool wait included);
# reset: the peer closed or broke the connection; transport: anything else the client refused.
WireReason = Literal["connect", "timeout", "reset", "transport"]


class WireError(Exception):
    def __init__(self, reason: WireReason) -> None:
        super().__init__(reason)
        self.reason: WireReason = reason


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Per phase, in seconds, each already capped by the request's deadline. ``None``: no
    limit of the phase's own, because every call runs inside ``Deadline.bound()`` (the retry
    loop's, the prober's), which cancels it when the deadline passes; a wire then arms no timer
    of its own for that phase."""

    connect: float  # a new TCP (and TLS) connection
    read: float | None  # between two reads of the answer (the provider's ``timeout_s``)
    pool: float | None  # waiting for a free connection, then connecting


class WireResponse(Protocol):
    status: int

    def header(self, name: str) -> str | None:
        """A response header by lower-case name."""
        ...

    async def read(self) -> bytes:
        """The whole body; releases the connection. Raises ``WireError``."""
        ...

    async def next_chunk(self) -> bytes:
        """The next body bytes as they arrive, ``b""`` at the end. Raises ``WireError`` on a
        broken read. (A coroutine per chunk, not an async generator: one level less for
        every chunk of a stream.)"""
        ...

    async def aclose(self) -> None: ...


class Wire(Protocol):
    async def send(
        self,
        method: Literal["GET", "POST"],
        path: str,
        payload: bytes | None,
        headers: dict[str, str],
        timeouts: Timeouts,
    ) -> WireResponse:
        """Sends and returns once the status line and headers are in. Raises ``WireError``."""
        ...

    async def aclose(self) -> None: ...
