"""OpenAI-compatible chat and model listing. Parses and renders; ChatService decides who
answers, ChatRecords what the turn leaves behind."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import ValidationError

from app.api.deps import ChatDep
from app.api.idempotency import idempotency_request, to_response
from app.api.problems import error_event
from app.chat.records import (
    ChatRecords,
    StreamTranscript,
    completion_text,
    new_user_turns,
)
from app.chat.relay import ClientDisconnected, EventStreamResponse, until_disconnect
from app.chat.schemas import MAX_CONTENT_CHARS, ChatRequest, content_chars
from app.chat.service import Answer
from app.chat.targets import Target
from app.core import request_id as request_id_of
from app.errors import (
    DeadlineExceeded,
    KeelError,
    ModelNotFound,
    PayloadTooLarge,
    UpstreamError,
    ValidationFailed,
)
from app.observability.metrics import Metrics
from app.providers.local import LocalProvider
from app.resilience.failures import UpstreamFailure
from app.runtime.slot import current_request_id
from app.state import app_state
from app.store.conversation_models import NewMessage
from app.store.idempotency import Claim, IdempotencyRequest, StoredResponse

router = APIRouter(tags=["chat"])
log = logging.getLogger("keel.chat")

CLIENT_CLOSED_REQUEST = 499  # nginx's code; nobody receives it, the metrics and log do
_DONE = b"data: [DONE]"


def _timeout_header(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds <= 3600:
        raise ValidationFailed(
            "X-Request-Timeout must be a number of seconds in (0, 3600].",
            extra={
                "errors": [
                    {"field": "header.X-Request-Timeout", "message": "must be seconds in (0, 3600]"}
                ]
            },
        )
    return seconds


def _answer_headers(answer: Answer) -> dict[str, str]:
    return {"x-keel-target": answer.target.id, "x-keel-attempts": str(answer.attempts)}


@router.post(
    "/v1/chat/completions",
    summary="Create a chat completion",
    description="OpenAI-compatible chat completion, routed to the model's targets with "
    "retries and fallbacks. With `stream: true` the answer is server-sent events ending "
    "`data: [DONE]`; a failure after the first event ends the stream with an `error` event. "
    "Extensions: body `conversation_id`, headers `Idempotency-Key` and `X-Request-Timeout`.",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": ChatRequest.model_json_schema()}},
        },
        "responses": {
            "200": {
                "description": "The completion (JSON), or its events (`stream: true`)",
                "content": {
                    "application/json": {"schema": {"type": "object"}},
                    "text/event-stream": {"schema": {"type": "string"}},
                },
            }
        },
    },
)
async def chat_completions(request: Request) -> Response:
    """The hot path takes only the Request: FastAPI resolves every declared dependency and
    parameter on each call, which measured at a third of Keel's own cost per completion
    (docs/benchmarks.md). The body is validated by pydantic-core directly, with the same
    422 problem as everywhere else."""
    state = app_state(request)
    chat = state.chat
    records = state.chat_records
    request_id = request_id_of(request.scope) or ""
    current_request_id.set(request_id)  # lets POST /v1/requests/{id}/cancel find a local run
    payload = _parse(await request.body())
    key = await idempotency_request(request)
    for i, message in enumerate(payload.messages):
        if content_chars(message) > MAX_CONTENT_CHARS:
            raise PayloadTooLarge(
                f"Message {i} exceeds {MAX_CONTENT_CHARS} characters.",
                extra={"limit": MAX_CONTENT_CHARS, "field": f"body.messages.{i}.content"},
            )
    targets = chat.targets.resolve(payload.model)
    # Forward what the client sent, minus Keel's own extension fields.
    body: dict[str, Any] = payload.model_dump(
        exclude_unset=True, exclude={"conversation_id", "conversation"}
    )
    cid = payload.conversation_id
    turns = new_user_turns(body["messages"]) if cid else []
    if cid:
        await records.check_conversation(cid)
    return await answer_and_render(
        request, body, targets, key, stream=payload.stream, cid=cid, turns=turns
    )


async def answer_and_render(
    request: Request,
    body: dict[str, Any],
    targets: list[Target],
    key: IdempotencyRequest | None,
    *,
    stream: bool,
    cid: str | None = None,
    turns: list[NewMessage] | None = None,
    path: str | None = None,
) -> Response:
    """From a parsed request to its response: deadline, idempotency claim, the answer under
    the guard, what the turn leaves behind. Chat and the relayed endpoints (``path``:
    ``embeddings``, ``completions``) share it."""
    state = app_state(request)
    chat = state.chat
    records = state.chat_records
    metrics = state.metrics
    request_id = request_id_of(request.scope) or ""
    turns = turns or []
    deadline = chat.deadline_for(targets, _timeout_header(request.headers.get("x-request-timeout")))
    claim: Claim | None = None
    if key is not None:
        got = await records.idempotency.begin(key)
        if isinstance(got, StoredResponse):
            return to_response(got)  # the stored answer; no upstream is called
        claim = got

    try:
        answer = await until_disconnect(
            request.receive,
            lambda: (chat.open_stream if stream else chat.complete)(body, targets, deadline, path),
        )
    except ClientDisconnected:
        await records.abandon(claim)
        return _cancelled(metrics, "client_disconnect")
    except BaseException as exc:
        await records.abandon(claim)
        if isinstance(exc, DeadlineExceeded):
            metrics.cancellations.labels(reason="deadline").inc()
        raise
    headers = _answer_headers(answer)

    if answer.stream is not None:
        opened = answer.stream
        return EventStreamResponse(
            _relay(opened.events(), request_id, records, cid, turns, claim, headers),
            headers=headers,
            on_disconnect=lambda: metrics.cancellations.labels(reason="client_disconnect").inc(),
            on_close=opened.aclose,
        )

    assert answer.completion is not None
    content = answer.completion.body
    if cid is not None or claim is not None:
        try:
            await records.record(
                conversation_id=cid,
                new_turns=turns,
                reply=completion_text(content) if cid else None,
                claim=claim,
                stored=StoredResponse(
                    200, content, {"content-type": "application/json", **headers}
                ),
            )
        except BaseException:
            await records.abandon(claim)
            raise
    return Response(content, media_type="application/json", headers=headers)


def _parse(raw: bytes) -> ChatRequest:
    try:
        return ChatRequest.model_validate_json(raw)
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        raise RequestValidationError(errors) from None


def _cancelled(metrics: Metrics, reason: str) -> Response:
    metrics.cancellations.labels(reason=reason).inc()
    return Response(status_code=CLIENT_CLOSED_REQUEST)


async def _relay(
    events: AsyncIterator[bytes],
    request_id: str,
    records: ChatRecords,
    cid: str | None,
    turns: list[NewMessage],
    claim: Claim | None,
    headers: dict[str, str],
) -> AsyncIterator[bytes]:
    """Relay whole events; after the first byte a failure becomes an SSE ``error`` event.

    With a conversation or an idempotency key the turn is recorded when the upstream's
    ``[DONE]`` arrives and before it is relayed, so a client that saw ``[DONE]`` can rely on
    the record; a stream that fails or is abandoned records nothing.
    """
    recording = cid is not None or claim is not None
    transcript = StreamTranscript() if recording else None
    finished = False
    try:
        async for event in events:
            if transcript is not None:
                if event.startswith(_DONE):
                    transcript.add(event)
                    await records.record(
                        conversation_id=cid,
                        new_turns=turns,
                        reply=transcript.text,
                        claim=claim if transcript.replayable else None,
                        stored=StoredResponse(
                            200,
                            transcript.body(),
                            {"content-type": "text/event-stream; charset=utf-8", **headers},
                        ),
                    )
                    finished = True
                else:
                    transcript.add(event)
            yield event
        finished = True
    except UpstreamFailure as exc:
        log.warning(
            "stream failed after it started", extra={"request_id": request_id, "reason": exc.reason}
        )
        problem = UpstreamError("The provider's stream failed before it finished.")
        yield error_event(problem, request_id)
    except KeelError as exc:
        yield error_event(exc, request_id)
    finally:
        if recording and not finished:
            await records.abandon(claim)


@router.get("/v1/models")
async def list_models(chat: ChatDep) -> dict[str, Any]:
    data = [
        _model_entry(name, [t.id for t in targets], "route")
        for name, targets in chat.targets.routes.items()
    ]
    for t in chat.targets.direct_targets():
        provider = chat.providers.get(t.provider)
        if isinstance(provider, LocalProvider):
            if provider.runtime.installed(t.model):  # installed local models, by their id
                data.append(_model_entry(t.model, [t.id], "local"))
            continue
        data.append(_model_entry(t.id, [t.id], "provider"))
    return {"object": "list", "data": data}


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, chat: ChatDep) -> dict[str, Any]:
    routes = chat.targets.routes
    if model_id in routes:
        return _model_entry(model_id, [t.id for t in routes[model_id]], "route")
    for t in chat.targets.direct_targets():
        if isinstance(chat.providers.get(t.provider), LocalProvider) and model_id in (
            t.model,
            t.id,
        ):
            return _model_entry(t.model, [t.id], "local")
        if t.id == model_id:
            return _model_entry(t.id, [t.id], "provider")
    raise ModelNotFound(f"No model is named '{model_id[:100]}'.")


def _model_entry(model_id: str, targets: list[str], kind: str) -> dict[str, Any]:
    return {
        "id": model_id,
        "object": "model",
        "created": 0,
        "owned_by": "keel",
        "keel": {"kind": kind, "targets": targets},
    }
