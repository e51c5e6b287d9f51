"""Cancel by request id on local models: a running generation is stopped by the runtime and
ends normally; a request still waiting for the model's slot is cancelled through the in-flight
registry like a provider's (409 ``request_cancelled``)."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import httpx

from app.main import Components, create_app
from app.runtime.component import RuntimeComponent, RuntimeInputs
from app.runtime.manager import RuntimeManager
from tests.fakes.servers import ServerThread, wait_for
from tests.integration.runtime.conftest import MODEL, RuntimeHarness
from tests.unit.runtime.conftest import fake_argv

Serve = Callable[..., ServerThread]
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}


class CapturingRuntime:
    """The real runtime component, keeping its manager so a test can see the model's queue."""

    def __init__(self, inner: RuntimeComponent) -> None:
        self.inner = inner
        self.manager: RuntimeManager | None = None

    @asynccontextmanager
    async def __call__(self, inputs: RuntimeInputs) -> AsyncIterator[RuntimeManager]:
        async with self.inner(inputs) as manager:
            self.manager = manager
            yield manager

    def waiting(self) -> int:
        assert self.manager is not None
        return self.manager.slot(MODEL).waiting


def test_cancel_a_request_queued_behind_a_local_generation(
    harness: RuntimeHarness, serve: Serve
) -> None:
    settings = harness.settings(runtime={"max_queue_wait_s": 60})
    harness.install(settings)
    runtime = CapturingRuntime(RuntimeComponent(fake_argv(tokens=100_000, token_delay_s=0.01)))
    server = serve(create_app(settings, Components(runtime=runtime)))
    lines: list[str] = []
    queued: list[httpx.Response] = []

    def stream() -> None:
        with httpx.stream(
            "POST",
            f"{server.url}/v1/chat/completions",
            json={**CHAT, "stream": True},
            headers={"X-Request-Id": "local-running"},
            timeout=60,
        ) as r:
            lines.extend(r.iter_lines())

    def wait_in_queue() -> None:
        queued.append(
            httpx.post(
                f"{server.url}/v1/chat/completions",
                json=CHAT,
                headers={"X-Request-Id": "local-queued"},
                timeout=60,
            )
        )

    running = threading.Thread(target=stream)
    running.start()
    wait_for(lambda: len(lines) > 3, "first tokens")
    waiting = threading.Thread(target=wait_in_queue)
    waiting.start()
    wait_for(lambda: runtime.waiting() == 1, "the second request to queue for the model")
    cancel = httpx.post(f"{server.url}/v1/requests/local-queued/cancel")
    assert cancel.status_code == 200, cancel.text
    waiting.join(timeout=30)
    assert not waiting.is_alive()
    assert queued[0].status_code == 409, queued[0].text
    assert queued[0].json()["code"] == "request_cancelled"
    assert runtime.waiting() == 0
    assert running.is_alive()  # the generation in front of it was not touched

    assert httpx.post(f"{server.url}/v1/requests/local-running/cancel").status_code == 200
    running.join(timeout=30)
    assert not running.is_alive()
    assert "data: [DONE]" in lines  # the runtime's stop ends the stream normally
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'keel_cancellations_total{reason="user_stop"} 2.0' in metrics
