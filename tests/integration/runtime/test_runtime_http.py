"""The runtime through Keel's HTTP API with the fake worker: chat (plain, streamed, by route),
load/unload, breaker, verification, budget, keep-alive, cancellation and crash handling."""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from tests.fakes.servers import ServerThread, wait_for
from tests.integration.runtime.conftest import EMBED, MODEL, RuntimeHarness
from tests.unit.runtime.conftest import pid_gone

Serve = Callable[..., ServerThread]
CHAT = {"messages": [{"role": "user", "content": "hi"}]}


def _chat(url: str, model: str = MODEL, **body: Any) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/chat/completions", json={**CHAT, "model": model, **body}, timeout=60
    )


def _runtime(url: str) -> dict[str, Any]:
    got = httpx.get(f"{url}/v1/lifecycle/models/{MODEL}", timeout=30).json()
    assert isinstance(got, dict)
    return got


def test_chat_by_id_by_provider_and_by_route_with_usage(
    harness: RuntimeHarness, serve: Serve
) -> None:
    server = serve(harness.app({"tokens": 4}, routes={"chat": ["local/fake-llm"]}))
    for model in (MODEL, f"local/{MODEL}", "chat"):
        r = _chat(server.url, model, temperature=0.2, max_tokens=8, seed=1)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["object"] == "chat.completion"
        assert body["choices"][0]["message"]["content"] == "tok0 tok1 tok2 tok3 "
        assert body["usage"] == {"prompt_tokens": 7, "completion_tokens": 4, "total_tokens": 11}
        assert r.headers["x-keel-target"] == f"local/{MODEL}"
    models = httpx.get(f"{server.url}/v1/models").json()["data"]
    assert MODEL in [m["id"] for m in models]
    # The official SDK, streaming, with usage.
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "tok0 tok1 tok2 tok3 "
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 4


def test_a_kind_local_provider_starts_and_serves(harness: RuntimeHarness, serve: Serve) -> None:
    app = harness.app(providers={"mine": {"kind": "local"}}, routes={"chat": ["mine/fake-llm"]})
    server = serve(app)
    assert _chat(server.url, "chat").status_code == 200
    assert _chat(server.url, f"mine/{MODEL}").status_code == 200


def test_load_unload_and_the_runtime_view(harness: RuntimeHarness, serve: Serve) -> None:
    server = serve(harness.app())
    r = httpx.post(f"{server.url}/v1/lifecycle/models/{MODEL}/load", timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["load"] == "cold"
    assert httpx.post(f"{server.url}/v1/lifecycle/models/{MODEL}/load").json()["load"] == "warm"
    view = _runtime(server.url)
    assert view["state"] == "ready"
    pid = view["runtime"]["pid"]
    assert view["runtime"]["rss_bytes"] > 0
    assert view["runtime"]["keep_alive_left_s"] > 0
    r = httpx.post(f"{server.url}/v1/lifecycle/models/{MODEL}/unload", timeout=60)
    assert r.status_code == 200
    assert _runtime(server.url)["state"] == "installed"
    assert pid_gone(pid)
    r = httpx.post(f"{server.url}/v1/lifecycle/models/{MODEL}/load?wait=false")
    assert r.status_code == 202
    wait_for(lambda: _runtime(server.url)["state"] == "ready", "background load")
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'keel_model_load_seconds_count{kind="cold",model="fake-llm"} 2.0' in metrics
    assert "keel_models_loaded 1.0" in metrics
    diag = httpx.get(f"{server.url}/v1/diagnostics").json()
    assert "model:fake-llm" in json.dumps(diag)


def test_failed_loads_open_the_breaker_without_spawning(
    harness: RuntimeHarness, serve: Serve
) -> None:
    app = harness.app({"load": "crash"}, runtime={"breaker": {"min_calls": 3, "window_size": 3}})
    server = serve(app)
    for _ in range(3):
        r = httpx.post(f"{server.url}/v1/lifecycle/models/{MODEL}/load", timeout=60)
        assert r.status_code == 503
        assert r.json()["code"] == "model_load_failed"
    view = _runtime(server.url)
    assert view["state"] == "cooldown"
    assert view["cooldown_s"] > 0
    r = httpx.post(f"{server.url}/v1/lifecycle/models/{MODEL}/load")
    assert r.status_code == 503
    assert r.json()["code"] == "circuit_open"
    assert int(r.headers["retry-after"]) >= 1
    r = _chat(server.url)
    assert r.status_code == 503
    assert r.json()["code"] == "circuit_open"
    assert "retry-after" in r.headers
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'keel_model_load_failures_total{code="worker_crashed",model="fake-llm"} 3.0' in metrics


def test_a_flipped_byte_is_refused_with_checksum_mismatch(
    harness: RuntimeHarness, serve: Serve
) -> None:
    server = serve(harness.app())
    assert harness.installed is not None
    data = bytearray(harness.installed.read_bytes())
    data[len(data) // 2] ^= 0x01
    harness.installed.write_bytes(bytes(data))
    r = httpx.post(f"{server.url}/v1/lifecycle/models/{MODEL}/load", timeout=60)
    assert r.status_code == 422
    assert r.json()["code"] == "checksum_mismatch"
    view = _runtime(server.url)
    assert view["state"] == "error"
    assert view["runtime"]["pid"] is None
    assert _chat(server.url).json()["code"] == "checksum_mismatch"


def test_a_memory_budget_below_the_need_is_507(harness: RuntimeHarness, serve: Serve) -> None:
    server = serve(harness.app(runtime={"memory_budget_mb": 16}))
    r = _chat(server.url)
    assert r.status_code == 507
    assert r.json()["code"] == "memory_budget_exceeded"


def test_keep_alive_zero_unloads_after_the_request(harness: RuntimeHarness, serve: Serve) -> None:
    server = serve(harness.app())
    assert _chat(server.url, keep_alive=0).status_code == 200
    wait_for(lambda: _runtime(server.url)["state"] == "installed", "keep_alive 0 unload")
    assert _chat(server.url, keep_alive="bogus").status_code == 422


def test_cancel_by_request_id(harness: RuntimeHarness, serve: Serve) -> None:
    server = serve(harness.app({"tokens": 100_000, "token_delay_s": 0.01}))
    lines: list[str] = []

    def consume() -> None:
        with httpx.stream(
            "POST",
            f"{server.url}/v1/chat/completions",
            json={**CHAT, "model": MODEL, "stream": True},
            headers={"X-Request-Id": "stop-me-please"},
            timeout=60,
        ) as r:
            lines.extend(r.iter_lines())

    reader = threading.Thread(target=consume)
    reader.start()
    wait_for(lambda: len(lines) > 3, "first tokens")
    r = httpx.post(f"{server.url}/v1/requests/stop-me-please/cancel")
    assert r.status_code == 200
    reader.join(timeout=30)
    assert not reader.is_alive()
    assert lines[-1] == "data: [DONE]" or lines[-2] == "data: [DONE]"
    assert httpx.post(f"{server.url}/v1/requests/nobody/cancel").status_code == 404
    assert 'reason="user_stop"' in httpx.get(f"{server.url}/metrics").text


def test_kill_9_mid_stream_gives_an_sse_error_then_the_next_request_reloads(
    harness: RuntimeHarness, serve: Serve
) -> None:
    server = serve(harness.app({"tokens": 300, "token_delay_s": 0.02}))
    events: list[str] = []
    with httpx.stream(
        "POST",
        f"{server.url}/v1/chat/completions",
        json={**CHAT, "model": MODEL, "stream": True},
        timeout=60,
    ) as r:
        for line in r.iter_lines():
            events.append(line)
            if len(events) == 4:
                os.kill(_runtime(server.url)["runtime"]["pid"], signal.SIGKILL)
    assert "event: error" in events
    error = json.loads(events[events.index("event: error") + 1].removeprefix("data: "))
    assert error["error"]["code"]
    wait_for(lambda: _runtime(server.url)["state"] == "error", "crash noticed")
    assert _chat(server.url).status_code == 200
    assert "keel_worker_crashes_total" in httpx.get(f"{server.url}/metrics").text


def test_a_client_disconnect_cancels_the_generation(harness: RuntimeHarness, serve: Serve) -> None:
    server = serve(harness.app({"tokens": 100_000, "token_delay_s": 0.01}))
    with httpx.stream(
        "POST",
        f"{server.url}/v1/chat/completions",
        json={**CHAT, "model": MODEL, "stream": True},
        timeout=60,
    ) as r:
        for n, _ in enumerate(r.iter_lines()):
            if n > 4:
                break
    # The worker went idle again: the next request is served at once, not after 100k tokens.
    r = _chat(server.url, max_tokens=1)
    assert r.status_code == 200, r.text
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'keel_cancellations_total{reason="client_disconnect"} 1.0' in metrics


def test_shutdown_leaves_no_child(harness: RuntimeHarness) -> None:
    app = harness.app({"tokens": 100_000, "token_delay_s": 0.01})
    server = ServerThread(app).__enter__()
    try:
        assert httpx.post(f"{server.url}/v1/lifecycle/models/{MODEL}/load", timeout=60).is_success
        pid = _runtime(server.url)["runtime"]["pid"]
    finally:
        server.__exit__(None, None, None)
    wait_for(lambda: pid_gone(pid), "worker reaped")


@pytest.mark.parametrize(
    "path", ["/v1/lifecycle/models/nope/load", "/v1/lifecycle/models/nope/unload"]
)
def test_unknown_models_are_404(harness: RuntimeHarness, serve: Serve, path: str) -> None:
    server = serve(harness.app())
    r = httpx.post(server.url + path)
    assert r.status_code == 404
    assert r.json()["code"] == "model_not_found"


def test_embeddings_from_a_local_embedding_model(harness: RuntimeHarness, serve: Serve) -> None:
    server = serve(harness.app())
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    got = client.embeddings.create(model=EMBED, input=["one", "two"])
    assert [d.index for d in got.data] == [0, 1]
    assert got.data[0].embedding == [0.1, 0.2, 0.3]
    r = httpx.post(f"{server.url}/v1/embeddings", json={"model": MODEL, "input": "x"})
    assert r.status_code == 422  # an llm model does not embed
    r = _chat(server.url, EMBED)
    assert r.status_code == 422  # nor does an embedding model chat


def test_load_phases_on_the_events_stream(harness: RuntimeHarness, serve: Serve) -> None:
    server = serve(harness.app({"load": "slow", "load_s": 1.5}))
    assert (
        httpx.post(f"{server.url}/v1/lifecycle/models/{MODEL}/load?wait=false").status_code == 202
    )
    phases: list[str] = []
    with httpx.stream("GET", f"{server.url}/v1/lifecycle/models/{MODEL}/events", timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                phases.append(json.loads(line.removeprefix("data: "))["phase"])
    assert phases[-1] == "ready"
    assert "reading" in phases  # the worker's own progress, relayed while it loads
