"""The catalogue on its own: no web framework behind it, the OpenAI envelope in every problem,
and ``x-should-retry`` true only where a client retry costs the provider nothing."""

from __future__ import annotations

import subprocess
import sys

import pytest

from app.errors import (
    CircuitOpen,
    IdempotencyInProgress,
    KeelError,
    ModelNotFound,
    Overloaded,
    RateLimited,
    UpstreamError,
    UpstreamNotFound,
    ValidationFailed,
    catalogue,
)
from tests.fakes.servers import ROOT


def test_catalogue_imports_no_web_framework() -> None:
    code = (
        "import sys, app.errors; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'fastapi', 'starlette'}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("cls", [catalogue()[code] for code in sorted(catalogue())])
def test_every_problem_carries_the_openai_envelope(cls: type[KeelError]) -> None:
    body = cls("Something specific.").problem("rid-1")
    assert body["error"]["message"] == body["detail"] == "Something specific."
    assert body["error"]["code"] == cls.code
    assert body["error"]["type"] in (
        "invalid_request_error",
        "authentication_error",
        "permission_error",
        "rate_limit_error",
        "server_error",
    )
    assert (body["error"]["type"] == "server_error") == (cls.status_code >= 500)


def test_param_and_types() -> None:
    assert ModelNotFound("x", param="model").envelope()["param"] == "model"
    assert ValidationFailed("x").envelope()["param"] is None
    assert RateLimited("x").envelope()["type"] == "rate_limit_error"
    assert UpstreamNotFound("x").status_code == 404


@pytest.mark.parametrize(
    ("error", "should_retry"),
    [
        (Overloaded("queue full", retry_after=1), "true"),
        (IdempotencyInProgress("busy"), "true"),
        (CircuitOpen("half-opens soon", retry_after=1.5), "true"),
        (CircuitOpen("open for long", retry_after=10), "false"),
        (CircuitOpen("no wait known"), "false"),
        (UpstreamError("after Keel's retries"), "false"),
        (RateLimited("after Keel's retries", retry_after=7), "false"),
        (ModelNotFound("typo"), "false"),
    ],
)
def test_should_retry_header(error: KeelError, should_retry: str) -> None:
    headers = error.response_headers()
    assert headers["x-should-retry"] == should_retry
    if error.status_code in (429, 503):
        assert int(headers["Retry-After"]) >= 1
