"""What readiness, diagnostics and the status page need to see of the local model runtime.

The runtime (``app/runtime/``) owns the worker processes; this is the read-only window onto
it, kept as a small protocol so these views do not depend on how the runtime is built. An
adapter turns the runtime manager's own per-model snapshot into ``RuntimeModel``; tests pass a
fake. ``None`` where a runtime is not attached: models then read as installed-but-not-loaded.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

# The model states of DESIGN §6 that belong to the runtime (the lifecycle owns the others).
RUNTIME_STATES = ("loading", "ready", "unloading", "error", "cooldown", "half_open")

STDERR_TAIL_CHARS = 2048


@dataclass(frozen=True, slots=True)
class RuntimeModel:
    model: str
    state: str
    pid: int | None = None
    rss_bytes: int | None = None
    keep_alive_left_s: float | None = None
    breaker_state: str | None = None
    seconds_until_retry: float | None = None
    stderr_tail: str = ""


class ModelRuntimeView(Protocol):
    def runtime_models(self) -> Sequence[RuntimeModel]:
        """Every model the runtime knows (loaded, loading, failed or cooling down)."""
        ...


_SECRETS = (
    (re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=-]+"), r"\1 ***"),
    (
        re.compile(
            r"(?i)\b(api[_-]?key|token|secret|password|passwd|authorization)(\s*[=:]\s*)\S+"
        ),
        r"\1\2***",
    ),
    (re.compile(r"\bsk-[A-Za-z0-9_-]{6,}"), "sk-***"),
    (re.compile(r"(://[^/\s:@]+):[^@\s/]+@"), r"\1:***@"),
)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Mask what looks like a credential, and every known secret value, in free text."""
    for value in secrets:
        if len(value) >= 4:
            text = text.replace(value, "***")
    for pattern, repl in _SECRETS:
        text = pattern.sub(repl, text)
    return text


def runtime_model_json(m: RuntimeModel, secrets: Iterable[str] = ()) -> dict[str, Any]:
    tail = m.stderr_tail[-STDERR_TAIL_CHARS:]
    return {
        "subject": f"model:{m.model}",
        "model": m.model,
        "state": m.state,
        "pid": m.pid,
        "rss_bytes": m.rss_bytes,
        "keep_alive_left_s": _round(m.keep_alive_left_s),
        "breaker": {"state": m.breaker_state, "seconds_until_retry": _round(m.seconds_until_retry)},
        "stderr_tail": redact(tail, secrets),
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
