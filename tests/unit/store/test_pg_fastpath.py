from __future__ import annotations

import pytest

from app.store.pg_fastpath import rowcount


@pytest.mark.parametrize(
    ("status", "expected"),
    [("UPDATE 1", 1), ("UPDATE 0", 0), ("INSERT 0 1", 1), ("DELETE 12", 12), ("BEGIN", -1)],
)
def test_rowcount_reads_the_command_tag(status: str, expected: int) -> None:
    assert rowcount(status) == expected
