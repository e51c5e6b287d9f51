"""Schemathesis over Keel's own OpenAPI document (DESIGN §9, issue 12.9).

Generic over the document: every operation present is fuzzed, so routes added later are
covered without touching this file. A real uvicorn on a free loopback port serves Keel with
and without a bearer token; each generated request must get no server error and a response
the document describes (status, content type, headers, body schema)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.main import create_app
from app.settings import Settings
from tests.conftest import PG_URL, _pg_database
from tests.fakes.servers import ServerThread

pytestmark = pytest.mark.slow

TOKEN = "fuzz-token-0123456789abcdef"
MAX_EXAMPLES = 8  # per operation and mode: a couple of minutes on a busy 2-core machine
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


MODES = [
    "sqlite-no-token",
    "sqlite-token",
    # PostgreSQL refuses values SQLite stores (a NUL in text): fuzz it too when it is there.
    pytest.param("postgres-no-token", marks=pytest.mark.postgres),
]


@pytest.fixture(scope="module", params=MODES)
def keel(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerThread, dict[str, str]]]:
    store, _, auth = request.param.partition("-")
    database: _pg_database | None = None
    database_url = None
    if store == "postgres":
        if not PG_URL:
            pytest.skip("KEEL_TEST_DATABASE_URL is not set")
        database = _pg_database()
        database_url = asyncio.run(database.__aenter__())
    token = TOKEN if auth == "token" else None
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("fuzz"),
        database_url=database_url,
        log_format="text",
        log_level="WARNING",
        api_token=token,
    )
    try:
        with ServerThread(create_app(settings)) as server:
            yield server, ({"Authorization": f"Bearer {TOKEN}"} if token else {})
    finally:
        if database is not None:
            asyncio.run(database.__aexit__(None, None, None))


def _operations(server: ServerThread) -> list[Any]:
    loaded = schemathesis.openapi.from_url(server.url + "/openapi.json")
    # Storage roots name real directories (create: true makes them): never let a fuzzer
    # point Keel's storage, or its stale-file reaper, at arbitrary paths of this machine.
    schema = loaded.exclude(method="PUT", path="/v1/lifecycle/storage")
    # An Err (an operation schemathesis cannot read) has no ok(): the test fails, as it should.
    return [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_document_is_truthful(
    keel: tuple[ServerThread, dict[str, str]], mode: GenerationMode
) -> None:
    server, auth = keel
    failures: list[str] = []
    operations = _operations(server)
    assert len(operations) >= 20  # the document lists Keel's routes

    for operation in operations:

        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            derandomize=True,  # the suite is deterministic
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def fuzz(case: Any) -> None:
            case.call_and_validate(headers=auth, checks=CHECKS, timeout=30)

        try:
            fuzz()
        except Unsatisfiable:
            assert mode is GenerationMode.NEGATIVE  # nothing in this operation can be invalid
        except (Exception, BaseExceptionGroup) as exc:  # report every operation, then fail
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}"[:1500])
    assert not failures, "\n\n".join(failures)
