"""Readiness and diagnostics over the real runtime (supervising the fake worker)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx

from app.settings import Settings
from tests.fakes.servers import ServerThread
from tests.integration.readiness.conftest import runtime_app
from tests.integration.runtime.conftest import MODEL, RuntimeHarness


def test_failed_loads_put_the_model_in_cooldown_with_its_fix(
    tmp_path: Path, make_settings: Callable[..., Settings]
) -> None:
    harness = RuntimeHarness(tmp_path, make_settings)
    app = runtime_app(
        harness, {"load": "crash"}, runtime={"breaker": {"min_calls": 2, "window_size": 2}}
    )
    with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        before = client.get("/v1/readiness", params={"refresh": "true"}).json()
        # The bundled Gemma is absent; the installed fake model makes llm usable.
        assert before["capabilities"]["llm"]["usable"] == [f"model:{MODEL}"]
        for _ in range(2):
            assert client.post(f"/v1/lifecycle/models/{MODEL}/load").status_code == 503
        llm = client.get("/v1/readiness").json()["capabilities"]["llm"]
        diag = client.get("/v1/diagnostics", params={"subject": f"model:{MODEL}"}).json()
        text = client.get("/v1/readiness", params={"format": "text"}).text
    assert llm["status"] == "unavailable"
    assert llm["usable"] == []
    (cooldown,) = [r for r in llm["reasons"] if r["subject"] == f"model:{MODEL}"]
    assert cooldown["code"] == "model_cooldown"
    assert f"POST /v1/lifecycle/models/{MODEL}/load" in cooldown["action"]
    (model,) = diag["models"]
    assert model["state"] == "cooldown"
    assert model["breaker"]["state"] == "open"
    assert model["breaker"]["seconds_until_retry"] > 0
    assert {t["to"] for t in diag["transitions"]} >= {"loading", "cooldown"}
    assert "model_cooldown" in text


def test_a_loaded_model_shows_pid_rss_and_keep_alive(
    tmp_path: Path, make_settings: Callable[..., Settings]
) -> None:
    harness = RuntimeHarness(tmp_path, make_settings)
    app = harness.app({}, runtime={"keep_alive_s": 600})
    with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        assert client.get("/v1/diagnostics").json()["models"] == []  # installed, not loaded
        assert client.post(f"/v1/lifecycle/models/{MODEL}/load").status_code == 200
        (model,) = client.get("/v1/diagnostics").json()["models"]
        assert client.post(f"/v1/lifecycle/models/{MODEL}/unload").status_code == 200
        after = client.get("/v1/diagnostics").json()["models"]
    assert model["state"] == "ready"
    assert model["pid"] > 0
    assert model["rss_bytes"] > 0
    assert 0 < model["keep_alive_left_s"] <= 600
    assert after == []
