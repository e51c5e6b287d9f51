"""``GET /v1/diagnostics``: each subject once, ``?subject=`` filter, downloads, loaded models."""

from __future__ import annotations

from typing import Any

import httpx

from app.readiness.runtime_view import RuntimeModel
from tests.conftest import asgi_client
from tests.integration.readiness.conftest import API_KEY, TOKEN, Setup, chat


async def _diag(client: httpx.AsyncClient, **params: Any) -> dict[str, Any]:
    resp = await client.get("/v1/diagnostics", params=params)
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


async def test_each_subject_once_and_the_filter(setup: Setup) -> None:
    second = dict(setup.settings().providers["cloud"])
    settings = setup.settings(
        providers={"cloud": setup.settings().providers["cloud"], "backup": second},
        routes={"chat": ["cloud/small", "backup/small"]},
    )
    setup.runtime.models = [RuntimeModel("gemma-mini", "ready", pid=4242, rss_bytes=420 << 20)]
    async with asgi_client(setup.app(settings)) as client:
        setup.upstream.faults.down = True
        for _ in range(3):
            await client.post("/v1/chat/completions", json=chat())
        everything = await _diag(client)
        cloud = await _diag(client, subject="provider:cloud")
        by_name = await _diag(client, subject="cloud")
        model = await _diag(client, subject="model:gemma-mini")
        bad = await client.get("/v1/diagnostics", params={"subject": "../etc"})
    subjects = [
        e["subject"]
        for section in ("providers", "models", "downloads")
        for e in everything[section]
    ]
    # provider:local: the local runtime's guard (limiter, breaker) for the manifest's models.
    assert sorted(subjects) == [
        "model:gemma-mini",
        "provider:backup",
        "provider:cloud",
        "provider:local",
    ]
    assert len(subjects) == len(set(subjects))
    assert set(everything) == {"runtime", "providers", "models", "downloads", "transitions"}
    assert everything["runtime"] == {"attached": True}
    (entry,) = cloud["providers"]
    assert entry["breaker"]["state"] == "open"
    assert entry["breaker"]["seconds_until_half_open"] is not None
    assert {"retry_budget", "limiter"} <= set(entry)
    assert cloud["models"] == []
    assert {t["subject"] for t in cloud["transitions"]} == {"breaker:cloud"}
    assert ("closed", "open") in [(t["from"], t["to"]) for t in cloud["transitions"]]
    assert [p["subject"] for p in by_name["providers"]] == ["provider:cloud"]
    assert [m["pid"] for m in model["models"]] == [4242]
    assert model["providers"] == []
    assert bad.status_code == 422
    assert bad.headers["content-type"] == "application/problem+json"


async def test_loaded_models_show_state_and_a_redacted_stderr_tail(setup: Setup) -> None:
    settings = setup.settings(api_token=TOKEN)
    tail = (
        "x" * 5000
        + f"\nllama_load: ok\nAuthorization: Bearer {TOKEN}\napi_key={API_KEY}\n"
        + "proxy http://user:hunter2@proxy.local:3128\nggml: done\n"
    )
    setup.runtime.models = [
        RuntimeModel(
            "gemma-mini",
            "ready",
            pid=777,
            rss_bytes=430_000_000,
            keep_alive_left_s=287.46,
            breaker_state="closed",
            stderr_tail=tail,
        )
    ]
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with asgi_client(setup.app(settings), headers=auth) as client:
        (model,) = (await _diag(client))["models"]
    assert model["state"] == "ready"
    assert model["pid"] == 777
    assert model["rss_bytes"] == 430_000_000
    assert model["keep_alive_left_s"] == 287.5
    assert model["breaker"]["state"] == "closed"
    stderr = model["stderr_tail"]
    assert len(stderr) <= 2048
    assert stderr.endswith("ggml: done\n")
    assert "llama_load: ok" in stderr
    for secret in (TOKEN, API_KEY, "hunter2"):
        assert secret not in stderr


async def test_running_downloads_are_listed(setup: Setup) -> None:
    setup.model("gemma-mini", "llm", "llama_cpp")
    setup.server.close_gate()
    async with asgi_client(setup.app()) as client:
        try:
            resp = await client.post("/v1/lifecycle/models/gemma-mini/download")
            assert resp.status_code == 202
            diag = await _diag(client, subject="download:gemma-mini")
        finally:
            setup.server.open_gate()
    (job,) = diag["downloads"]
    assert job["model"] == "gemma-mini"
    assert job["kind"] == "download"
    assert job["total"] == 64 * 1024
