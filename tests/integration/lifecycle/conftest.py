"""Fixtures for download tests: a range server, a manifest pointing at it, and Keel apps wired
with zero backoff, small batches and an injectable free-space probe."""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.lifecycle.component import LifecycleComponent
from app.main import Components, create_app
from app.settings import Settings
from tests.fakes.range_server import RangeServer

FAST_DOWNLOADS: dict[str, Any] = {
    "base_delay_s": 0.0,
    "max_delay_s": 0.0,
    "write_batch_bytes": 64 * 1024,
    "progress_interval_s": 0.0,
    "persist_interval_s": 0.05,
    "free_space_margin_bytes": 0,
    "stall_s": 2.0,
}


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Harness:
    """Models served by the range server, the manifest listing them, apps to test with."""

    def __init__(
        self,
        tmp_path: Path,
        data_dir: Path,
        db_url: str,
        server: RangeServer,
        make_settings: Callable[..., Settings],
    ) -> None:
        self.tmp_path = tmp_path
        self.data_dir = data_dir
        self.db_url = db_url
        self.server = server
        self._make_settings = make_settings
        self.entries: list[str] = []
        self.data: dict[str, bytes] = {}

    def model(
        self,
        model_id: str,
        data: bytes,
        *,
        file: str | None = None,
        capability: str = "llm",
        url: str | None = None,
        sha: str | None = None,
        size: int | None = None,
    ) -> str:
        name = file or f"{model_id}.bin"
        if url is None:
            url = self.server.add(name, data)
        self.data[model_id] = data
        self.entries.append(
            f'[[models]]\nid = "{model_id}"\nname = "{model_id}"\ncapability = "{capability}"\n'
            f'engine = "test"\n[[models.files]]\nname = "{name}"\nurl = "{url}"\n'
            f'sha256 = "{sha or sha256(data)}"\nsize = {size or len(data)}\n'
        )
        return name

    def manifest(self) -> Path:
        path = self.tmp_path / "test-models.toml"
        path.write_text("\n".join(self.entries))
        return path

    def settings(self, **downloads: Any) -> Settings:
        return self._make_settings(
            database_url=self.db_url,
            models_manifest=str(self.manifest()),
            downloads={**FAST_DOWNLOADS, **downloads},
        )

    def app(self, settings: Settings | None = None, **inject: Any) -> FastAPI:
        components = Components(lifecycle=LifecycleComponent(**inject))
        return create_app(settings or self.settings(), components)

    def final(self, model_id: str, name: str | None = None) -> Path:
        return self.data_dir / "models" / model_id / (name or f"{model_id}.bin")

    def leftovers(self, model_id: str) -> list[str]:
        folder = self.data_dir / "models" / model_id
        return (
            sorted(p.name for p in folder.iterdir() if ".partial" in p.name)
            if folder.exists()
            else []
        )


@pytest.fixture
def range_server() -> Iterator[RangeServer]:
    with RangeServer() as server:
        yield server


@pytest.fixture
def harness(
    tmp_path: Path,
    data_dir: Path,
    db_url: str,
    range_server: RangeServer,
    make_settings: Callable[..., Settings],
) -> Harness:
    return Harness(tmp_path, data_dir, db_url, range_server, make_settings)


async def wait_state(
    client: httpx.AsyncClient, model_id: str, states: set[str], timeout: float = 15.0
) -> dict[str, Any]:
    """Poll the model until it reaches one of ``states``."""
    async with asyncio.timeout(timeout):
        while True:
            view: dict[str, Any] = (await client.get(f"/v1/lifecycle/models/{model_id}")).json()
            if view["state"] in states:
                return view
            await asyncio.sleep(0.01)


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)
