"""The files a fresh clone depends on say what the README and DESIGN promise."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_readme_opens_with_serve_and_ci_runs_the_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```sh\n(.*?)```", readme, re.S)
    assert block is not None
    assert readme.index("```sh") < 1200  # on the first screen
    commands = [line.split("#")[0].strip() for line in block.group(1).splitlines()]
    assert commands == ["./run serve", "./run test"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert ci.strip().splitlines()[-1] == "./run test"


def test_dockerfile_is_slim_non_root_with_healthcheck_and_volume() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.1\d-slim", text, re.M)
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user
    assert user[-1] not in ("root", "0")
    assert "HEALTHCHECK" in text
    assert "/readyz" in text  # migrated and reachable, not merely alive
    assert re.search(r'^VOLUME \["/data"\]', text, re.M)
    assert "KEEL_DATA_DIR=/data" in text


def test_compose_has_named_volume_and_postgres_profile() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert "keel-data:/data" in services["keel"]["volumes"]
    assert "/readyz" in " ".join(services["keel"]["healthcheck"]["test"])
    assert "keel-data" in compose["volumes"]
    assert services["postgres"]["profiles"] == ["postgres"]
    pg_keel = services["keel-pg"]
    assert pg_keel["profiles"] == ["postgres"]
    assert pg_keel["environment"]["KEEL_DATABASE_URL"].startswith("postgresql+asyncpg://")
    assert pg_keel["depends_on"]["postgres"]["condition"] == "service_healthy"
