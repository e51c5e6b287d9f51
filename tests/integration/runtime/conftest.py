"""A Keel app whose local runtime runs the fake worker, over an installed fake model."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from app.lifecycle.cli import import_model
from app.main import Components, create_app
from app.runtime.component import RuntimeComponent
from app.settings import Settings
from tests.fakes.servers import ServerThread
from tests.unit.runtime.conftest import fake_argv

MODEL = "fake-llm"
EMBED = "fake-embed"


class RuntimeHarness:
    def __init__(self, tmp_path: Path, make_settings: Callable[..., Settings]) -> None:
        self.tmp_path = tmp_path
        self._make_settings = make_settings
        data = os.urandom(64 * 1024)
        self.source = tmp_path / "fake.gguf"
        self.source.write_bytes(data)
        self.manifest = tmp_path / "models.toml"
        entry = (
            '[[models]]\nid = "{id}"\nname = "Fake"\ncapability = "{cap}"\n'
            'engine = "llama_cpp"\nchat_format = "gemma"\n[[models.files]]\n'
            'name = "fake.gguf"\nurl = "file:///nowhere/fake.gguf"\n'
            f'sha256 = "{hashlib.sha256(data).hexdigest()}"\nsize = {len(data)}\n'
        )
        self.manifest.write_text(
            entry.format(id=MODEL, cap="llm") + entry.format(id=EMBED, cap="embedding")
        )
        self.installed: Path | None = None

    def settings(self, **overrides: Any) -> Settings:
        runtime = {"load_timeout_s": 30, "load_stall_s": 15, "stop_grace_s": 3}
        runtime.update(overrides.pop("runtime", {}))
        return self._make_settings(models_manifest=str(self.manifest), runtime=runtime, **overrides)

    def install(self, settings: Settings) -> Path:
        self.installed = import_model(settings, MODEL, self.source)[0]
        import_model(settings, EMBED, self.source)
        return self.installed

    def app(self, script: dict[str, Any] | None = None, **overrides: Any) -> FastAPI:
        settings = self.settings(**overrides)
        self.install(settings)
        parts = Components(runtime=RuntimeComponent(fake_argv(**(script or {}))))
        return create_app(settings, parts)


@pytest.fixture
def harness(tmp_path: Path, make_settings: Callable[..., Settings]) -> RuntimeHarness:
    return RuntimeHarness(tmp_path, make_settings)


@pytest.fixture
def serve() -> Iterator[Callable[[FastAPI], ServerThread]]:
    started: list[ServerThread] = []

    def start(app: FastAPI) -> ServerThread:
        server = ServerThread(app)
        server.__enter__()
        started.append(server)
        return server

    yield start
    for server in started:
        server.__exit__(None, None, None)
