"""Jobs: joining, bounded concurrency, cancel, shutdown and resume, stale partials, dry run."""

from __future__ import annotations

import asyncio
import json
import os
import time

import httpx
from sqlalchemy import func, select

from app.lifecycle.ownership import PARTIAL_MARK, ROOT_MARKER
from app.store.database import Database
from app.store.tables import download_jobs
from tests.conftest import asgi_client
from tests.integration.lifecycle.conftest import Harness, payload, sha256, wait_for, wait_state

SIZE = 200_000


async def _job_rows(harness: Harness) -> list[dict[str, object]]:
    db = Database(harness.db_url)
    try:
        async with db.read() as conn:
            rows = (await conn.execute(select(download_jobs))).all()
        return [dict(r._mapping) for r in rows]
    finally:
        await db.dispose()


async def test_concurrent_requests_join_one_upstream_stream(harness: Harness) -> None:
    data = payload(SIZE)
    harness.model("tiny", data)
    harness.server.close_gate()
    async with asgi_client(harness.app()) as client:
        first, second = await asyncio.gather(
            client.post("/v1/lifecycle/models/tiny/download"),
            client.post("/v1/lifecycle/downloads", json={"models": ["tiny"]}),
        )
        third = await client.post("/v1/lifecycle/models/tiny/download")
        assert first.status_code == second.status_code == third.status_code == 202
        job_id = first.json()["job"]["id"]
        assert second.json()["jobs"][0]["id"] == job_id
        assert third.json()["job"]["id"] == job_id
        harness.server.open_gate()
        assert (await wait_state(client, "tiny", {"installed", "error"}))["state"] == "installed"
        again = await client.post("/v1/lifecycle/models/tiny/download")
        assert again.status_code == 200
        assert again.json()["job"] is None
    assert len(harness.server.gets()) == 1
    assert len(await _job_rows(harness)) == 1
    assert sha256(harness.final("tiny").read_bytes()) == sha256(data)


async def test_concurrent_downloads_are_bounded(harness: Harness) -> None:
    harness.model("one", payload(SIZE, 1))
    harness.model("two", payload(SIZE, 2))
    harness.server.close_gate()
    async with asgi_client(harness.app(harness.settings(max_concurrent=1))) as client:
        resp = await client.post("/v1/lifecycle/downloads", json={"models": ["one", "two"]})
        assert resp.status_code == 202
        await wait_for(lambda: len(harness.server.gets()) == 1)
        await asyncio.sleep(0.1)
        two = (await client.get("/v1/lifecycle/models/two")).json()
        assert two["state"] == "downloading"
        assert two["job"]["phase"] == "queued"
        assert len(harness.server.gets()) == 1
        harness.server.open_gate()
        for model in ("one", "two"):
            assert (await wait_state(client, model, {"installed", "error"}))["state"] == "installed"
    assert len(harness.server.gets()) == 2


async def test_user_cancel_stops_and_deletes_the_partial(harness: Harness) -> None:
    harness.model("tiny", payload(SIZE))
    harness.server.faults.stalls = [100_000]  # half the file arrives, then nothing
    async with asgi_client(harness.app(harness.settings(stall_s=30))) as client:
        job = (await client.post("/v1/lifecycle/models/tiny/download")).json()["job"]
        partial = harness.final("tiny").with_name("tiny.bin.partial")
        await wait_for(lambda: partial.exists() and partial.stat().st_size > 0)
        resp = await client.delete(f"/v1/lifecycle/downloads/{job['id']}")
        assert resp.status_code == 200
        assert resp.json()["state"] == "cancelled"
        view = (await client.get("/v1/lifecycle/models/tiny")).json()
        assert view["state"] == "absent"
        assert view["progress"]["bytes"] == 0
    assert harness.leftovers("tiny") == []
    [row] = await _job_rows(harness)
    assert row["state"] == "cancelled"


async def test_delete_model_cancels_download_and_removes_files(harness: Harness) -> None:
    harness.model("tiny", payload(SIZE))
    harness.server.faults.stalls = [100_000]
    async with asgi_client(harness.app(harness.settings(stall_s=30))) as client:
        await client.post("/v1/lifecycle/models/tiny/download")
        partial = harness.final("tiny").with_name("tiny.bin.partial")
        await wait_for(lambda: partial.exists() and partial.stat().st_size > 0)
        gone = await client.delete("/v1/lifecycle/models/tiny")
        assert gone.status_code == 200
        assert gone.json()["state"] == "absent"
        assert gone.json()["cancelled_job"]
        harness.server.release()
        # Installed files go too.
        await client.post("/v1/lifecycle/models/tiny/download")
        assert (await wait_state(client, "tiny", {"installed", "error"}))["state"] == "installed"
        assert harness.final("tiny").exists()
        dry = await client.delete("/v1/lifecycle/models/tiny", params={"dry_run": "true"})
        assert dry.json()["dry_run"] is True
        assert harness.final("tiny").exists()
        assert (await client.delete("/v1/lifecycle/models/tiny")).json()["state"] == "absent"
    assert not harness.final("tiny").exists()
    assert not harness.final("tiny").parent.exists()


async def wait_progress(client: httpx.AsyncClient, model_id: str, received: int) -> None:
    """Poll the model's progress until the downloader has received ``received`` bytes."""
    async with asyncio.timeout(15):
        while True:
            view = (await client.get(f"/v1/lifecycle/models/{model_id}")).json()
            if view["progress"]["bytes"] >= received:
                return
            await asyncio.sleep(0.01)


async def test_shutdown_keeps_partial_and_restart_resumes_by_itself(harness: Harness) -> None:
    data = payload(SIZE)
    harness.model("tiny", data)
    harness.server.faults.stalls = [120_000]
    settings = harness.settings(stall_s=30)
    partial = harness.final("tiny").with_name("tiny.bin.partial")
    async with asgi_client(harness.app(settings)) as client:
        await client.post("/v1/lifecycle/models/tiny/download")
        await wait_for(lambda: partial.exists() and partial.stat().st_size >= 64 * 1024)
        # Shut down once the downloader has every byte the server sent before stalling, not
        # merely once the first batch is on disk: on a busy machine the rest may still be in
        # flight then, and bytes never received cannot be kept.
        await wait_progress(client, "tiny", 120_000)
    harness.server.release()
    kept = partial.stat().st_size
    assert kept == 120_000  # the batch still in memory was written at shutdown
    [row] = await _job_rows(harness)
    assert row["state"] == "running"  # still owed: resumed at the next start
    async with asgi_client(harness.app(settings)) as client:  # no new request
        view = await wait_state(client, "tiny", {"installed", "error"})
        assert view["state"] == "installed", view
        transitions = [
            t
            for t in (await client.get("/metrics")).text.splitlines()
            if t.startswith("keel_download_resumes_total")
        ]
    last = harness.server.gets()[-1]
    assert last.range == f"bytes={kept}-"
    assert last.status == 206
    assert sha256(harness.final("tiny").read_bytes()) == sha256(data)
    assert transitions == ['keel_download_resumes_total{model="tiny"} 1.0']
    [row] = await _job_rows(harness)
    assert row["state"] == "succeeded"


async def test_stale_partials_without_a_job_are_reaped_by_age(harness: Harness) -> None:
    harness.model("tiny", payload(SIZE))
    folder = harness.final("tiny").parent
    folder.mkdir(parents=True)
    old = folder / "tiny.bin.partial"
    old_sidecar = folder / "tiny.bin.partial.json"
    fresh = folder / "other.bin.partial"
    for path in (old, fresh):
        path.write_bytes(b"x")
    old_sidecar.write_text(json.dumps({"keel": PARTIAL_MARK}))  # Keel's mark (ownership.py)
    ancient = time.time() - 3600
    os.utime(old, (ancient, ancient))
    os.utime(old_sidecar, (ancient, ancient))
    async with asgi_client(harness.app(harness.settings(partial_max_age_s=600))):
        await wait_for(lambda: not old.exists() and not old_sidecar.exists())
    assert fresh.exists()


async def test_dry_run_plans_and_changes_nothing(harness: Harness) -> None:
    harness.model("tiny", payload(SIZE))
    harness.model("other", payload(SIZE, 9))
    folder = harness.final("tiny").parent
    folder.mkdir(parents=True)
    (folder / "tiny.bin.partial").write_bytes(b"\0" * 1000)
    (folder / "tiny.bin.partial.json").write_text("{}")  # no matching sidecar: refetch all
    before = sorted(
        p.relative_to(harness.data_dir)
        for p in harness.data_dir.rglob("*")
        if "keel.db" not in p.name and p.name != ROOT_MARKER  # the marker comes at start-up
    )
    app = harness.app(free_space=lambda path: 10**9)
    async with asgi_client(app) as client:
        resp = await client.post(
            "/v1/lifecycle/downloads", json={"models": ["tiny", "other"], "dry_run": True}
        )
        single = await client.post("/v1/lifecycle/models/tiny/download?dry_run=true")
        metrics = (await client.get("/metrics")).text
    assert resp.status_code == 200, resp.text
    plan = resp.json()["plan"]
    assert plan["bytes_to_fetch"] == 2 * SIZE - 1000  # the partial counts as already fetched
    assert list(plan["free_bytes"].values()) == [10**9]
    tiny = plan["models"][0]
    assert tiny["action"] == "download"
    assert tiny["files"][0]["target_path"] == str(harness.final("tiny"))
    assert tiny["files"][0]["partial_bytes"] == 1000
    assert single.status_code == 200
    assert single.json()["dry_run"] is True
    after = sorted(
        p.relative_to(harness.data_dir)
        for p in harness.data_dir.rglob("*")
        if "keel.db" not in p.name and p.name != ROOT_MARKER  # the marker comes at start-up
    )
    assert after == before
    assert harness.server.requests == []
    assert await _job_rows(harness) == []
    assert "keel_download_jobs{" not in metrics
    db = Database(harness.db_url)
    async with db.read() as conn:
        assert (await conn.execute(select(func.count()).select_from(download_jobs))).scalar() == 0
    await db.dispose()


async def test_file_urls_download_like_http(harness: Harness) -> None:
    data = payload(SIZE, 7)
    source = harness.tmp_path / "local model.bin"
    source.write_bytes(data)
    harness.model("local", data, url=f"file://{str(source).replace(' ', '%20')}")
    async with asgi_client(harness.app()) as client:
        await client.post("/v1/lifecycle/models/local/download")
        assert (await wait_state(client, "local", {"installed", "error"}))["state"] == "installed"
    assert harness.final("local").read_bytes() == data
    assert harness.server.requests == []


async def test_idempotency_key_replays_the_first_answer(harness: Harness) -> None:
    harness.model("tiny", payload(SIZE))
    harness.model("other", payload(SIZE, 3))
    async with asgi_client(harness.app()) as client:
        key = {"Idempotency-Key": "pull-tiny-1"}
        first = await client.post("/v1/lifecycle/models/tiny/download", headers=key)
        assert first.status_code == 202
        assert (await wait_state(client, "tiny", {"installed", "error"}))["state"] == "installed"
        again = await client.post("/v1/lifecycle/models/tiny/download", headers=key)
        assert again.status_code == 202  # the first answer, not "already installed"
        assert again.headers["idempotent-replayed"] == "true"
        assert again.json()["job"]["id"] == first.json()["job"]["id"]
        other = await client.post("/v1/lifecycle/models/other/download", headers=key)
        assert other.status_code == 422
        assert other.json()["code"] == "idempotency_key_reused"
        bundle = {"Idempotency-Key": "bundle-1"}
        b1 = await client.post(
            "/v1/lifecycle/downloads", json={"models": ["other"]}, headers=bundle
        )
        b2 = await client.post(
            "/v1/lifecycle/downloads", json={"models": ["other"]}, headers=bundle
        )
        assert b1.status_code == b2.status_code == 202
        assert b2.json() == b1.json()
        assert b2.headers["idempotent-replayed"] == "true"
        await wait_state(client, "other", {"installed", "error"})
    assert len(harness.server.gets()) == 2
    assert len(await _job_rows(harness)) == 2


async def test_a_refused_request_does_not_burn_its_idempotency_key(harness: Harness) -> None:
    harness.model("tiny", payload(SIZE))
    free = {"bytes": 10}
    app = harness.app(free_space=lambda path: free["bytes"])
    async with asgi_client(app) as client:
        key = {"Idempotency-Key": "retry-me"}
        refused = await client.post("/v1/lifecycle/models/tiny/download", headers=key)
        assert refused.status_code == 507
        free["bytes"] = 10**9
        accepted = await client.post("/v1/lifecycle/models/tiny/download", headers=key)
        assert accepted.status_code == 202
        assert "idempotent-replayed" not in accepted.headers
        await wait_state(client, "tiny", {"installed", "error"})
