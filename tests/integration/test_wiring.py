"""The wiring as a maintainer relies on it: a factory, typed state, no environment at import."""

from __future__ import annotations

import gc
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI

from app.main import create_app
from app.settings import Settings
from app.state import AppState
from tests.conftest import asgi_client
from tests.fakes.servers import ROOT
from tests.integration.test_startup import _run


def test_importing_the_app_reads_no_environment(tmp_path: Path) -> None:
    proc = _run(["-c", "import app.main"], tmp_path, PYTHONPATH=str(ROOT), KEEL_PORT="eighty")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""


def test_collection_works_with_a_bad_environment(tmp_path: Path) -> None:
    proc = _run(
        ["-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "tests/unit"],
        ROOT,
        PYTHONPATH=str(ROOT),
        KEEL_PORT="eighty",
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


def test_uvicorn_factory_builds_the_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEEL_DATA_DIR", str(tmp_path / "data"))
    config = uvicorn.Config("app.main:create_app", factory=True)
    config.load()
    assert isinstance(config.loaded_app.app, FastAPI)  # behind uvicorn's own middleware


def test_no_module_looks_up_state_by_name() -> None:
    pattern = re.compile(r"request\.state|getattr\([^)]*\.state|\bapp\.state\.\w")
    hits = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in (ROOT / "app").rglob("*.py")
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert hits == []


async def test_lifespan_state_is_typed_and_gc_is_left_alone(
    make_settings: Callable[..., Settings],
) -> None:
    before = gc.get_threshold()
    ready: list[bool] = []
    running = asgi_client(create_app(make_settings(), on_ready=lambda: ready.append(True)))
    async with running as client:
        assert (await client.get("/readyz")).status_code == 200
        state = running.state
        assert isinstance(state, AppState)
        assert state.schema_error is None
        assert state.lifecycle.running_jobs() == []
    assert ready == [True]
    assert gc.get_threshold() == before  # only `keel serve` tunes the collector
