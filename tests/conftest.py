"""Shared fixtures: a per-test data dir, settings, migrated stores (SQLite and, when
``KEEL_TEST_DATABASE_URL`` is set, PostgreSQL), an ASGI client that runs the lifespan, and a
real uvicorn server on a free loopback port."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from app.main import create_app
from app.settings import Settings
from app.state import AppState, state_of
from tests.fakes.servers import ServerThread

PG_URL = os.environ.get("KEEL_TEST_DATABASE_URL")

# Keep a developer's keel.toml or KEEL_* shell settings out of the tests.
for _name in [n for n in os.environ if n.startswith("KEEL_") and n != "KEEL_TEST_DATABASE_URL"]:
    del os.environ[_name]


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def db_url(request: pytest.FixtureRequest, data_dir: Path) -> AsyncIterator[str]:
    """A fresh, empty database per test: SQLite in the data dir, or a new PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{data_dir / 'keel.db'}"
        return
    if not PG_URL:
        pytest.skip("KEEL_TEST_DATABASE_URL is not set")
    async with _pg_database() as url:
        yield url


@pytest.fixture
def make_settings(data_dir: Path) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {"data_dir": data_dir, "log_format": "text"}
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
def settings(make_settings: Callable[..., Settings], db_url: str) -> Settings:
    return make_settings(database_url=db_url)


@pytest.fixture
async def app(settings: Settings) -> FastAPI:
    return create_app(settings)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(app) as c:
        yield c


class asgi_client:  # reads as a context-manager function at call sites
    """An httpx client wired to the app in-process, with the lifespan running."""

    def __init__(self, app: FastAPI, headers: dict[str, str] | None = None) -> None:
        self.app = app
        self.headers = headers or {}

    async def __aenter__(self) -> httpx.AsyncClient:
        self.manager = LifespanManager(self.app, startup_timeout=30, shutdown_timeout=30)
        await self.manager.__aenter__()
        transport = httpx.ASGITransport(app=self.manager.app, raise_app_exceptions=False)
        self.client = httpx.AsyncClient(
            transport=transport, base_url="http://localhost", headers=self.headers
        )
        return self.client

    async def __aexit__(self, *exc: object) -> None:
        await self.client.aclose()
        await self.manager.__aexit__(None, None, None)

    @property
    def state(self) -> AppState:
        """The running app's typed lifespan state."""
        return state_of(self.manager._state)


@pytest.fixture
def live_server(app: FastAPI) -> Iterator[ServerThread]:
    """Keel over a real socket on 127.0.0.1 (its own thread and event loop)."""
    with ServerThread(app) as server:
        yield server


class _pg_database:
    """CREATE DATABASE keel_t_<random> for one test and drop it afterwards."""

    async def __aenter__(self) -> str:
        import asyncpg

        assert PG_URL
        self.name = f"keel_t_{uuid.uuid4().hex[:12]}"
        self.admin = _asyncpg_dsn(PG_URL)
        conn = await asyncpg.connect(self.admin)
        try:
            await conn.execute(f'CREATE DATABASE "{self.name}"')
        finally:
            await conn.close()
        base, _, _ = PG_URL.rpartition("/")
        return f"{base}/{self.name}"

    async def __aexit__(self, *exc: object) -> None:
        import asyncpg

        conn = await asyncpg.connect(self.admin)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        finally:
            await conn.close()


def _asyncpg_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)
