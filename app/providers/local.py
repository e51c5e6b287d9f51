"""The local runtime as a chat provider: the same protocol as the HTTP provider, so routing,
deadlines, the limiter, fallbacks and the SSE relay apply unchanged.

Bodies arrive as the client's OpenAI request; answers leave as OpenAI-shaped JSON and chunks
with ``usage``. The first request loads the model inside its deadline. Failures are reported
the way the chat layer already understands: a crash or stall before the first token is an
``UpstreamFailure`` that may retry (the retry reloads the model) or fall back; after the first
token it ends the stream with the SSE ``error`` event. Refusals of Keel's own (``circuit_open``
while the model cools down, ``overloaded`` when its one slot stays busy) fall back as well.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from app.errors import ModelLoadFailed, ValidationFailed
from app.providers.base import Completion
from app.resilience.deadline import Deadline
from app.resilience.failures import UpstreamFailure
from app.runtime.manager import RuntimeManager
from app.runtime.supervisor import WorkerError
from app.settings import LOCAL_PROVIDER, ProviderSettings, Settings

SAMPLING = (
    "temperature",
    "top_p",
    "max_tokens",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
)
_DURATION = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*([smh]?)\s*$")
_FOREVER_S = 10 * 365 * 86_400.0


def keep_alive_seconds(body: dict[str, Any]) -> float | None:
    """Ollama's ``keep_alive``: seconds, or ``"5m"``/``"1h"``; negative keeps it loaded."""
    value = body.get("keep_alive")
    if value is None:
        return None
    seconds: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]
    if seconds is None:
        raise ValidationFailed(
            "keep_alive must be seconds or a duration such as '5m'.",
            extra={"errors": [{"field": "body.keep_alive", "message": "seconds or '5m'"}]},
        )
    return _FOREVER_S if seconds < 0 else seconds


def worker_request(body: dict[str, Any]) -> dict[str, Any]:
    params = {k: body[k] for k in SAMPLING if body.get(k) is not None}
    if body.get("max_completion_tokens") is not None and "max_tokens" not in params:
        params["max_tokens"] = body["max_completion_tokens"]
    messages = [
        {"role": m.get("role"), "content": _text(m.get("content"))} for m in body["messages"]
    ]
    return {"messages": messages, "params": params}


def _text(content: Any) -> str:
    if isinstance(content, list):  # OpenAI content parts: keep the text ones
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


def _failure(exc: WorkerError, *, committed: bool) -> UpstreamFailure:
    reason = {"worker_crashed": "reset", "token_stall": "timeout"}.get(exc.code, exc.code)
    return UpstreamFailure(reason, committed=committed, message=exc.code)


def _cancelled(msg: dict[str, Any], committed: bool) -> UpstreamFailure | None:
    reason = msg.get("cancelled")
    if reason is None or reason == "user_stop":
        return None  # a user's stop ends the answer normally, with what was generated
    return UpstreamFailure(f"cancelled_{reason}", committed=committed)


def local_provider_settings(settings: Settings) -> tuple[str, ProviderSettings]:
    """The ``kind = "local"`` provider of keel.toml (its name, limits and model list), else
    ``local`` with defaults sized for one generation per model at a time."""
    for name, cfg in settings.providers.items():
        if cfg.kind == "local":
            return name, cfg
    return LOCAL_PROVIDER, ProviderSettings(kind="local", max_concurrency=64)


class LocalProvider:
    def __init__(self, name: str, runtime: RuntimeManager, models: list[str] | None = None):
        self.name = name
        self.runtime = runtime
        self._models = models or runtime.model_ids()

    def model_names(self) -> list[str]:
        return list(self._models)

    async def _load(self, model: str, deadline: Deadline) -> None:
        try:
            await deadline.run(self.runtime.load(model))
        except ModelLoadFailed as exc:
            # Not retried here (the model's breaker decides when to try again); the route
            # may still fall back to its next target.
            raise UpstreamFailure("model_load_failed", message=exc.detail) from None

    async def complete(self, body: dict[str, Any], model: str, deadline: Deadline) -> Completion:
        self._require(model, "llm")
        await self._load(model, deadline)
        text: list[str] = []
        done: dict[str, Any] = {}
        events = self.runtime.generate(
            model, worker_request(body), keep_alive_s=keep_alive_seconds(body)
        )
        try:
            async with deadline.bound():
                async for msg in events:
                    if msg["ev"] == "token":
                        text.append(msg["text"])
                    else:
                        done = msg
        except WorkerError as exc:
            raise _failure(exc, committed=False) from None
        finally:
            await events.aclose()
        failure = _cancelled(done, committed=False)
        if failure is not None:
            raise failure
        usage = _usage(done)
        answer = {
            "id": "chatcmpl-" + uuid.uuid4().hex,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(text)},
                    "finish_reason": _finish(done),
                }
            ],
            "usage": usage,
        }
        return Completion(json.dumps(answer, ensure_ascii=False).encode())

    async def open_stream(
        self, body: dict[str, Any], model: str, deadline: Deadline
    ) -> LocalStream:
        self._require(model, "llm")
        await self._load(model, deadline)
        return LocalStream(self.runtime, model, body)

    async def relay(
        self, path: str, body: dict[str, Any], model: str, deadline: Deadline
    ) -> Completion:
        """``/v1/embeddings`` for models whose capability is ``embedding``."""
        if path != "embeddings":
            raise UpstreamFailure(status_code=404, message=f"local models do not serve {path}")
        inputs = body.get("input")
        texts = [inputs] if isinstance(inputs, str) else inputs
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise ValidationFailed(
                "Local embedding models take text input (a string or a list of strings).",
                extra={"errors": [{"field": "body.input", "message": "text only"}]},
            )
        self._require(model, "embedding")
        await self._load(model, deadline)
        done: dict[str, Any] = {}
        events = self.runtime.generate(
            model, {"op": "embed", "input": texts}, keep_alive_s=keep_alive_seconds(body)
        )
        try:
            async with deadline.bound():
                async for msg in events:
                    done = msg
        except WorkerError as exc:
            raise _failure(exc, committed=False) from None
        finally:
            await events.aclose()
        prompt = int((done.get("usage") or {}).get("prompt_tokens", 0))
        answer = {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": vector}
                for i, vector in enumerate(done.get("data") or [])
            ],
            "model": model,
            "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
        }
        return Completion(json.dumps(answer).encode())

    async def open_relay_stream(
        self, path: str, body: dict[str, Any], model: str, deadline: Deadline
    ) -> LocalStream:
        raise UpstreamFailure(status_code=404, message=f"local models do not stream {path}")

    def _require(self, model: str, capability: str) -> None:
        have = self.runtime.slot(model).spec.capability
        if have != capability:
            raise ValidationFailed(
                f"Model '{model}' is an {have} model; this endpoint needs {capability}.",
                extra={"errors": [{"field": "body.model", "message": f"needs {capability}"}]},
            )

    async def aclose(self) -> None:
        return None


class LocalStream:
    """SSE chunks of one local generation. Its first event comes with the first token, so a
    failure before it may still retry or fall back."""

    def __init__(self, runtime: RuntimeManager, model: str, body: dict[str, Any]) -> None:
        self._model = model
        self._include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        self._events = runtime.generate(
            model, worker_request(body), keep_alive_s=keep_alive_seconds(body)
        )
        self._id = "chatcmpl-" + uuid.uuid4().hex
        self._created = int(time.time())

    def _chunk(self, delta: dict[str, Any], finish: str | None, **extra: Any) -> bytes:
        chunk = {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            **extra,
        }
        return b"data: " + json.dumps(chunk, ensure_ascii=False).encode() + b"\n\n"

    async def events(self, idle_timeout_s: float) -> AsyncIterator[bytes]:
        # The worker's per-token stall timeout bounds the gaps; idle_timeout_s is the route's.
        first = True
        try:
            async for msg in self._events:  # closed by aclose(), which the relay always calls
                if msg["ev"] == "token":
                    delta = {"content": msg["text"]}
                    if first:
                        delta = {"role": "assistant", **delta}
                        first = False
                    yield self._chunk(delta, None)
                    continue
                failure = _cancelled(msg, committed=not first)
                if failure is not None:
                    raise failure
                usage = _usage(msg)
                yield self._chunk({"role": "assistant"} if first else {}, _finish(msg), usage=usage)
                if self._include_usage:
                    usage_chunk = {
                        "id": self._id,
                        "object": "chat.completion.chunk",
                        "created": self._created,
                        "model": self._model,
                        "choices": [],
                        "usage": usage,
                    }
                    yield b"data: " + json.dumps(usage_chunk).encode() + b"\n\n"
                yield b"data: [DONE]\n\n"
                return
        except WorkerError as exc:
            raise _failure(exc, committed=not first) from None
        raise UpstreamFailure("stream_incomplete", committed=not first)

    async def aclose(self) -> None:
        await self._events.aclose()


def _usage(done: dict[str, Any]) -> dict[str, int]:
    usage = done.get("usage") or {}
    prompt = int(usage.get("prompt_tokens", 0))
    completion = int(usage.get("completion_tokens", 0))
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _finish(done: dict[str, Any]) -> str:
    reason = done.get("finish_reason")
    return reason if reason in ("stop", "length") else "stop"
