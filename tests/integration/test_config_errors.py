"""Configuration mistakes as a new user makes them: each is one line on stderr naming the file
and key (or the variable), exit status 2, no traceback."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from app.main import create_app
from app.settings import Settings
from tests.conftest import asgi_client
from tests.fakes.servers import ROOT, free_port, wait_http


def _keel(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=cwd,
        env={**clean, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _one_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("command", "toml", "needles"),
    [
        (
            "serve",
            '[providers.cloud]\nbase_ur1 = "http://127.0.0.1:9/v1"\n',
            ["keel.toml", "providers.cloud.base_ur1", "base_url"],
        ),
        (
            "migrate",
            '[providers.cloud]\nbase_url = "http://x\nmodels = []\n',
            ["keel.toml", "line 2"],
        ),
        (
            "serve",
            '[providers.cloud]\nmodels = ["small"]\n',
            ["keel.toml", "providers.cloud", "base_url"],
        ),
        (
            "config",
            "[resilience.retry]\nmax_attempts = 0\n",
            ["keel.toml", "resilience.retry.max_attempts"],
        ),
    ],
    ids=["typo", "syntax", "no-base-url", "bad-value"],
)
def test_config_file_mistake_names_file_and_key(
    tmp_path: Path, command: str, toml: str, needles: list[str]
) -> None:
    (tmp_path / "keel.toml").write_text(toml)
    line = _one_line(_keel([command], tmp_path))
    for needle in needles:
        assert needle in line, line


def test_environment_mistake_names_the_variable(tmp_path: Path) -> None:
    line = _one_line(_keel(["config"], tmp_path, KEEL_PROVIDERS__CLOUD__BASE_UR1="x"))
    assert line == "keel: unknown setting KEEL_PROVIDERS__CLOUD__BASE_UR1"


@pytest.mark.parametrize(
    ("data_dir", "needle"),
    [("missing-parent/data", "does not exist"), ("a-file/data", "does not exist")],
)
def test_unusable_data_dir_is_one_line(tmp_path: Path, data_dir: str, needle: str) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    line = _one_line(_keel(["migrate"], tmp_path, KEEL_DATA_DIR=str(tmp_path / data_dir)))
    assert "KEEL_DATA_DIR" in line
    assert needle in line


@pytest.mark.skipif(not Path("/sys/kernel").is_dir(), reason="needs a read-only /sys")
def test_unwritable_data_dir_is_one_line(tmp_path: Path) -> None:
    # /sys refuses new directories even to root, so this holds however the tests run.
    line = _one_line(_keel(["serve"], tmp_path, KEEL_DATA_DIR="/sys/keel-data"))
    assert "KEEL_DATA_DIR=/sys/keel-data" in line


def test_data_dir_is_created_when_its_parent_exists(tmp_path: Path) -> None:
    proc = _keel(["migrate"], tmp_path, KEEL_DATA_DIR=str(tmp_path / "fresh"))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "fresh" / "keel.db").is_file()


def test_log_level_any_case_and_config_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "keel.toml").write_text('log_level = "debug"\n')
    proc = _keel(["config"], tmp_path, KEEL_LOG_LEVEL="warning")
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(proc.stdout)
    assert shown["log_level"] == "WARNING"
    assert shown["config_file"] == str((tmp_path / "keel.toml").resolve())
    bare = json.loads(_keel(["config"], tmp_path / "..").stdout)
    assert bare["config_file"] is None


@pytest.mark.slow
def test_serve_takes_port_flag(tmp_path: Path) -> None:
    """`./run serve --port 9000` passes its flags to `keel serve`."""
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
        cwd=tmp_path,
        env={**clean, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    run_script = (ROOT / "run").read_text()
    assert 'exec .venv/bin/keel serve "$@"' in run_script


async def test_unset_api_key_variable_is_a_startup_warning(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(
        providers={
            "cloud": {
                "base_url": "http://127.0.0.1:9/v1",
                "api_key_env": "KEEL_TEST_UNSET_KEY_VAR",
                "models": ["small"],
            }
        }
    )
    with caplog.at_level(logging.WARNING):
        async with asgi_client(create_app(settings)):
            pass
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("KEEL_TEST_UNSET_KEY_VAR" in m and "cloud" in m for m in warned), warned
