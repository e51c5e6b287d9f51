"""The documented settings cannot drift from the code."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from app.settings import Settings, load_settings, redacted_dump

ROOT = Path(__file__).resolve().parents[2]


def test_env_example_lists_every_setting() -> None:
    spec = importlib.util.spec_from_file_location("gen", ROOT / "scripts" / "gen_env_example.py")
    assert spec is not None
    assert spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert (ROOT / ".env.example").read_text() == gen.render(), (
        "run: .venv/bin/python scripts/gen_env_example.py"
    )


def test_bad_route_target_is_a_config_error() -> None:
    from app.settings import ConfigError

    with pytest.raises(ConfigError, match="routes"):
        load_settings(routes={"chat": ["nowhere/model"]})


def test_dump_redacts_database_password() -> None:
    s = Settings(database_url="postgresql+asyncpg://keel:hunter2@db/keel")
    assert "hunter2" not in str(redacted_dump(s))


def test_error_catalogue_is_documented() -> None:
    from app.errors import catalogue

    doc = (ROOT / "docs" / "errors.md").read_text()
    for code, cls in catalogue().items():
        assert f"| `{code}` | {cls.status_code} |" in doc, code
