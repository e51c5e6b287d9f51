"""OpenAI's ``/v1/embeddings`` and legacy ``/v1/completions``, relayed to providers through
the same path as chat: routing and fallbacks, deadline, breaker, retries, idempotency, metrics
(``ChatService.answer``). Keel validates only what it needs to route; every other field passes
through to the provider untouched."""

from __future__ import annotations

from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app.api.chat import render, timeout_header
from app.api.idempotency import idempotency_request
from app.chat.turn import ChatCall
from app.core import request_id as request_id_of
from app.state import app_state

router = APIRouter(tags=["chat"])
M = TypeVar("M", bound=BaseModel)

_TOKENS = list[int]
MAX_INPUTS = 2048  # OpenAI's own limit on inputs per embeddings request


class EmbeddingsRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=200)
    input: str | list[str] | _TOKENS | list[_TOKENS] = Field(max_length=MAX_INPUTS)


class CompletionsRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=200)
    prompt: str | list[str] | _TOKENS | list[_TOKENS] = Field(max_length=MAX_INPUTS)
    stream: bool = False


def _schema(model: type[BaseModel]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }


@router.post("/v1/embeddings", openapi_extra=_schema(EmbeddingsRequest))
async def embeddings(request: Request) -> Response:
    payload = _parse(EmbeddingsRequest, await request.body())
    return await _relay(request, "embeddings", payload, stream=False)


@router.post("/v1/completions", openapi_extra=_schema(CompletionsRequest))
async def completions(request: Request) -> Response:
    payload = _parse(CompletionsRequest, await request.body())
    return await _relay(request, "completions", payload, stream=payload.stream)


async def _relay(
    request: Request, path: str, payload: EmbeddingsRequest | CompletionsRequest, *, stream: bool
) -> Response:
    chat = app_state(request).chat
    request_id = request_id_of(request.scope) or ""
    key = await idempotency_request(request)
    call = ChatCall(
        payload.model_dump(exclude_unset=True),
        chat.relay_targets(payload.model, path),
        stream,
        key,
        timeout_s=timeout_header(request.headers.get("x-request-timeout")),
        path=path,
        request_id=request_id,
    )
    return render(await chat.answer(call, request.receive), request_id)


def _parse(model: type[M], raw: bytes) -> M:
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        raise RequestValidationError(errors) from None
