"""Keel on a real socket in front of a fake OpenAI-compatible upstream on another."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from app.main import Components, create_app
from app.settings import Settings
from tests.fakes.servers import ServerThread, free_port
from tests.fakes.upstream import FakeUpstream

API_KEY_ENV = "KEEL_TEST_CLOUD_KEY"
API_KEY = "sk-test-SECRET-key-never-shown-0042"


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as fake:
        yield fake


def provider(base_url: str, **overrides: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "kind": "openai",
        "base_url": base_url,
        "api_key_env": API_KEY_ENV,
        "models": ["small", "large"],
        "max_concurrency": 64,
        "max_queue_wait_s": 1.0,
        "timeout_s": 10.0,
        "retry": {"base_delay_s": 0.01, "max_delay_s": 0.05},
        "breaker": {"min_calls": 10, "window_size": 20, "open_s": 0.5, "open_max_s": 2.0},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there: connect refused


@pytest.fixture
def chat_settings(
    make_settings: Callable[..., Settings],
    upstream: FakeUpstream,
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[..., Settings]:
    monkeypatch.setenv(API_KEY_ENV, API_KEY)

    def make(
        providers: dict[str, Any] | None = None,
        routes: dict[str, list[str]] | None = None,
        **overrides: Any,
    ) -> Settings:
        return make_settings(
            providers=providers or {"cloud": provider(upstream.base_url)},
            routes=routes or {"chat": ["cloud/small"]},
            **overrides,
        )

    return make


@pytest.fixture
def keel(chat_settings: Callable[..., Settings]) -> Iterator[ServerThread]:
    with ServerThread(create_app(chat_settings())) as server:
        yield server


@pytest.fixture
def serve() -> Iterator[Callable[..., ServerThread]]:
    """Start Keel with custom settings (and components); every server started is stopped at
    teardown."""
    started: list[ServerThread] = []

    def start(settings: Settings, components: Components | None = None) -> ServerThread:
        server = ServerThread(create_app(settings, components)).__enter__()
        started.append(server)
        return server

    yield start
    for server in started:
        server.__exit__(None, None, None)


def chat_body(content: str = "hello", model: str = "chat", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}
