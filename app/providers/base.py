"""What the chat service needs from any chat backend: a complete call and a streaming call.

Bodies travel as the client's parsed OpenAI request with ``model`` replaced by the target's own
model name; responses come back as bytes to relay, not objects to re-validate. A remote HTTP
provider and (later) the local runtime both implement this protocol.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from app.resilience.deadline import Deadline


@dataclass(frozen=True, slots=True)
class Completion:
    body: bytes  # the upstream's JSON, relayed byte for byte
    content_type: str = "application/json"


class ChatStream(Protocol):
    """An opened stream: the upstream has answered 200 and no byte has reached the client."""

    def events(self, idle_timeout_s: float) -> AsyncIterator[bytes]:
        """Complete SSE events (``data: ...\\n\\n``), ``data: [DONE]`` included; one or more
        per item: what arrived together is relayed in one write (``ends_stream`` and
        ``split_events`` in upstream_checks.py read such a group).

        Raises ``UpstreamFailure`` on a drop, an idle gap longer than ``idle_timeout_s`` or a
        stream that ends without ``[DONE]``.
        """
        ...

    async def aclose(self) -> None: ...


class Provider(Protocol):
    name: str

    def model_names(self) -> list[str]: ...

    async def complete(
        self, body: dict[str, Any], model: str, deadline: Deadline
    ) -> Completion: ...

    async def open_stream(
        self, body: dict[str, Any], model: str, deadline: Deadline
    ) -> ChatStream: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class RelayProvider(Protocol):
    """A provider that also serves OpenAI's other endpoints (``embeddings``, legacy
    ``completions``): the body goes upstream as the client sent it, with the target's model."""

    async def relay(
        self, path: str, body: dict[str, Any], model: str, deadline: Deadline
    ) -> Completion: ...

    async def open_relay_stream(
        self, path: str, body: dict[str, Any], model: str, deadline: Deadline
    ) -> ChatStream: ...
