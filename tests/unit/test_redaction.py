"""DESIGN §10: passwords in URLs and credentials in a provider's base_url never get printed."""

from __future__ import annotations

import json
import logging

import pytest

from app.cli import main
from app.observability.logging import JsonFormatter, TextFormatter
from app.observability.redact import redact_text, redact_url
from app.settings import Settings, redacted_dump

SECRETS = ("hunter2", "s3cret", "sk-live-abc123")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql+asyncpg://keel:hunter2@db/keel", "postgresql+asyncpg://keel:***@db/keel"),
        (
            "postgresql+asyncpg://keel@db/keel?password=hunter2&ssl=require",
            "postgresql+asyncpg://keel@db/keel?password=***&ssl=require",
        ),
        (
            "postgresql://db/keel?sslmode=require&PASSWORD=hunter2",
            "postgresql://db/keel?sslmode=require&PASSWORD=***",
        ),
        ("sqlite+aiosqlite:///data/keel.db", "sqlite+aiosqlite:///data/keel.db"),
    ],
)
def test_database_urls(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_base_url_userinfo_is_a_credential_even_without_colon() -> None:
    assert redact_url("https://sk-live-abc123@api.example/v1", keep_user=False) == (
        "https://***@api.example/v1"
    )
    assert redact_url(
        "https://u:s3cret@api.example/v1?api_key=sk-live-abc123", keep_user=False
    ) == ("https://***@api.example/v1?api_key=***")


def _settings() -> Settings:
    return Settings(
        database_url="postgresql+asyncpg://keel@db/keel?password=hunter2",
        providers={
            "cloud": {"base_url": "https://user:s3cret@api.example/v1"},
            "other": {"base_url": "https://sk-live-abc123@other.example/v1"},
        },
    )


def test_dump_redacts_query_password_and_provider_credentials() -> None:
    dumped = json.dumps(redacted_dump(_settings()))
    for secret in SECRETS:
        assert secret not in dumped
    assert "api.example/v1" in dumped
    assert "keel@db" in dumped


def test_keel_config_prints_no_secret(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KEEL_DATABASE_URL", "postgresql+asyncpg://keel@db/keel?password=hunter2")
    monkeypatch.setenv("KEEL_PROVIDERS__CLOUD__BASE_URL", "https://user:s3cret@api.example/v1")
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    assert "password=***" in out
    for secret in SECRETS:
        assert secret not in out


@pytest.mark.parametrize("formatter", [JsonFormatter(), TextFormatter()])
def test_log_lines_mask_url_credentials(formatter: logging.Formatter) -> None:
    # httpx logs every request URL at INFO; exceptions quote DSNs.
    record = logging.LogRecord(
        "httpx",
        logging.INFO,
        __file__,
        1,
        "HTTP Request: POST %s",
        ("https://user:s3cret@api.example/v1/chat/completions",),
        None,
    )
    record.dsn = "postgresql://keel@db/keel?password=hunter2"
    try:
        raise ConnectionError("cannot reach https://sk-live-abc123:x@other.example/v1")
    except ConnectionError as exc:
        record.exc_info = (type(exc), exc, exc.__traceback__)
    line = formatter.format(record)
    for secret in SECRETS:
        assert secret not in line
    assert "api.example/v1/chat/completions" in line


def test_plain_text_passes_unchanged() -> None:
    text = "GET /v1/models 200 route=/v1/models status=200"
    assert redact_text(text) == text
