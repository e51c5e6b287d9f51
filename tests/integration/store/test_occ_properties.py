"""Property test of the optimistic-concurrency rules: any sequence of appends, PATCHes and
DELETEs with any preconditions gives exactly the outcome a simple model predicts (SQLite)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.errors import KeelError
from app.observability.metrics import Metrics
from app.settings import StoreSettings
from app.store.conversation_models import FieldChanges, NewMessage, Precondition
from app.store.conversations import ConversationService
from app.store.database import Database
from app.store.migrate import upgrade_to_head


@dataclass
class Model:
    version: int = 1
    messages: int = 0
    deleted: bool = False

    def expect(self, kind: str, pre: Precondition) -> int:
        """The status the store must answer (200 for success)."""
        if self.deleted:
            return 404
        if kind in ("patch", "delete") and not pre.given:
            return 428
        if pre.if_match is not None and self.version not in pre.if_match:
            return 412
        if pre.expected_version is not None and pre.expected_version != self.version:
            return 409
        return 200


versions = st.integers(min_value=0, max_value=6)
preconditions = st.builds(
    lambda tags, star, expected: Precondition.of(
        tags, expected_version=expected, any_version=star and tags is None
    ),
    st.none() | st.sets(versions, min_size=1, max_size=2),
    st.booleans(),
    st.none() | versions,
)
operations = st.lists(
    st.tuples(
        st.sampled_from(["append", "patch", "delete"]),
        preconditions,
        st.integers(min_value=1, max_value=3),
    ),
    max_size=12,
)


async def _scenario(url: str, ops: list[tuple[str, Precondition, int]]) -> None:
    db = Database(url)
    service = ConversationService(StoreSettings(), Metrics())
    try:
        async with db.write() as conn:
            cid = (await service.create(conn)).conversation.id
        model = Model()
        for kind, pre, n in ops:
            expected = model.expect(kind, pre)
            try:
                async with db.write() as conn:
                    if kind == "append":
                        out = await service.append(conn, cid, [NewMessage("user", "x")] * n, pre)
                        assert [m.seq for m in out.messages] == list(
                            range(model.messages + 1, model.messages + n + 1)
                        )
                        version = out.conversation.version
                    elif kind == "patch":
                        version = (
                            await service.update(conn, cid, FieldChanges(set_title=True), pre)
                        ).version
                    else:
                        version = (await service.delete(conn, cid, pre)).version
                status = 200
            except KeelError as exc:
                status, current = exc.status_code, exc.current_version
                if status in (409, 412, 428):
                    assert current == model.version
            assert status == expected, (kind, pre, model)
            if status == 200:
                assert version == model.version + 1
                model.version += 1
                model.messages += n if kind == "append" else 0
                model.deleted = kind == "delete"
    finally:
        await db.dispose()


def test_occ_rules_match_the_model(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'occ.db'}"

    async def migrate() -> None:
        db = Database(url)
        await upgrade_to_head(db)
        await db.dispose()

    asyncio.run(migrate())

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(operations)
    def check(ops: list[tuple[str, Precondition, int]]) -> None:
        asyncio.run(_scenario(url, ops))

    check()
