"""OpenAI-compatible chat and model listing. Parse, ``await chat.answer(...)``, render: the
chat package (``app/chat/turn.py``) holds the deadline, the idempotency lease, the record of
the turn and the cancellation metrics."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import ValidationError

from app.api.deps import ChatDep
from app.api.idempotency import idempotency_request, to_response
from app.api.problems import error_event
from app.chat.records import new_user_turns
from app.chat.relay import EventStreamResponse
from app.chat.schemas import MAX_CONTENT_CHARS, ChatRequest, content_chars
from app.chat.turn import ChatCall, Reply
from app.core import request_id as request_id_of
from app.errors import ModelNotFound, PayloadTooLarge, ValidationFailed
from app.providers.local import LocalProvider
from app.runtime.slot import current_request_id
from app.state import app_state

router = APIRouter(tags=["chat"])
log = logging.getLogger("keel.chat")

CLIENT_CLOSED_REQUEST = 499  # nginx's code; nobody receives it, the metrics and log do


def timeout_header(value: str | None) -> float | None:
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
    chat = app_state(request).chat
    request_id = request_id_of(request.scope) or ""
    current_request_id.set(request_id)  # lets POST /v1/requests/{id}/cancel find a local run
    raw = await request.body()
    payload = _parse(raw)
    key = await idempotency_request(request)
    for i, message in enumerate(payload.messages):
        if content_chars(message) > MAX_CONTENT_CHARS:
            raise PayloadTooLarge(
                f"Message {i} exceeds {MAX_CONTENT_CHARS} characters.",
                extra={"limit": MAX_CONTENT_CHARS, "field": f"body.messages.{i}.content"},
            )
    targets = chat.targets.resolve(payload.model)
    body = _forwarded(raw, payload)
    cid = payload.conversation_id
    turns = new_user_turns(body["messages"]) if cid else []
    if cid:
        await chat.check_conversation(cid)
    call = ChatCall(
        body,
        targets,
        payload.stream,
        key,
        conversation_id=cid,
        turns=turns,
        timeout_s=timeout_header(request.headers.get("x-request-timeout")),
        request_id=request_id,
    )
    return render(await chat.answer(call, request.receive), request_id)


def render(reply: Reply, request_id: str) -> Response:
    """A ``Reply`` as the HTTP response; after a stream's first event a failure is sent as an
    SSE ``error`` event."""
    if reply.cancelled:
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    if reply.stream is not None:
        stream = reply.stream
        handle = stream.handle
        return EventStreamResponse(
            stream.events,
            error_event=lambda exc: error_event(exc, request_id),
            headers=stream.headers,
            on_disconnect=stream.on_disconnect,
            on_close=stream.on_close,
            stop=handle,
            stop_event=None if handle is None else lambda: error_event(handle.error(), request_id),
        )
    assert reply.stored is not None
    return to_response(reply.stored)


def _forwarded(raw: bytes, payload: ChatRequest) -> dict[str, Any]:
    """What the client sent, minus Keel's own extension fields. The validated bytes are
    parsed again by orjson (a quarter of the cost of dumping the model); the values are the
    same, since validation changes none that is forwarded (``model`` and ``stream`` are set
    by the provider call)."""
    try:
        body: dict[str, Any] = orjson.loads(raw)
    except orjson.JSONDecodeError:  # what pydantic's parser took and orjson does not
        body = payload.model_dump(exclude_unset=True)
    body.pop("conversation_id", None)
    body.pop("conversation", None)
    return body


def _parse(raw: bytes) -> ChatRequest:
    try:
        return ChatRequest.model_validate_json(raw)
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        raise RequestValidationError(errors) from None


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
