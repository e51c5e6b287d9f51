"""The lifecycle API over real sockets: SSE progress, ids that could escape, storage roots,
verify, and a slow progress reader that must not stall a download."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.lifecycle.manifest import ManifestError
from app.lifecycle.ownership import ROOT_MARKER
from tests.conftest import asgi_client
from tests.fakes.servers import ServerThread
from tests.integration.lifecycle.conftest import Harness, payload, wait_state
from tests.integration.test_foundation import assert_problem

SIZE = 400_000


async def _events(
    client: httpx.AsyncClient, model_id: str, out: list[dict[str, Any]], first: Any = None
) -> None:
    async with client.stream("GET", f"/v1/lifecycle/models/{model_id}/events") as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        async for line in resp.aiter_lines():
            if line.startswith("data: "):
                out.append(json.loads(line[6:]))
                if first is not None and len(out) == 1:
                    first()


async def test_sse_progress_reaches_ready_with_percent_100(harness: Harness) -> None:
    harness.model("tiny", payload(SIZE))
    harness.server.close_gate()
    events: list[dict[str, Any]] = []
    with ServerThread(harness.app()) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=20) as client:
            resp = await client.post("/v1/lifecycle/models/tiny/download")
            assert resp.status_code == 202
            jobs = (await client.get("/v1/diagnostics")).json()["downloads"]
            assert [(j["kind"], j["model"]) for j in jobs] == [("download", "tiny")]
            await _events(client, "tiny", events, first=harness.server.open_gate)
            assert (await client.get("/v1/diagnostics")).json()["downloads"] == []
    phases = [e["phase"] for e in events]
    assert phases[0] in ("queued", "downloading")
    assert "downloading" in phases
    assert "verifying" in phases
    assert "promoting" in phases
    assert phases[-1] == "ready"
    last = events[-1]
    assert last["percent"] == 100.0
    assert last["bytes"] == last["total"] == SIZE
    downloading = [e for e in events if e["phase"] == "downloading"]
    assert [e["bytes"] for e in downloading] == sorted(e["bytes"] for e in downloading)
    for key in ("file", "attempt", "resumed_from", "bytes_per_s", "total"):
        assert key in downloading[-1]
    assert downloading[-1]["file"] == "tiny.bin"


async def test_sse_after_the_fact_reports_the_outcome(harness: Harness) -> None:
    harness.model("tiny", payload(SIZE))
    name = harness.model("bad", payload(1000), sha="0" * 64)
    assert name
    with ServerThread(harness.app()) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=20) as client:
            for model in ("tiny", "bad"):
                await client.post(f"/v1/lifecycle/models/{model}/download")
                await wait_state(client, model, {"installed", "error"})
            ready: list[dict[str, Any]] = []
            failed: list[dict[str, Any]] = []
            await _events(client, "tiny", ready)
            await _events(client, "bad", failed)
    assert [e["phase"] for e in ready] == ["ready"]
    assert ready[0]["percent"] == 100.0
    assert [e["phase"] for e in failed] == ["failed"]
    assert failed[0]["error"]["code"] == "checksum_mismatch"
    assert failed[0]["error"]["retryable"] is False


async def test_slow_progress_reader_does_not_stall_the_download(harness: Harness) -> None:
    harness.model("tiny", payload(SIZE))
    running = asgi_client(harness.app())
    async with running as client:
        lifecycle = running.state.lifecycle
        sub = lifecycle.hub.subscribe("tiny")  # subscribed, never read
        await client.post("/v1/lifecycle/models/tiny/download")
        view = await wait_state(client, "tiny", {"installed", "error"})
        assert view["state"] == "installed"
        queued = []
        while (event := await sub.get(0)) is not None:
            queued.append(event)
        sub.close()
    assert len(queued) <= lifecycle.hub.queue_size
    assert queued[-1].phase == "ready"
    assert sub.dropped > 0


@pytest.mark.parametrize(
    "bad", ["..", "..%2F..%2Fetc", "%2Fetc%2Fpasswd", "UPPER", "a" * 65, ".hidden", "x%00y"]
)
async def test_unsafe_model_ids_are_rejected(harness: Harness, bad: str) -> None:
    harness.model("tiny", payload(1000))
    async with asgi_client(harness.app()) as client:
        resp = await client.post(f"/v1/lifecycle/models/{bad}/download")
        assert resp.status_code in (404, 422), resp.text
        assert resp.headers["content-type"] == "application/problem+json"
        bundle = await client.post(
            "/v1/lifecycle/downloads", json={"models": [bad.replace("%2F", "/")]}
        )
        assert bundle.status_code == 422 or bundle.json()["code"] == "model_not_found"
    assert harness.server.requests == []
    # Only the root's own marker (written at start-up) is there.
    assert sorted(p.name for p in (harness.data_dir / "models").iterdir()) == [ROOT_MARKER]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("id", "../escape"),
        ("id", "/abs"),
        ("id", "a/b"),
        ("name", "../escape.bin"),
        ("name", "/etc/passwd"),
        ("name", "dir/file.bin"),
        ("name", "x.bin.partial"),
    ],
)
async def test_unsafe_manifest_names_stop_startup(harness: Harness, field: str, value: str) -> None:
    harness.model("tiny", payload(1000))
    path = harness.manifest()
    text = path.read_text()
    text = (
        text.replace('id = "tiny"', f'id = "{value}"')
        if field == "id"
        else text.replace('name = "tiny.bin"', f'name = "{value}"')
    )
    path.write_text(text)
    settings = harness._make_settings(database_url=harness.db_url, models_manifest=str(path))
    with pytest.raises(ManifestError, match=f"models\\[0\\].*{field}"):
        async with asgi_client(harness.app(settings)):
            pass


def _first_error_field(body: dict[str, Any]) -> str:
    field: str = body["errors"][0]["field"]
    return field


async def test_storage_roots_validate_persist_and_route_downloads(
    harness: Harness, tmp_path: Path
) -> None:
    harness.model("tiny", payload(1000))
    settings = harness.settings()
    custom = tmp_path / "llm-models"
    async with asgi_client(harness.app(settings)) as client:
        got = (await client.get("/v1/lifecycle/storage")).json()
        assert got["root"] is None
        assert got["default_root"] == str(harness.data_dir.absolute() / "models")
        assert {r["capability"] for r in got["effective"]} == {"llm", "embedding", "stt", "tts"}
        assert all(r["free_bytes"] > 0 for r in got["effective"])

        body = assert_problem(
            await client.put("/v1/lifecycle/storage", json={"root": "relative/dir"}),
            422,
            "validation_error",
        )
        assert _first_error_field(body) == "root"
        body = assert_problem(
            await client.put("/v1/lifecycle/storage", json={"overrides": {"llm": str(custom)}}),
            422,
            "validation_error",
        )
        assert _first_error_field(body) == "overrides.llm"
        assert "create" in str(body["detail"])
        assert str(custom) not in str(body)  # problems never echo paths
        assert_problem(
            await client.put("/v1/lifecycle/storage", json={"root": "/proc"}),
            422,
            "validation_error",
        )  # exists, not writable (even by root)
        assert_problem(
            await client.put("/v1/lifecycle/storage", json={"overrides": {"video": str(custom)}}),
            422,
            "validation_error",
        )
        dry = await client.put(
            "/v1/lifecycle/storage?dry_run=true",
            json={"overrides": {"llm": str(custom)}, "create": True},
        )
        assert dry.status_code == 200
        assert not custom.exists()

        ok = await client.put(
            "/v1/lifecycle/storage", json={"overrides": {"llm": str(custom)}, "create": True}
        )
        assert ok.status_code == 200, ok.text
        assert custom.is_dir()
    async with asgi_client(harness.app(settings)) as client:  # persisted across a restart
        got = (await client.get("/v1/lifecycle/storage")).json()
        assert got["overrides"] == {"llm": str(custom)}
        await client.post("/v1/lifecycle/models/tiny/download")
        assert (await wait_state(client, "tiny", {"installed", "error"}))["state"] == "installed"
    assert (custom / "tiny" / "tiny.bin").read_bytes() == harness.data["tiny"]
    assert not harness.final("tiny").exists()


async def test_verify_detects_a_flipped_byte_and_removes_the_file(harness: Harness) -> None:
    harness.model("tiny", payload(SIZE))
    async with asgi_client(harness.app()) as client:
        assert_problem(
            await client.post("/v1/lifecycle/models/tiny/verify"), 409, "model_not_ready"
        )
        await client.post("/v1/lifecycle/models/tiny/download")
        await wait_state(client, "tiny", {"installed"})
        ok = await client.post("/v1/lifecycle/models/tiny/verify")
        assert ok.status_code == 200
        assert ok.json()["ok"] is True
        final = harness.final("tiny")
        raw = bytearray(final.read_bytes())
        raw[SIZE // 2] ^= 0x01
        final.write_bytes(bytes(raw))
        bad = await client.post("/v1/lifecycle/models/tiny/verify")
        assert_problem(bad, 422, "checksum_mismatch")
        assert str(final) not in bad.text
        view = (await client.get("/v1/lifecycle/models/tiny")).json()
        assert view["state"] == "error"
        assert view["error"]["code"] == "checksum_mismatch"
    assert not final.exists()


async def test_models_list_shows_every_manifest_model(harness: Harness) -> None:
    harness.model("tiny", payload(1000))
    async with asgi_client(harness.app()) as client:
        data = (await client.get("/v1/lifecycle/models")).json()["data"]
        assert_problem(await client.get("/v1/lifecycle/models/nope"), 404, "model_not_found")
        assert_problem(await client.get("/v1/lifecycle/downloads/nope"), 404, "not_found")
    ids = [m["id"] for m in data]
    assert ids == ["gemma3-270m", "tiny"]
    gemma = data[0]
    assert gemma["state"] == "absent"
    assert gemma["size"] == 253113024
    assert gemma["progress"] == {"bytes": 0, "total": 253113024, "percent": 0.0}
    assert set(gemma) >= {"id", "name", "capability", "state", "progress"}
