"""What an OpenAI-compatible upstream said, checked before any of it reaches a client.

An HTTP 200 is not a success by itself: providers report failures inside a stream (an SSE
``event: error``, or a ``data:`` event whose JSON carries an ``error`` object, first or
mid-stream), and proxies in front of them answer 200 with an HTML page. Each of these becomes an
``UpstreamFailure`` here, so the caller sees Keel's own error (never the provider's text) and,
before the first content, the resilience kit can retry or fall back. The same applies to the
``Retry-After`` a provider sends: it is capped before it can reach a client or a backoff.
"""

from __future__ import annotations

import json
import math
from typing import Any

import orjson

from app.resilience.failures import UpstreamFailure

BAD_RESPONSE = "bad_response"
STREAM_ERROR = "stream_error"
# The status an in-band error stands for when it names none: "the gateway got a bad answer",
# which the kit retries and the breaker counts, like a 502 would be.
_IN_BAND_DEFAULT = 502
_ERROR_KEY = b'"error"'


def completion_failure(content: bytes, expected: str = "choices") -> UpstreamFailure | None:
    """None when ``content`` is the expected answer: a JSON object whose ``expected`` member
    is a list (``choices`` for chat and text completions, ``data`` for embeddings)."""
    try:
        body = orjson.loads(content)  # strict JSON: NaN or invalid UTF-8 is a bad answer
    except orjson.JSONDecodeError:
        return UpstreamFailure(BAD_RESPONSE, status_code=_IN_BAND_DEFAULT)
    if isinstance(body, dict) and body.get("error"):
        return _in_band(body["error"], BAD_RESPONSE, committed=False)
    if not isinstance(body, dict) or not isinstance(body.get(expected), list):
        return UpstreamFailure(BAD_RESPONSE, status_code=_IN_BAND_DEFAULT)
    return None


def stream_event_failure(event: bytes, *, committed: bool) -> UpstreamFailure | None:
    """None unless this SSE event reports an error (``event: error`` or a ``data:`` object
    with an ``error`` member). ``committed``: earlier events already went to the client."""
    name = b""
    data: list[bytes] = []
    for line in event.split(b"\n"):
        if line.startswith(b"event:"):
            name = line[6:].strip()
        elif line.startswith(b"data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(b" ") else value)
    if name == b"error":
        return _in_band(_error_member(b"\n".join(data)), STREAM_ERROR, committed=committed)
    if _ERROR_KEY not in event:  # the hot path: content chunks never parse twice
        return None
    parsed = _json(b"\n".join(data))
    if isinstance(parsed, dict) and parsed.get("error"):
        return _in_band(parsed["error"], STREAM_ERROR, committed=committed)
    return None


DONE = b"data: [DONE]"
_DONE_AFTER_ANOTHER = b"\n\n" + DONE


def ends_stream(events: bytes) -> bool:
    """Whether these events (one or more, as ``ChatStream.events`` yields them) include
    ``data: [DONE]``. Events are separated by a blank line, which JSON data cannot hold, so
    the marker is only ever found at an event's start."""
    return events.startswith(DONE) or _DONE_AFTER_ANOTHER in events


def split_events(events: bytes) -> list[bytes]:
    """One or more complete events, each with its blank line."""
    return [event + b"\n\n" for event in events.split(b"\n\n") if event]


def carries_content(events: bytes) -> bool:
    """Whether these events (one or more) give the client something of the answer."""
    return any(_carries_content(event) for event in events.split(b"\n\n") if event)


def _carries_content(event: bytes) -> bool:
    """A role-only first delta, an empty ``choices`` list (a filter report) or a comment
    does not: a failure after such events can still be retried or fall back, since nothing of
    substance was promised."""
    if event.startswith(DONE):
        return True
    if not event.startswith(b"data:"):
        return event.startswith(b"event:")  # a named event: relay it as it is
    parsed = _json(event[5:])
    if not isinstance(parsed, dict):
        return True
    choices = parsed.get("choices")
    if not isinstance(choices, list):
        return True
    for choice in choices:
        if not isinstance(choice, dict):
            return True
        delta = choice.get("delta")
        delta = delta if isinstance(delta, dict) else {}
        if choice.get("finish_reason") or choice.get("text") or choice.get("message"):
            return True
        if any(delta.get(k) for k in ("content", "tool_calls", "function_call", "refusal")):
            return True
    return False


def capped_retry_after(seconds: float | None, cap_s: float) -> float | None:
    """A provider's ``Retry-After`` within Keel's own limit (never infinite, never above it)."""
    if seconds is None or not math.isfinite(seconds):
        return None if seconds is None else cap_s
    return min(max(0.0, seconds), cap_s)


def _json(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None


def _error_member(data: bytes) -> Any:
    parsed = _json(data)
    return parsed.get("error", parsed) if isinstance(parsed, dict) else None


def _in_band(error: Any, reason: str, *, committed: bool) -> UpstreamFailure:
    """An error object's status, if it names a plausible one, else 502; the text is dropped."""
    status = None
    if isinstance(error, dict):
        for key in ("status", "status_code", "code"):
            value = error.get(key)
            if isinstance(value, str) and value.isdigit():
                value = int(value)
            if isinstance(value, int) and not isinstance(value, bool) and 400 <= value <= 599:
                status = value
                break
        kind = f"{error.get('type')} {error.get('code')}"
        if status is None and "rate_limit" in kind:
            status = 429
        elif status is None and "invalid_request" in kind:
            status = 400
    return UpstreamFailure(reason, status_code=status or _IN_BAND_DEFAULT, committed=committed)
