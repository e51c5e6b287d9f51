"""Keel apps for readiness tests: a small manifest of stand-in models (served by a range
server), a provider in front of the fake upstream, and injectable runtime probe and view."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from app.lifecycle import component as lifecycle_component
from app.lifecycle.component import LifecycleComponent
from app.lifecycle.manifest import load_manifest
from app.main import Components, create_app
from app.readiness.component import ReadinessComponent
from app.readiness.runtime_view import RuntimeModel
from app.runtime.component import RuntimeComponent
from app.settings import Settings
from tests.fakes.range_server import RangeServer
from tests.fakes.upstream import FakeUpstream
from tests.integration.lifecycle.conftest import FAST_DOWNLOADS, payload, sha256
from tests.unit.runtime.conftest import fake_argv

API_KEY_ENV = "KEEL_TEST_READINESS_KEY"
API_KEY = "sk-readiness-SECRET-0000-never-shown"
TOKEN = "tok-readiness-SECRET-0123456789"


class FakeRuntime:
    """A ``ModelRuntimeView`` whose models the test sets."""

    def __init__(self) -> None:
        self.models: list[RuntimeModel] = []

    def runtime_models(self) -> Sequence[RuntimeModel]:
        return list(self.models)


class Setup:
    def __init__(
        self,
        tmp_path: Path,
        data_dir: Path,
        db_url: str,
        server: RangeServer,
        upstream: FakeUpstream,
    ) -> None:
        self.tmp_path = tmp_path
        self.data_dir = data_dir
        self.db_url = db_url
        self.server = server
        self.upstream = upstream
        self.runtime = FakeRuntime()
        self.found: set[str] = {"llama_cpp"}
        self.entries: list[str] = []
        self.files: dict[str, Path] = {}

    def model(self, model_id: str, capability: str, engine: str, size: int = 64 * 1024) -> None:
        data = payload(size, seed=len(self.entries))
        name = f"{model_id}.gguf"
        url = self.server.add(name, data)
        source = self.tmp_path / "sources" / name
        source.parent.mkdir(exist_ok=True)
        source.write_bytes(data)
        self.files[model_id] = source
        self.entries.append(
            f'[[models]]\nid = "{model_id}"\nname = "{model_id}"\ncapability = "{capability}"\n'
            f'engine = "{engine}"\n[[models.files]]\nname = "{name}"\nurl = "{url}"\n'
            f'sha256 = "{sha256(data)}"\nsize = {size}\n'
        )

    def settings(self, **overrides: Any) -> Settings:
        manifest = self.tmp_path / "models.toml"
        manifest.write_text("\n".join(self.entries))
        provider = {
            "kind": "openai",
            "base_url": self.upstream.base_url,
            "api_key_env": API_KEY_ENV,
            "models": ["small"],
            "retry": {"max_attempts": 1},
            "breaker": {"min_calls": 2, "window_size": 2, "open_s": 3.0, "open_max_s": 3.0},
        }
        values: dict[str, Any] = {
            "data_dir": self.data_dir,
            "log_format": "text",
            "database_url": self.db_url,
            "models_manifest": str(manifest),
            "downloads": FAST_DOWNLOADS,
            "providers": {"cloud": provider},
            "routes": {"chat": ["cloud/small"]},
        }
        values.update(overrides)
        return Settings(**values)

    def app(
        self,
        settings: Settings | None = None,
        readiness_clock: Callable[[], float] = time.monotonic,
        **lifecycle: Any,
    ) -> FastAPI:
        readiness = ReadinessComponent(
            find=lambda m: m in self.found, runtime=self.runtime, clock=readiness_clock
        )
        parts = Components(lifecycle=LifecycleComponent(**lifecycle), readiness=readiness)
        return create_app(settings or self.settings(), parts)


@pytest.fixture
def setup(
    tmp_path: Path, data_dir: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Setup]:
    # Only the test's manifest: the bundled 253 MB Gemma is the real-model tests' business.
    monkeypatch.setattr(
        lifecycle_component, "load_manifest", lambda extra: load_manifest(extra, bundled=None)
    )
    monkeypatch.setenv(API_KEY_ENV, API_KEY)
    with RangeServer() as server, FakeUpstream() as upstream:
        yield Setup(tmp_path, data_dir, db_url, server, upstream)


def runtime_app(harness: Any, script: dict[str, Any], **overrides: Any) -> FastAPI:
    """The harness's app, with llama_cpp counted as installed: the fake worker stands in."""
    settings = harness.settings(**overrides)
    harness.install(settings)
    parts = Components(
        runtime=RuntimeComponent(fake_argv(**script)),
        readiness=ReadinessComponent(find=lambda module: True),
    )
    return create_app(settings, parts)


def chat(content: str = "hi") -> dict[str, Any]:
    return {"model": "chat", "messages": [{"role": "user", "content": content}]}


Poll = Callable[[], Any]
