"""The disk preflight of a download: room on each filesystem for what is still to fetch.

It runs synchronously between computing the plan and registering the job, so two requests
cannot both spend the same free bytes: bytes still to fetch by running jobs on the same
filesystem count as used.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from app.errors import InsufficientStorage
from app.lifecycle.job_events import RunningJob
from app.lifecycle.plan import ModelPlan
from app.lifecycle.storage import StorageRoots, device_of


def check_free_space(
    plans: Iterable[ModelPlan], storage: StorageRoots, runs: Sequence[RunningJob], margin: int
) -> None:
    """507 ``insufficient_storage`` unless each filesystem has room for what still has to be
    fetched, plus what running jobs there still fetch, plus ``margin``."""
    running_ids = {r.model.id for r in runs}
    need: dict[int, tuple[int, Path]] = {}
    for plan in plans:
        if plan.installed or plan.model.id in running_ids:
            continue
        root = storage.root(plan.model.capability)
        dev = device_of(root)
        total, _ = need.get(dev, (0, root))
        need[dev] = (total + plan.to_fetch, root)
    for dev, (bytes_needed, root) in need.items():
        free = storage.free_space(root)
        reserved = sum(r.remaining for r in runs if r.device == dev)
        if free < bytes_needed + reserved + margin:
            raise InsufficientStorage(
                "Not enough free space in the storage root for this download.",
                extra={
                    "needed_bytes": bytes_needed,
                    "reserved_bytes": reserved,
                    "margin_bytes": margin,
                    "free_bytes": free,
                },
            )
