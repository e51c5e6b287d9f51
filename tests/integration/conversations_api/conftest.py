"""The official openai SDK wired to Keel in-process (its own httpx2 over ASGI), and direct
access to the store the app under test uses."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any, Literal

import httpx2
import openai
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from openai.types.conversations import Message
from openai.types.responses import EasyInputMessageParam
from sqlalchemy import event
from sqlalchemy.engine import Engine

from app.settings import Settings
from app.store.database import Database


@pytest.fixture
async def sdk(app: FastAPI) -> AsyncIterator[openai.AsyncOpenAI]:
    async with LifespanManager(app, startup_timeout=30, shutdown_timeout=30) as manager:
        http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=manager.app))
        client = openai.AsyncOpenAI(
            base_url="http://localhost/v1", api_key="unused", max_retries=0, http_client=http
        )
        try:
            yield client
        finally:
            await client.close()


@pytest.fixture
async def db(sdk: openai.AsyncOpenAI, settings: Settings) -> AsyncIterator[Database]:
    """The migrated store behind ``sdk``."""
    store = Database(settings.effective_database_url, settings.store)
    try:
        yield store
    finally:
        await store.dispose()


class StatementLog:
    """Every SQL statement any engine sends while it listens."""

    def __init__(self) -> None:
        self.statements: list[str] = []

    def __call__(self, conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
        self.statements.append(statement)


@pytest.fixture
def statements() -> Iterator[StatementLog]:
    log = StatementLog()
    event.listen(Engine, "before_cursor_execute", log)
    try:
        yield log
    finally:
        event.remove(Engine, "before_cursor_execute", log)


def user(text: str) -> EasyInputMessageParam:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


def said(role: Literal["user", "assistant"], content: Any) -> EasyInputMessageParam:
    """An item in any shape the SDK's types allow (content as a string or parts)."""
    return {"role": role, "content": content}


def item_id(item: object) -> str:
    """The id of an item the SDK parsed (typed ``str | None`` on some item kinds)."""
    value = getattr(item, "id", None)
    assert isinstance(value, str)
    return value


def text_of(item: object) -> str:
    """The joined text of a message item's content parts."""
    assert isinstance(item, Message)
    return "".join(str(getattr(part, "text", "")) for part in item.content)
