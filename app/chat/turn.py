"""One chat turn from a parsed request to what the router renders: the deadline, the
idempotency lease, the answer under the guards (``ChatService``), the record the turn leaves
behind (``ChatRecords``), and the cancellation metrics.

``answer`` returns a ``Reply``: a stored response (a replay, or the whole JSON answer), an
event stream, or ``cancelled`` (the client left first). The router only renders it. The turn is
in the in-flight registry (``inflight.py``) from its start until its answer is done, so
``POST /v1/requests/{id}/cancel`` can stop it (``RequestCancelled``; a stream ends with the
SSE error event).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from app.chat.inflight import InFlight
from app.chat.records import ChatRecords, StreamTranscript, completion_text
from app.chat.relay import ClientDisconnected, until_disconnect
from app.chat.targets import Target
from app.errors import DeadlineExceeded, UpstreamError
from app.observability.metrics import Metrics
from app.providers.upstream_checks import ends_stream, split_events
from app.resilience.failures import UpstreamFailure
from app.store.conversation_models import NewMessage
from app.store.idempotency import IdempotencyRequest, Lease, StoredResponse

if TYPE_CHECKING:
    from starlette.types import Receive

    from app.chat.service import Answer, ChatService, OpenedStream

log = logging.getLogger("keel.chat")

SSE_CONTENT_TYPE = "text/event-stream; charset=utf-8"


@dataclass(frozen=True, slots=True)
class ChatCall:
    """A parsed request: what to send where, and what the turn should leave behind."""

    body: dict[str, Any]
    targets: list[Target]
    stream: bool
    key: IdempotencyRequest | None = None
    conversation_id: str | None = None
    turns: Sequence[NewMessage] = ()
    timeout_s: float | None = None  # the caller's X-Request-Timeout
    path: str | None = None  # a relayed endpoint (embeddings, completions); None: chat
    request_id: str = ""


@dataclass(slots=True)
class StreamReply:
    events: AsyncGenerator[bytes, None]  # may raise a KeelError after the first event
    headers: dict[str, str]
    on_disconnect: Callable[[], None]
    on_close: Callable[[], Awaitable[None]]
    handle: InFlight | None = None  # binds the response's stop, for a cancel by request id


@dataclass(slots=True)
class Reply:
    stored: StoredResponse | None = None
    stream: StreamReply | None = None
    cancelled: bool = False
    headers: dict[str, str] = field(default_factory=dict)


def answer_headers(answer: Answer) -> dict[str, str]:
    return {"x-keel-target": answer.target.id, "x-keel-attempts": str(answer.attempts)}


async def answer(
    chat: ChatService, records: ChatRecords, call: ChatCall, receive: Receive
) -> Reply:
    """The turn, registered in flight until its answer is done (a stream: until it closes)."""
    inflight = chat.inflight
    handle = inflight.register(call.request_id)
    try:
        reply = await _answer(chat, records, call, receive, handle)
    except BaseException:
        inflight.remove(handle)
        raise
    if reply.stream is None:
        inflight.remove(handle)
    return reply


async def _answer(
    chat: ChatService, records: ChatRecords, call: ChatCall, receive: Receive, handle: InFlight
) -> Reply:
    metrics = chat.metrics
    deadline = chat.deadline_for(call.targets, call.timeout_s)

    async def work(lease: Lease) -> Reply:
        await lease.hold()  # before the upstream call: a twin waits (409) instead of calling too
        try:
            with handle.cancels_task():
                got = await until_disconnect(
                    receive,
                    lambda: (chat.open_stream if call.stream else chat.complete)(
                        call.body, call.targets, deadline, call.path
                    ),
                )
        except ClientDisconnected:
            metrics.cancellations.labels(reason="client_disconnect").inc()
            return Reply(cancelled=True)
        except DeadlineExceeded:
            metrics.cancellations.labels(reason="deadline").inc()
            raise
        if handle.reason is not None:  # stopped the instant the answer arrived
            if got.stream is not None:
                await got.stream.aclose()
            raise handle.error()
        headers = answer_headers(got)
        if got.stream is not None:
            opened = got.stream
            held = lease.hand_off()

            async def close() -> None:
                try:
                    await opened.aclose()
                    await held.abandon()  # a no-op once recorded; frees the key of a cut stream
                finally:
                    chat.inflight.remove(handle)

            return Reply(
                stream=StreamReply(
                    _relay(opened, records, call, held, headers, handle),
                    headers,
                    on_disconnect=lambda: _count_disconnect(metrics),
                    on_close=close,
                    handle=handle,
                )
            )
        handle.settle()  # the answer is in hand: from here a cancel is too late (404)
        assert got.completion is not None
        content = got.completion.body
        stored = StoredResponse(200, content, {"content-type": "application/json", **headers})
        await records.record(
            lease,
            conversation_id=call.conversation_id,
            new_turns=call.turns,
            reply=completion_text(content) if call.conversation_id else None,
            stored=stored,
        )
        return Reply(stored=stored)

    done = await records.idempotency.once(call.key, work)
    return done if isinstance(done, Reply) else Reply(stored=done)


def _count_disconnect(metrics: Metrics) -> None:
    metrics.cancellations.labels(reason="client_disconnect").inc()


async def _relay(
    opened: OpenedStream,
    records: ChatRecords,
    call: ChatCall,
    lease: Lease,
    headers: dict[str, str],
    handle: InFlight,
) -> AsyncGenerator[bytes, None]:
    """Relay whole events; a failure after the first byte is raised as a ``KeelError`` for
    the response to send as an SSE ``error`` event.

    With a conversation or an idempotency key the turn is recorded when the upstream's
    ``[DONE]`` arrives and before it is relayed, so a client that saw ``[DONE]`` can rely on
    the record; a stream that fails or is abandoned records nothing and frees the key.
    """
    recording = call.conversation_id is not None or lease.keyed
    transcript = StreamTranscript() if recording else None

    async def note(events: bytes, done: bool) -> None:
        if done:
            handle.settle()  # complete: too late to cancel (the turn may be recorded)
        if transcript is not None:
            for event in split_events(events):
                transcript.add(event)
            if done:
                await _record_stream(records, call, lease, transcript, headers)

    try:
        first = opened.first
        done = ends_stream(first)
        await note(first, done)
        yield first
        if not done:
            async for events in opened.rest:
                done = ends_stream(events)
                if transcript is not None or done:  # plain chunks skip it
                    await note(events, done)
                yield events
    except UpstreamFailure as exc:
        log.warning(
            "stream failed after it started",
            extra={"request_id": call.request_id, "reason": exc.reason},
        )
        raise UpstreamError("The provider's stream failed before it finished.") from exc
    finally:
        await lease.abandon()  # a no-op once the response is recorded


async def _record_stream(
    records: ChatRecords,
    call: ChatCall,
    lease: Lease,
    transcript: StreamTranscript,
    headers: dict[str, str],
) -> None:
    if not transcript.replayable:
        await lease.abandon()  # too large to replay: free the key, still keep the turn
        lease = records.idempotency.lease(None)
    await records.record(
        lease,
        conversation_id=call.conversation_id,
        new_turns=call.turns,
        reply=transcript.text,
        stored=StoredResponse(
            200, transcript.body(), {"content-type": SSE_CONTENT_TYPE, **headers}
        ),
    )
