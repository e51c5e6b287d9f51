"""Start-up as an operator sees it: the serve command, bad settings, config precedence."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from app.settings import Settings
from tests.fakes.servers import ROOT, KeelProcess


def _run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"KEEL_PORT": "eighty"}, "KEEL_PORT"),
        ({"KEEL_HOST": "0.0.0.0"}, "KEEL_API_TOKEN"),
        (
            {"KEEL_RESILIENCE__BREAKER__FAILURE_RATE": "1.5"},
            "KEEL_RESILIENCE__BREAKER__FAILURE_RATE",
        ),
    ],
)
def test_bad_settings_stop_startup_with_one_line(
    tmp_path: Path, env: dict[str, str], needle: str
) -> None:
    for args in (["-m", "app.cli", "serve"], ["-c", "from app.main import app"]):
        proc = _run(args, tmp_path, PYTHONPATH=str(ROOT), **env)
        assert proc.returncode != 0
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        assert needle in lines[0]
        assert "Traceback" not in proc.stderr


def test_config_precedence_and_redaction(tmp_path: Path) -> None:
    (tmp_path / "keel.toml").write_text(
        'port = 9000\nlog_level = "DEBUG"\n[resilience.retry]\nmax_attempts = 5\n'
    )
    proc = _run(
        ["-m", "app.cli", "config"],
        tmp_path,
        PYTHONPATH=str(ROOT),
        KEEL_PORT="9100",
        KEEL_API_TOKEN="super-secret-token-value-1234",
    )
    assert proc.returncode == 0, proc.stderr
    cfg = json.loads(proc.stdout)
    assert cfg["port"] == 9100  # env beats TOML
    assert cfg["log_level"] == "DEBUG"  # TOML beats defaults
    assert cfg["resilience"]["retry"]["max_attempts"] == 5
    assert cfg["resilience"]["retry"]["base_delay_s"] == 0.1  # default survives
    assert "super-secret-token-value-1234" not in proc.stdout


def test_keel_config_env_points_at_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "elsewhere.toml"
    cfg.write_text(
        '[providers.cloud]\nbase_url = "http://127.0.0.1:9/v1"\nmodels = ["small"]\n'
        '[routes]\nchat = ["cloud/small"]\n'
    )
    monkeypatch.setenv("KEEL_CONFIG", str(cfg))
    assert Settings().routes == {"chat": ["cloud/small"]}


@pytest.mark.slow
def test_serve_from_empty_directory_then_restart(tmp_path: Path) -> None:
    env = {"PYTHONPATH": str(ROOT)}
    proc = KeelProcess(env, tmp_path).start()
    try:
        with httpx.Client(base_url=proc.url) as c:
            assert c.get("/healthz").status_code == 200
            assert c.get("/readyz").status_code == 200
            assert "keel_http_requests_total" in c.get("/metrics").text
    finally:
        proc.stop()
    assert (tmp_path / "data" / "keel.db").exists()
    # uvicorn re-raises SIGTERM after a graceful shutdown, so the exit status is -15.
    assert "Application shutdown complete" in proc.logs()


async def test_keel_migrate_is_the_deploy_step(tmp_path: Path) -> None:
    from app.main import create_app
    from tests.conftest import asgi_client

    data = tmp_path / "d"
    app = create_app(Settings(data_dir=data, auto_migrate=False, log_format="text"))
    async with asgi_client(app) as client:
        assert (await client.get("/readyz")).status_code == 503
    proc = _run(
        ["-m", "app.cli", "migrate"], tmp_path, PYTHONPATH=str(ROOT), KEEL_DATA_DIR=str(data)
    )
    assert proc.returncode == 0, proc.stderr
    app = create_app(Settings(data_dir=data, auto_migrate=False, log_format="text"))
    async with asgi_client(app) as client:
        assert (await client.get("/readyz")).status_code == 200
