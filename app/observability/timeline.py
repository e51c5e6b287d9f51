"""A bounded ring of state transitions for ``/v1/diagnostics``.

Breakers, model state machines and download jobs append ``{at, subject, from, to, reason}``
here; the newest ``size`` entries are kept, the oldest fall off.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class Transition:
    at: float  # wall-clock seconds since the epoch
    subject: str  # e.g. "breaker:cloud", "model:gemma3-270m"
    from_state: str
    to_state: str
    reason: str

    def as_json(self) -> dict[str, Any]:
        d = asdict(self)
        return {
            "at": datetime.fromtimestamp(self.at, tz=UTC).isoformat(),
            "subject": d["subject"],
            "from": d["from_state"],
            "to": d["to_state"],
            "reason": d["reason"],
        }


class Timeline:
    def __init__(self, size: int = 500, wall_clock: Callable[[], float] = time.time) -> None:
        self._items: deque[Transition] = deque(maxlen=size)
        self._clock = wall_clock

    def record(self, subject: str, from_state: str, to_state: str, reason: str) -> Transition:
        item = Transition(self._clock(), subject, from_state, to_state, reason)
        self._items.append(item)
        return item

    def last(self, n: int | None = None) -> list[Transition]:
        items = list(self._items)
        return items if n is None else items[-n:]

    def __len__(self) -> int:
        return len(self._items)
