"""``keel models pull`` through a running Keel and ``keel models import`` with no server."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from app.cli import main
from app.lifecycle.cli import ImportFailed, import_model, pull
from tests.conftest import asgi_client
from tests.fakes.servers import ServerThread
from tests.integration.lifecycle.conftest import Harness, payload, wait_state

T = TypeVar("T")
SIZE = 150_000
TOKEN = "t0ken-for-tests-0123456789"


def _source(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "downloaded-elsewhere.bin"
    path.write_bytes(data)
    return path


async def test_import_installs_a_verified_copy(harness: Harness, tmp_path: Path) -> None:
    data = payload(SIZE)
    harness.model("tiny", data)
    settings = harness.settings()
    [installed] = await _in_thread(import_model, settings, "tiny", _source(tmp_path, data))
    assert installed == harness.final("tiny").resolve()
    assert installed.read_bytes() == data
    assert [p.name for p in installed.parent.iterdir()] == ["tiny.bin"]
    async with asgi_client(harness.app(settings)) as client:  # the server sees it installed
        view = (await client.get("/v1/lifecycle/models/tiny")).json()
        assert view["state"] == "installed"
        ok = await client.post("/v1/lifecycle/models/tiny/verify")
        assert ok.json()["ok"] is True
    assert harness.server.requests == []  # no network at all


async def test_import_refuses_wrong_size_and_wrong_hash(harness: Harness, tmp_path: Path) -> None:
    data = payload(SIZE)
    harness.model("tiny", data)
    settings = harness.settings()
    with pytest.raises(ImportFailed, match="bytes; the manifest says"):
        await _in_thread(import_model, settings, "tiny", _source(tmp_path, data[:-1]))
    flipped = bytearray(data)
    flipped[7] ^= 0xFF
    with pytest.raises(ImportFailed, match="SHA-256"):
        await _in_thread(import_model, settings, "tiny", _source(tmp_path, bytes(flipped)))
    with pytest.raises(ImportFailed, match="no model"):
        await _in_thread(import_model, settings, "nope", _source(tmp_path, data))
    folder = harness.final("tiny").parent
    assert not folder.exists() or list(folder.iterdir()) == []


async def test_import_uses_the_persisted_storage_root(harness: Harness, tmp_path: Path) -> None:
    data = payload(SIZE)
    harness.model("tiny", data)
    settings = harness.settings()
    custom = tmp_path / "elsewhere"
    async with asgi_client(harness.app(settings)) as client:
        resp = await client.put("/v1/lifecycle/storage", json={"root": str(custom), "create": True})
        assert resp.status_code == 200
    [installed] = await _in_thread(import_model, settings, "tiny", _source(tmp_path, data))
    assert installed == (custom / "tiny" / "tiny.bin").resolve()


def test_import_command(
    harness: Harness,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = payload(SIZE)
    harness.model("tiny", data)
    monkeypatch.setenv("KEEL_DATA_DIR", str(harness.data_dir))
    monkeypatch.setenv("KEEL_DATABASE_URL", harness.db_url)
    monkeypatch.setenv("KEEL_MODELS_MANIFEST", str(harness.manifest()))
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"x" * SIZE)
    assert main(["models", "import", "tiny", "--from", str(bad)]) == 1
    assert "SHA-256" in capsys.readouterr().err
    assert main(["models", "import", "tiny", "--from", str(_source(tmp_path, data))]) == 0
    assert "installed" in capsys.readouterr().out
    assert harness.final("tiny").read_bytes() == data


async def test_pull_shows_progress_until_ready(harness: Harness) -> None:
    harness.model("one", payload(SIZE, 1))
    harness.model("two", payload(SIZE, 2))
    out = io.StringIO()
    settings = harness._make_settings(
        database_url=harness.db_url,
        api_token=TOKEN,
        models_manifest=str(harness.manifest()),
        downloads={"base_delay_s": 0, "max_delay_s": 0},
    )
    with ServerThread(harness.app(settings)) as server:
        assert await pull(server.url, {}, ["one"], out=io.StringIO()) == 1  # no token
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert await pull(server.url, auth, ["one", "two"], out=out) == 0
        assert await pull(server.url, auth, ["nope"], out=io.StringIO()) == 1
    text = out.getvalue()
    assert "100.0%" in text
    assert "ready" in text
    assert harness.final("one").read_bytes() == harness.data["one"]
    assert harness.final("two").read_bytes() == harness.data["two"]


async def test_pull_reports_a_failed_download(harness: Harness) -> None:
    harness.model("bad", payload(SIZE), sha="0" * 64)
    out = io.StringIO()
    with ServerThread(harness.app()) as server:
        assert await pull(server.url, {}, ["bad"], out=out) == 1
    assert "checksum_mismatch" in out.getvalue()


def test_pull_command_reads_host_port_and_token(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    harness.model("tiny", payload(SIZE))
    settings = harness._make_settings(
        database_url=harness.db_url, api_token=TOKEN, models_manifest=str(harness.manifest())
    )
    with ServerThread(harness.app(settings)) as server:
        monkeypatch.setenv("KEEL_PORT", str(server.port))
        monkeypatch.setenv("KEEL_API_TOKEN", TOKEN)
        assert main(["models", "pull", "tiny"]) == 0
        assert main(["models", "list"]) == 0
    captured = capsys.readouterr()
    assert "ready" in captured.err
    assert "tiny" in captured.out
    assert "installed" in captured.out
    monkeypatch.setenv("KEEL_PORT", "1")
    assert main(["models", "pull", "tiny"]) == 1
    assert "cannot reach Keel" in capsys.readouterr().err


async def _in_thread(fn: Callable[..., T], *args: Any) -> T:
    """The import command runs its own event loop; keep it off the test's."""
    return await asyncio.to_thread(fn, *args)


async def test_wait_state_sees_import(harness: Harness, tmp_path: Path) -> None:
    data = payload(SIZE)
    harness.model("tiny", data)
    settings = harness.settings()
    async with asgi_client(harness.app(settings)) as client:
        assert (await client.get("/v1/lifecycle/models/tiny")).json()["state"] == "absent"
        await _in_thread(import_model, settings, "tiny", _source(tmp_path, data))
        assert (await wait_state(client, "tiny", {"installed"}))["state"] == "installed"
