"""``GET /v1/readiness``: per capability status, reasons with their fixes, degraded modes."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from app.lifecycle.cli import import_model
from app.readiness import checks
from app.readiness.runtime_view import RuntimeModel
from tests.conftest import asgi_client
from tests.integration.readiness.conftest import API_KEY, API_KEY_ENV, TOKEN, Setup, chat


async def _readiness(client: httpx.AsyncClient, refresh: bool = True) -> dict[str, Any]:
    resp = await client.get("/v1/readiness", params={"refresh": "true"} if refresh else {})
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "application/json"
    body: dict[str, Any] = resp.json()
    return body


def _codes(cap: dict[str, Any]) -> set[str]:
    return {r["code"] for r in cap["reasons"]}


async def _open_breaker(client: httpx.AsyncClient, setup: Setup) -> None:
    setup.upstream.faults.down = True
    for _ in range(2):
        assert (await client.post("/v1/chat/completions", json=chat())).status_code >= 500
    assert (await client.post("/v1/chat/completions", json=chat())).json()["code"] == "circuit_open"


async def test_llm_unavailable_with_both_reasons_then_usable_after_import(setup: Setup) -> None:
    setup.model("gemma-mini", "llm", "llama_cpp")
    setup.model("whisper-mini", "stt", "whisper")
    settings = setup.settings()
    async with asgi_client(setup.app(settings)) as client:
        await _open_breaker(client, setup)
        before = await _readiness(client)
        llm = before["capabilities"]["llm"]
        assert llm["status"] == "unavailable"
        assert {"model_absent", "provider_circuit_open"} <= _codes(llm)
        actions = {r["code"]: r["action"] for r in llm["reasons"]}
        assert "POST /v1/lifecycle/models/gemma-mini/download" in actions["model_absent"]
        assert "GET /v1/diagnostics?subject=provider:cloud" in actions["provider_circuit_open"]
        stt_before = before["capabilities"]["stt"]
        assert stt_before["status"] == "unavailable"
        assert _codes(stt_before) == {"model_absent", "runtime_missing"}
        assert before["capabilities"]["tts"]["status"] == "unavailable"
        assert _codes(before["capabilities"]["tts"]) == {"not_configured"}

        await asyncio.to_thread(import_model, settings, "gemma-mini", setup.files["gemma-mini"])
        after = await _readiness(client)
        llm = after["capabilities"]["llm"]
        assert llm["status"] == "degraded"  # the model works; the provider is still down
        assert _codes(llm) == {"provider_circuit_open"}
        assert llm["usable"] == ["model:gemma-mini"]
        assert after["capabilities"]["stt"] == stt_before

        setup.upstream.faults.down = False
        async with asyncio.timeout(20):  # the breaker's open_s, then one trial call closes it
            while (await client.post("/v1/chat/completions", json=chat())).status_code != 200:
                await asyncio.sleep(0.05)
        final = await _readiness(client)
        assert final["capabilities"]["llm"]["status"] == "available"
        assert final["capabilities"]["llm"]["reasons"] == []
        assert final["capabilities"]["stt"] == stt_before


async def test_missing_runtime_and_key_are_reasons_with_fixes(
    setup: Setup, monkeypatch: Any
) -> None:
    setup.model("gemma-mini", "llm", "llama_cpp")
    setup.found.clear()  # llama_cpp is not importable
    monkeypatch.delenv(API_KEY_ENV)
    settings = setup.settings()
    async with asgi_client(setup.app(settings)) as client:
        await asyncio.to_thread(import_model, settings, "gemma-mini", setup.files["gemma-mini"])
        llm = (await _readiness(client))["capabilities"]["llm"]
    assert llm["status"] == "unavailable"
    by_code = {r["code"]: r for r in llm["reasons"]}
    assert set(by_code) == {"runtime_missing", "provider_key_missing"}
    assert "keel[local]" in by_code["runtime_missing"]["action"]
    assert API_KEY_ENV in by_code["provider_key_missing"]["action"]


async def test_model_cooldown_from_the_runtime(setup: Setup) -> None:
    setup.model("gemma-mini", "llm", "llama_cpp")
    settings = setup.settings(providers={}, routes={})
    async with asgi_client(setup.app(settings)) as client:
        await asyncio.to_thread(import_model, settings, "gemma-mini", setup.files["gemma-mini"])
        assert (await _readiness(client))["capabilities"]["llm"]["status"] == "available"
        setup.runtime.models = [
            RuntimeModel("gemma-mini", "cooldown", breaker_state="open", seconds_until_retry=42)
        ]
        llm = (await _readiness(client, refresh=False))["capabilities"]["llm"]
        assert llm["status"] == "unavailable"
        (cooldown,) = llm["reasons"]
        assert cooldown["code"] == "model_cooldown"
        assert "42 s" in cooldown["message"]
        assert "POST /v1/lifecycle/models/gemma-mini/load" in cooldown["action"]
        setup.runtime.models = [RuntimeModel("gemma-mini", "ready", pid=4242)]
        assert (await _readiness(client, refresh=False))["capabilities"]["llm"]["status"] == (
            "available"
        )


async def test_low_disk_degrades_a_capability_with_installed_models(setup: Setup) -> None:
    setup.model("gemma-mini", "llm", "llama_cpp")
    settings = setup.settings(providers={}, routes={})
    async with asgi_client(setup.app(settings, free_space=lambda path: 1024)) as client:
        await asyncio.to_thread(import_model, settings, "gemma-mini", setup.files["gemma-mini"])
        report = await _readiness(client)
        metrics = (await client.get("/metrics")).text
    llm = report["capabilities"]["llm"]
    assert llm["status"] == "degraded"
    assert _codes(llm) == {"disk_low"}
    (root,) = report["storage"]
    assert root["free_bytes"] == 1024
    assert root["writable"] is True
    assert set(root["capabilities"]) == {"llm", "embedding", "stt", "tts"}
    assert 'keel_readiness_status{capability="llm",status="degraded"} 1.0' in metrics
    assert 'keel_readiness_reasons{capability="llm",reason="disk_low"} 1.0' in metrics
    assert 'keel_storage_free_bytes{capability="llm"} 1024.0' in metrics


async def test_a_probe_still_running_reads_running_and_the_endpoint_answers(
    setup: Setup, monkeypatch: Any
) -> None:
    release = asyncio.Event()
    real = checks.probe_database

    async def slow_probe(db: Any) -> checks.CheckResult:
        await release.wait()
        return await real(db)

    monkeypatch.setattr(checks, "probe_database", slow_probe)
    settings = setup.settings()
    async with asgi_client(setup.app(settings)) as client:
        report = await _readiness(client, refresh=False)
        database = next(c for c in report["checks"] if c["name"] == "database")
        assert database["status"] == "running"
        assert report["complete"] is False
        release.set()
        report = await _readiness(client)
        database = next(c for c in report["checks"] if c["name"] == "database")
        assert database["status"] == "ok"
        assert report["complete"] is True


async def test_text_report_lists_every_check_and_no_secret(setup: Setup) -> None:
    setup.model("gemma-mini", "llm", "llama_cpp")
    setup.model("whisper-mini", "stt", "whisper")
    settings = setup.settings(api_token=TOKEN)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with asgi_client(setup.app(settings), headers=auth) as client:
        await _open_breaker(client, setup)
        report = await _readiness(client)
        resp = await client.get("/v1/readiness", params={"format": "text"})
        diagnostics = (await client.get("/v1/diagnostics")).text
        unauthorized = await httpx.AsyncClient(
            transport=client._transport, base_url="http://localhost"
        ).get("/v1/readiness")
    assert unauthorized.status_code == 401
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    text = resp.text
    assert "keel " in text
    assert "Python " in text
    assert str(settings.data_dir.absolute()) in text
    for check in report["checks"]:
        line = next(line for line in text.splitlines() if f"] {check['name']} " in line)
        assert " ms" in line  # each check carries its duration
        for code in check["reasons"]:
            assert code in line
    for cap, body in report["capabilities"].items():
        assert any(line.split()[:2] == [cap, body["status"]] for line in text.splitlines())
    assert "provider_circuit_open" in text
    assert "free " in text
    for body in (text, resp.text, str(report), diagnostics):
        assert API_KEY not in body
        assert TOKEN not in body


async def test_probes_are_cached_for_the_ttl_then_rerun_in_the_background(
    setup: Setup, monkeypatch: Any
) -> None:
    now = [1000.0]
    calls: list[float] = []
    real = checks.probe_database

    async def counted(db: Any) -> checks.CheckResult:
        calls.append(now[0])
        return await real(db)

    monkeypatch.setattr(checks, "probe_database", counted)
    settings = setup.settings(readiness={"ttl_s": 5.0, "refresh_interval_s": 3600})
    app = setup.app(settings, readiness_clock=lambda: now[0])
    async with asgi_client(app) as client:
        await _readiness(client)  # waits for a run
        first = len(calls)
        assert first >= 1
        for _ in range(5):
            await _readiness(client, refresh=False)
        assert len(calls) == first  # fresh: answered from the cache
        now[0] += 5.1
        await _readiness(client, refresh=False)  # stale: answered at once, re-run started
        async with asyncio.timeout(10):
            while len(calls) == first:
                await asyncio.sleep(0.01)
        assert len(calls) == first + 1
