"""kill -9 in the middle of a download, then a restart with no new request: the job resumes by
itself, asks only for the remainder, and installs a file with the right SHA-256."""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.fakes.range_server import RangeServer
from tests.fakes.servers import KeelProcess

SIZE = 3 * 1024 * 1024


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.02)


@pytest.mark.slow
@pytest.mark.chaos
@pytest.mark.timeout(30)
def test_kill9_mid_download_resumes_after_restart(tmp_path: Path) -> None:
    data = random.Random(6).randbytes(SIZE)
    data_dir = tmp_path / "data"
    with RangeServer() as server:
        url = server.add("crash.bin", data)
        manifest = tmp_path / "models.toml"
        manifest.write_text(
            '[[models]]\nid = "crash"\ncapability = "llm"\n[[models.files]]\n'
            f'name = "crash.bin"\nurl = "{url}"\n'
            f'sha256 = "{hashlib.sha256(data).hexdigest()}"\nsize = {SIZE}\n'
        )
        env = {
            "KEEL_DATA_DIR": str(data_dir),
            "KEEL_MODELS_MANIFEST": str(manifest),
            "KEEL_DOWNLOADS__WRITE_BATCH_BYTES": str(64 * 1024),
            "KEEL_DOWNLOADS__FREE_SPACE_MARGIN_BYTES": "0",
        }
        partial = data_dir / "models" / "crash" / "crash.bin.partial"
        final = partial.with_name("crash.bin")

        server.faults.throttle_bps = 1024 * 1024  # ~3 s for the file: the kill lands mid-way
        keel = KeelProcess(env, tmp_path).start()
        try:
            resp = httpx.post(f"{keel.url}/v1/lifecycle/models/crash/download", timeout=10)
            assert resp.status_code == 202, resp.text
            _wait(
                lambda: partial.exists() and partial.stat().st_size >= 512 * 1024,
                10,
                "the partial never grew",
            )
            keel.kill9()
        finally:
            keel.stop()
        at_kill = partial.stat().st_size
        assert 0 < at_kill < SIZE
        assert not final.exists()
        gets_before = len(server.gets())
        server.faults.throttle_bps = None

        keel = KeelProcess(env, tmp_path).start()  # same data dir, and no new request
        try:

            def installed() -> bool:
                view = httpx.get(f"{keel.url}/v1/lifecycle/models/crash", timeout=5).json()
                assert view["state"] != "error", view
                return bool(view["state"] == "installed")

            _wait(installed, 10, "the download did not resume by itself")
        finally:
            keel.stop()

        resumed = server.gets()[gets_before:]
        assert len(resumed) == 1, resumed
        assert resumed[0].range == f"bytes={at_kill}-"
        assert resumed[0].if_range == server.files["crash.bin"].etag
        assert resumed[0].status == 206
    assert hashlib.sha256(final.read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()
    assert not partial.exists()
    assert not partial.with_name("crash.bin.partial.json").exists()
