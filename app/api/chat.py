"""OpenAI-compatible chat and model listing. Parses and renders; ChatService decides."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import Response

from app.api.chat_schemas import MAX_CONTENT_CHARS, ChatRequest, content_chars
from app.api.deps import MetricsDep, RequestIdDep
from app.api.sse import ClientDisconnected, EventStreamResponse, until_disconnect
from app.errors import KeelError, ModelNotFound, PayloadTooLarge, ValidationFailed
from app.observability.metrics import Metrics
from app.providers.chat_service import Answer, ChatService
from app.resilience.failures import UpstreamFailure

router = APIRouter(tags=["chat"])
log = logging.getLogger("keel.chat")

CLIENT_CLOSED_REQUEST = 499  # nginx's code; nobody receives it, the metrics and log do


def get_chat(request: Request) -> ChatService:
    chat: ChatService = request.state.chat
    return chat


ChatDep = Annotated[ChatService, Depends(get_chat)]


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
            extra={"errors": [{"field": "header.X-Request-Timeout",
                               "message": "must be seconds in (0, 3600]"}]},
        )
    return seconds


def _answer_headers(answer: Answer) -> dict[str, str]:
    return {"X-Keel-Target": answer.target.id, "X-Keel-Attempts": str(answer.attempts)}


@router.post("/v1/chat/completions")
async def chat_completions(
    request: Request,
    payload: ChatRequest,
    chat: ChatDep,
    metrics: MetricsDep,
    request_id: RequestIdDep,
    x_request_timeout: Annotated[str | None, Header()] = None,
) -> Response:
    for i, message in enumerate(payload.messages):
        if content_chars(message) > MAX_CONTENT_CHARS:
            raise PayloadTooLarge(
                f"Message {i} exceeds {MAX_CONTENT_CHARS} characters.",
                extra={"limit": MAX_CONTENT_CHARS, "field": f"body.messages.{i}.content"},
            )
    targets = chat.router.resolve(payload.model)
    deadline = chat.deadline_for(targets, _timeout_header(x_request_timeout))
    # Forward what the client sent, minus Keel's own extension fields.
    body: dict[str, Any] = payload.model_dump(exclude_unset=True, exclude={"conversation_id"})

    if payload.stream:
        try:
            answer = await until_disconnect(
                request.receive, lambda: chat.open_stream(body, targets, deadline))
        except ClientDisconnected:
            return _cancelled(metrics, "client_disconnect")
        assert answer.stream is not None
        opened = answer.stream
        return EventStreamResponse(
            _relay(opened.events(), request_id),
            headers=_answer_headers(answer),
            on_disconnect=lambda: metrics.cancellations.labels(reason="client_disconnect").inc(),
            on_close=opened.aclose,
        )

    try:
        answer = await until_disconnect(
            request.receive, lambda: chat.complete(body, targets, deadline))
    except ClientDisconnected:
        return _cancelled(metrics, "client_disconnect")
    assert answer.completion is not None
    return Response(answer.completion.body, media_type="application/json",
                    headers=_answer_headers(answer))


def _cancelled(metrics: Metrics, reason: str) -> Response:
    metrics.cancellations.labels(reason=reason).inc()
    return Response(status_code=CLIENT_CLOSED_REQUEST)


async def _relay(events: AsyncIterator[bytes], request_id: str) -> AsyncIterator[bytes]:
    """Relay whole events; after the first byte a failure becomes an SSE ``error`` event."""
    try:
        async for event in events:
            yield event
    except UpstreamFailure as exc:
        log.warning("stream failed after it started", extra={"request_id": request_id,
                                                             "reason": exc.reason})
        from app.errors import UpstreamError

        problem = UpstreamError("The provider's stream failed before it finished.").problem(
            request_id)
        yield b"event: error\ndata: " + json.dumps(problem).encode() + b"\n\n"
    except KeelError as exc:
        yield b"event: error\ndata: " + json.dumps(exc.problem(request_id)).encode() + b"\n\n"


@router.get("/v1/models")
async def list_models(chat: ChatDep) -> dict[str, Any]:
    data = [_model_entry(name, [t.id for t in targets], "route")
            for name, targets in chat.router.routes.items()]
    data += [_model_entry(t.id, [t.id], "provider") for t in chat.router.direct_targets()]
    return {"object": "list", "data": data}


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, chat: ChatDep) -> dict[str, Any]:
    routes = chat.router.routes
    if model_id in routes:
        return _model_entry(model_id, [t.id for t in routes[model_id]], "route")
    for t in chat.router.direct_targets():
        if t.id == model_id:
            return _model_entry(t.id, [t.id], "provider")
    raise ModelNotFound(f"No model is named '{model_id[:100]}'.")


def _model_entry(model_id: str, targets: list[str], kind: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": "keel",
            "keel": {"kind": kind, "targets": targets}}
