"""The worker's line protocol: one JSON object per line, both ways.

Keel -> worker (``op``)::

    {"op": "load", "path", "chat_format", "n_ctx", "n_threads", "embedding"}
    {"op": "ping", "id"}
    {"op": "generate", "id", "messages", "params": {temperature, top_p, max_tokens, stop, seed}}
    {"op": "embed", "id", "input": [str, ...]}
    {"op": "cancel", "id"}          # read beside a running generation; stops it within a token
    {"op": "shutdown"}              # closing stdin means the same

worker -> Keel (``ev``)::

    {"ev": "progress", "phase"}     # load phases: "importing", "reading"
    {"ev": "loaded", "rss_bytes"}
    {"ev": "pong", "id"}
    {"ev": "token", "id", "text"}
    {"ev": "done", "id", "finish_reason", "usage": {"prompt_tokens", "completion_tokens"}}
    {"ev": "embedding", "id", "data": [[float, ...]], "usage": {"prompt_tokens"}}
    {"ev": "error", "id"?, "code", "message"}

A generation that was cancelled ends with ``done`` and ``finish_reason`` ``"cancelled"``. The
worker writes nothing else to its stdout (llama.cpp's own output is redirected to stderr).
"""

from __future__ import annotations

import json
from typing import Any

MAX_LINE_BYTES = 16 * 1024 * 1024  # an embedding batch is the largest message


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    """One message; a line that is not a JSON object raises ``ValueError``."""
    value = json.loads(line)
    if not isinstance(value, dict):
        raise ValueError("protocol message is not an object")
    return value
