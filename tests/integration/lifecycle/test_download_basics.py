"""Clean downloads, resume after a dropped connection, a server that ignores Range, 416."""

from __future__ import annotations

import hashlib
import json

from tests.conftest import asgi_client
from tests.integration.lifecycle.conftest import Harness, payload, sha256, wait_state

SIZE = 300_000


async def test_clean_download_installs_verified_file(harness: Harness) -> None:
    data = payload(SIZE)
    harness.model("tiny", data)
    running = asgi_client(harness.app())
    async with running as client:
        resp = await client.post("/v1/lifecycle/models/tiny/download")
        assert resp.status_code == 202, resp.text
        job = resp.json()["job"]
        assert job["model_id"] == "tiny"
        view = await wait_state(client, "tiny", {"installed", "error"})
        assert view["state"] == "installed", view
        assert view["progress"] == {"bytes": SIZE, "total": SIZE, "percent": 100.0}
        done = (await client.get(f"/v1/lifecycle/downloads/{job['id']}")).json()
        metrics = (await client.get("/metrics")).text
        timeline = [(t.subject, t.from_state, t.to_state) for t in running.state.timeline.last()]
    assert timeline == [
        ("download:tiny", "none", "queued"),
        ("download:tiny", "queued", "running"),
        ("download:tiny", "running", "succeeded"),
    ]
    assert done["state"] == "succeeded"
    assert sha256(harness.final("tiny").read_bytes()) == sha256(data)
    assert harness.leftovers("tiny") == []
    gets = harness.server.gets()
    assert len(gets) == 1
    assert gets[0].range is None
    assert gets[0].accept_encoding == "identity"
    assert f'keel_download_bytes_total{{model="tiny"}} {float(SIZE)}' in metrics
    assert 'keel_download_duration_seconds_count{model="tiny"} 1.0' in metrics
    assert 'keel_download_jobs{state="succeeded"} 1.0' in metrics


async def test_dropped_connection_resumes_with_range_and_if_range(harness: Harness) -> None:
    data = payload(SIZE, seed=1)
    name = harness.model("tiny", data)
    harness.server.faults.drops = [120_000]
    async with asgi_client(harness.app()) as client:
        assert (await client.post("/v1/lifecycle/models/tiny/download")).status_code == 202
        view = await wait_state(client, "tiny", {"installed", "error"})
        metrics = (await client.get("/metrics")).text
    assert view["state"] == "installed", view
    first, second = harness.server.gets()
    assert first.range is None
    assert second.status == 206
    assert second.range is not None
    start = int(second.range.removeprefix("bytes=").rstrip("-"))
    assert start == 120_000  # every byte that arrived before the drop was kept
    assert second.if_range == harness.server.files[name].etag
    assert sha256(harness.final("tiny").read_bytes()) == sha256(data)
    assert harness.leftovers("tiny") == []
    assert 'keel_download_resumes_total{model="tiny"} 1.0' in metrics
    assert 'keel_download_failures_total{code="network_error",model="tiny"} 1.0' in metrics


async def test_server_ignoring_range_restarts_from_zero(harness: Harness) -> None:
    data = payload(SIZE, seed=2)
    harness.model("tiny", data)
    harness.server.faults.drops = [150_000]
    harness.server.faults.ignore_range = True
    async with asgi_client(harness.app()) as client:
        await client.post("/v1/lifecycle/models/tiny/download")
        view = await wait_state(client, "tiny", {"installed", "error"})
    assert view["state"] == "installed", view
    _first, second = harness.server.gets()
    assert second.range is not None
    assert second.status == 200
    assert sha256(harness.final("tiny").read_bytes()) == sha256(data)
    assert harness.leftovers("tiny") == []


def _seed_partial(harness: Harness, model_id: str, name: str, data: bytes, content: bytes) -> None:
    folder = harness.final(model_id, name).parent
    folder.mkdir(parents=True)
    (folder / f"{name}.partial").write_bytes(content)
    served = harness.server.files[name]
    (folder / f"{name}.partial.json").write_text(
        json.dumps(
            {
                "url": f"{harness.server.base_url}/{name}",
                "sha256": hashlib.sha256(data).hexdigest(),
                "size": len(data),
                "etag": served.etag,
                "last_modified": served.last_modified,
                "bytes": len(content),
            }
        )
    )


async def test_complete_partial_answered_416_is_verified_without_refetch(harness: Harness) -> None:
    data = payload(SIZE, seed=3)
    name = harness.model("tiny", data)
    _seed_partial(harness, "tiny", name, data, data)
    async with asgi_client(harness.app()) as client:
        await client.post("/v1/lifecycle/models/tiny/download")
        view = await wait_state(client, "tiny", {"installed", "error"})
    assert view["state"] == "installed", view
    [only] = harness.server.gets()
    assert only.range == f"bytes={SIZE}-"
    assert only.status == 416
    assert harness.server.body_bytes_sent == 0
    assert harness.final("tiny").read_bytes() == data
    assert harness.leftovers("tiny") == []


async def test_complete_but_wrong_partial_is_refetched_from_zero(harness: Harness) -> None:
    data = payload(SIZE, seed=4)
    name = harness.model("tiny", data)
    _seed_partial(harness, "tiny", name, data, b"\x00" * SIZE)
    async with asgi_client(harness.app()) as client:
        await client.post("/v1/lifecycle/models/tiny/download")
        view = await wait_state(client, "tiny", {"installed", "error"})
    assert view["state"] == "installed", view
    first, second = harness.server.gets()
    assert first.status == 416
    assert second.range is None
    assert second.status == 200
    assert harness.final("tiny").read_bytes() == data


async def test_partial_of_another_file_is_discarded(harness: Harness) -> None:
    data = payload(SIZE, seed=5)
    name = harness.model("tiny", data)
    _seed_partial(harness, "tiny", name, b"other" * 10, data[:1000])  # sidecar: other sha/size
    async with asgi_client(harness.app()) as client:
        await client.post("/v1/lifecycle/models/tiny/download")
        view = await wait_state(client, "tiny", {"installed", "error"})
    assert view["state"] == "installed", view
    [only] = harness.server.gets()
    assert only.range is None
    assert harness.final("tiny").read_bytes() == data
