"""kill -9 during concurrent appends: every acknowledged append survives, retries of the ones
in flight (same Idempotency-Key) neither lose nor duplicate, and SQLite's integrity check
passes. A real ``keel serve`` process, restarted on the same store."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import httpx
import pytest

from tests.fakes.servers import ROOT, KeelProcess
from tests.integration.store.conftest import messages_of

WORKERS = 16
KILL_AFTER_ACKS = 300
KILL_AFTER_S = 4.0


async def _hammer(
    url: str, cid: str, acked: dict[str, int], in_flight: set[str], stop: asyncio.Event
) -> None:
    limits = httpx.Limits(max_connections=WORKERS)
    async with httpx.AsyncClient(base_url=url, timeout=10, limits=limits) as client:

        async def worker(w: int) -> None:
            for i in range(10_000):
                if stop.is_set():
                    return
                key = f"w{w}-{i}"
                in_flight.add(key)
                try:
                    resp = await client.post(
                        f"/v1/conversations/{cid}/messages",
                        headers={"Idempotency-Key": key},
                        json={"messages": [{"role": "user", "content": key}]},
                    )
                except httpx.HTTPError:
                    return  # the server died under us: this one stays in flight
                assert resp.status_code == 201, resp.text
                acked[key] = resp.json()["messages"][0]["seq"]
                in_flight.discard(key)

        await asyncio.gather(*[worker(w) for w in range(WORKERS)])


@pytest.mark.slow
@pytest.mark.chaos
@pytest.mark.timeout(90)
async def test_acknowledged_appends_survive_kill_9(
    tmp_path: Path, data_dir: Path, db_url: str
) -> None:
    env = {
        "KEEL_DATA_DIR": str(data_dir),
        "KEEL_DATABASE_URL": db_url,
        "PYTHONPATH": str(ROOT),
        "KEEL_LOG_LEVEL": "WARNING",
    }
    server = KeelProcess(env, tmp_path).start()
    try:
        created = httpx.post(server.url + "/v1/conversations", json={"title": "crash"})
        cid = created.json()["id"]
        acked: dict[str, int] = {}
        in_flight: set[str] = set()
        stop = asyncio.Event()
        load = asyncio.create_task(_hammer(server.url, cid, acked, in_flight, stop))
        deadline = time.monotonic() + KILL_AFTER_S
        while len(acked) < KILL_AFTER_ACKS and time.monotonic() < deadline and not load.done():
            await asyncio.sleep(0.01)
        server.kill9()  # mid-way: requests are in flight right now
        stop.set()
        await load
    finally:
        server.stop()
    assert len(acked) >= 20, server.logs()[-2000:]
    assert in_flight  # the kill did land mid-way, with requests unanswered

    server = KeelProcess(env, tmp_path).start()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            conv = (await client.get(f"/v1/conversations/{cid}")).json()
            items = await messages_of(client, cid)
            stored = {m["content"]: m["seq"] for m in items}
            # Every acknowledged append is there, at the seq it was acknowledged with.
            assert {k: stored.get(k) for k in acked} == acked
            assert [m["seq"] for m in items] == list(range(1, len(stored) + 1))
            assert conv["version"] == len(stored) + 1
            # The client retries what it never heard back about: replayed if it committed,
            # applied now if it did not; either way exactly once.
            for key in sorted(in_flight):
                retry = await client.post(
                    f"/v1/conversations/{cid}/messages",
                    headers={"Idempotency-Key": key},
                    json={"messages": [{"role": "user", "content": key}]},
                )
                assert retry.status_code == 201, retry.text
            contents = [m["content"] for m in await messages_of(client, cid)]
            assert sorted(contents) == sorted(set(acked) | in_flight)
            assert len(contents) == len(set(contents))
            report = (await client.post(f"/v1/conversations/{cid}/verify")).json()
            assert report["ok"] is True
    finally:
        server.stop()

    if db_url.startswith("sqlite"):
        db = sqlite3.connect(data_dir / "keel.db")
        try:
            assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        finally:
            db.close()
