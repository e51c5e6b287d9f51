"""Failures: corrupted bytes, HTTP errors, retries and their limits, stalls, disk space."""

from __future__ import annotations

import errno
from typing import Any

import pytest

from app.lifecycle import writer as writer_module
from tests.conftest import asgi_client
from tests.integration.lifecycle.conftest import Harness, payload, wait_state
from tests.integration.test_foundation import assert_problem

SIZE = 200_000


async def _download(
    harness: Harness, model_id: str = "tiny", **settings: Any
) -> tuple[dict[str, Any], str]:
    async with asgi_client(harness.app(harness.settings(**settings))) as client:
        resp = await client.post(f"/v1/lifecycle/models/{model_id}/download")
        assert resp.status_code == 202, resp.text
        view = await wait_state(client, model_id, {"installed", "error"})
        return view, (await client.get("/metrics")).text


async def test_corrupted_bytes_fail_with_checksum_mismatch(harness: Harness) -> None:
    name = harness.model("tiny", payload(SIZE))
    harness.server.faults.corrupt[name] = 12_345
    view, metrics = await _download(harness)
    assert view["state"] == "error"
    assert view["error"]["code"] == "checksum_mismatch"
    assert view["error"]["retryable"] is False
    assert not harness.final("tiny").exists()
    assert harness.leftovers("tiny") == []  # the partial and its sidecar are gone
    assert len(harness.server.gets()) == 1  # a fresh download that fails its hash is final
    assert 'keel_download_failures_total{code="checksum_mismatch",model="tiny"} 1.0' in metrics
    assert 'keel_download_jobs{state="failed"} 1.0' in metrics


async def test_5xx_is_retried_then_installs(harness: Harness) -> None:
    harness.model("tiny", payload(SIZE))
    harness.server.faults.statuses = [503, 500]
    view, metrics = await _download(harness)
    assert view["state"] == "installed", view
    assert [r.status for r in harness.server.gets()] == [503, 500, 200]
    assert 'keel_download_failures_total{code="http_5xx",model="tiny"} 2.0' in metrics


async def test_http_retries_are_bounded(harness: Harness) -> None:
    harness.model("tiny", payload(SIZE))
    harness.server.faults.statuses = [503, 429, 502, 200]
    view, _ = await _download(harness)  # retries=2: three attempts, all failing
    assert view["state"] == "error"
    assert view["error"] == {
        "code": "download_failed",
        "retryable": True,
        "message": view["error"]["message"],
    }
    assert [r.status for r in harness.server.gets()] == [503, 429, 502]


async def test_other_4xx_is_not_retried(harness: Harness) -> None:
    harness.model("tiny", payload(SIZE), url=None)
    harness.server.faults.statuses = [403]
    view, _ = await _download(harness)
    assert view["state"] == "error"
    assert view["error"]["code"] == "download_failed"
    assert view["error"]["retryable"] is False
    assert len(harness.server.gets()) == 1


async def test_network_errors_get_more_retries(harness: Harness) -> None:
    harness.model("tiny", payload(SIZE))
    harness.server.faults.drops = [10_000, 20_000, 30_000, 40_000]  # 4 drops: all retried
    view, metrics = await _download(harness)
    assert view["state"] == "installed", view
    gets = harness.server.gets()
    assert len(gets) == 5
    assert all(g.range is not None for g in gets[1:])
    assert 'keel_download_resumes_total{model="tiny"} 4.0' in metrics


async def test_network_retries_are_bounded(harness: Harness) -> None:
    harness.model("tiny", payload(SIZE))
    harness.server.faults.drops = [1000] * 6
    view, _ = await _download(harness, network_retries=2)
    assert view["state"] == "error"
    assert view["error"]["retryable"] is True
    assert len(harness.server.gets()) == 3


async def test_stall_is_detected_and_resumed(harness: Harness) -> None:
    harness.model("tiny", payload(SIZE))
    harness.server.faults.stalls = [50_000]
    view, metrics = await _download(harness, stall_s=1.0)
    assert view["state"] == "installed", view
    _first, second = harness.server.gets()
    assert second.range is not None
    assert second.status == 206
    assert 'keel_download_failures_total{code="stalled",model="tiny"} 1.0' in metrics


async def test_retry_after_is_honoured_up_to_max_delay(harness: Harness) -> None:
    harness.model("tiny", payload(SIZE))
    harness.server.faults.statuses = [429]
    harness.server.faults.retry_after = "3600"
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    settings = harness.settings(base_delay_s=0.0, max_delay_s=7.0)
    async with asgi_client(harness.app(settings, sleep=sleep)) as client:
        await client.post("/v1/lifecycle/models/tiny/download")
        view = await wait_state(client, "tiny", {"installed", "error"})
    assert view["state"] == "installed"
    assert slept == [7.0]


async def test_disk_full_while_writing_is_final(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    harness.model("tiny", payload(SIZE))

    def full(fd: int, data: bytes | memoryview) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer_module, "write_all", full)
    view, metrics = await _download(harness)
    assert view["state"] == "error"
    assert view["error"]["code"] == "insufficient_storage"
    assert len(harness.server.gets()) == 1
    assert 'keel_download_failures_total{code="disk_full",model="tiny"} 1.0' in metrics


async def test_not_enough_disk_is_507_before_any_byte(harness: Harness) -> None:
    harness.model("tiny", payload(SIZE))
    app = harness.app(free_space=lambda path: SIZE - 1)
    async with asgi_client(app) as client:
        resp = await client.post("/v1/lifecycle/models/tiny/download")
        body = assert_problem(resp, 507, "insufficient_storage")
        assert body["needed_bytes"] == SIZE
        bundle = await client.post("/v1/lifecycle/downloads", json={"models": ["tiny"]})
        assert_problem(bundle, 507, "insufficient_storage")
        jobs = (await client.get("/v1/lifecycle/downloads")).json()["data"]
        view = (await client.get("/v1/lifecycle/models/tiny")).json()
    assert harness.server.requests == []
    assert jobs == []
    assert view["state"] == "absent"
    assert not (harness.data_dir / "models" / "tiny").exists()


async def test_preflight_counts_bytes_reserved_by_running_downloads(harness: Harness) -> None:
    harness.model("one", payload(SIZE, 1))
    harness.model("two", payload(SIZE, 2))
    harness.server.close_gate()  # "one" stays running, holding its reservation
    app = harness.app(free_space=lambda path: SIZE + SIZE // 2)
    async with asgi_client(app) as client:
        assert (await client.post("/v1/lifecycle/models/one/download")).status_code == 202
        resp = await client.post("/v1/lifecycle/models/two/download")
        body = assert_problem(resp, 507, "insufficient_storage")
        assert body["reserved_bytes"] == SIZE
        harness.server.open_gate()
        assert (await wait_state(client, "one", {"installed", "error"}))["state"] == "installed"
    assert [g.path for g in harness.server.gets()] == ["/one.bin"]
