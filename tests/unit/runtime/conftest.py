"""Helpers for runtime tests: the fake worker's command line and a manager over fake models."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from app.lifecycle.manifest import FileSpec, ModelSpec
from app.observability.metrics import Metrics
from app.observability.timeline import Timeline
from app.resilience.clock import FakeClock
from app.runtime.manager import RuntimeManager
from app.runtime.supervisor import WorkerProcess
from app.settings import RuntimeSettings

FAKE = Path(__file__).resolve().parents[2] / "fakes" / "fake_worker.py"


def fake_argv(**script: Any) -> list[str]:
    return [sys.executable, str(FAKE), json.dumps(script)]


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


class Spawns:
    """Counts workers spawned (and remembers them, to check none is left running)."""

    def __init__(self) -> None:
        self.workers: list[WorkerProcess] = []


@pytest.fixture
def spawns(monkeypatch: pytest.MonkeyPatch) -> Spawns:
    record = Spawns()
    original = WorkerProcess.spawn.__func__  # type: ignore[attr-defined]

    async def spawn(cls: type[WorkerProcess], argv: Any, env: Any = None) -> WorkerProcess:
        worker: WorkerProcess = await original(cls, argv, env)
        record.workers.append(worker)
        return worker

    monkeypatch.setattr(WorkerProcess, "spawn", classmethod(spawn))
    return record


def make_model(tmp_path: Path, model_id: str, size: int = 4096) -> tuple[ModelSpec, Path]:
    path = tmp_path / f"{model_id}.gguf"
    data = os.urandom(size)
    path.write_bytes(data)
    spec = ModelSpec(
        id=model_id,
        name=model_id,
        capability="llm",
        engine="llama_cpp",
        files=(FileSpec(path.name, "file:///x", hashlib.sha256(data).hexdigest(), size),),
        chat_format="gemma",
    )
    return spec, path


ManagerFactory = Callable[..., RuntimeManager]


@pytest.fixture
async def make_manager(tmp_path: Path) -> AsyncIterator[ManagerFactory]:
    made: list[RuntimeManager] = []

    def factory(
        script: dict[str, Any] | None = None,
        models: tuple[str, ...] = ("m1",),
        clock: FakeClock | None = None,
        **settings: Any,
    ) -> RuntimeManager:
        specs = []
        paths: dict[str, Path] = {}
        for model_id in models:
            spec, path = make_model(tmp_path, model_id)
            specs.append(spec)
            paths[model_id] = path

        def locate(spec: ModelSpec) -> list[tuple[Path, str]] | None:
            path = paths[spec.id]
            return [(path, spec.files[0].sha256)] if path.exists() else None

        base = {"load_timeout_s": 20, "load_stall_s": 10, "token_stall_s": 10, "stop_grace_s": 3}
        manager = RuntimeManager(
            specs,
            RuntimeSettings.model_validate({**base, **settings}),
            locate=locate,
            stamps_dir=tmp_path / "stamps",
            metrics=Metrics(),
            timeline=Timeline(),
            clock=clock,
            argv=fake_argv(**(script or {})),
        )
        manager.paths = paths  # type: ignore[attr-defined]
        made.append(manager)
        return manager

    yield factory
    for manager in made:
        await manager.shutdown()
