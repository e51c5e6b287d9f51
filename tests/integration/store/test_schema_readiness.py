"""A replica started before the migration job: /readyz re-checks the schema on every probe, and
store endpoints answer 503 schema_not_ready (never 500) until `keel migrate` has run."""

from __future__ import annotations

from collections.abc import Callable

from app.main import create_app
from app.settings import Settings
from app.store.database import Database
from app.store.migrate import upgrade_to_head
from tests.conftest import asgi_client
from tests.integration.test_foundation import assert_problem


async def test_readyz_turns_ready_once_migrated_without_a_restart(
    make_settings: Callable[..., Settings], db_url: str
) -> None:
    app = create_app(make_settings(database_url=db_url, auto_migrate=False))
    async with asgi_client(app) as client:
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["code"] == "schema_not_ready"
        assert ready.headers["retry-after"]

        for resp in (
            await client.post("/v1/conversations", json={"title": "t"}),
            await client.get("/v1/conversations"),
            await client.get("/v1/conversations/c_nope"),
        ):
            body = assert_problem(resp, 503, "schema_not_ready")
            assert body["retryable"] is True
            assert resp.headers["retry-after"]
            for leak in ("no such table", "relation", "SELECT", "Traceback"):
                assert leak not in resp.text

        # The deploy step runs while this replica keeps serving (as `keel migrate` does).
        db = Database(db_url)
        try:
            await upgrade_to_head(db)
        finally:
            await db.dispose()

        ready = await client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"] == {"database": "ok", "schema": "ok"}
        created = await client.post("/v1/conversations", json={"title": "t"})
        assert created.status_code == 201, created.text
