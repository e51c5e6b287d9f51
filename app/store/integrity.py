"""Checksum verification of stored items, and what Keel does when one fails.

Every read of item content goes through ``Integrity.verified``: a row whose checksum does not
match is never returned; the read answers 500 ``data_corrupted`` (no content, no internals),
the corruption is counted, logged with the ids and put on the diagnostics timeline.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from app.errors import DataCorrupted
from app.observability.metrics import Metrics
from app.observability.timeline import Timeline
from app.store.checksums import message_checksum
from app.store.conversation_models import Message
from app.store.conversation_repository import StoredMessage

log = logging.getLogger("keel.store")


def intact(conversation_id: str, m: Message, checksum: str) -> bool:
    parts = None if m.parts is None else [(p.type, p.text) for p in m.parts]
    return message_checksum(conversation_id, m.seq, m.role, m.content, parts) == checksum


class Integrity:
    def __init__(self, metrics: Metrics, timeline: Timeline | None) -> None:
        self.metrics = metrics
        self.timeline = timeline

    def verified(self, conversation_id: str, stored: Sequence[StoredMessage]) -> list[Message]:
        """The messages, if every checksum holds; otherwise 500 ``data_corrupted``."""
        bad = [(m.id, m.seq) for m, checksum in stored if not intact(conversation_id, m, checksum)]
        if bad:
            self.report(conversation_id, bad, [])
            raise DataCorrupted(
                "Stored items of this conversation failed their integrity check, so none "
                "are returned. POST .../verify reports which."
            )
        return [m for m, _ in stored]

    def report(self, conversation_id: str, bad: list[tuple[str, int]], missing: list[int]) -> None:
        if not bad and not missing:
            return
        self.metrics.data_corruption.labels(kind="message").inc(max(1, len(bad)))
        log.error(
            "conversation failed its integrity check",
            extra={
                "conversation_id": conversation_id,
                "corrupted_message_ids": [i for i, _ in bad],
                "corrupted_seqs": [s for _, s in bad],
                "missing_seqs": missing[:50],
            },
        )
        if self.timeline is not None:
            self.timeline.record(
                f"conversation:{conversation_id}",
                "ok",
                "corrupted",
                "message_checksum_mismatch" if bad else "message_missing",
            )
