"""Checksums: an item altered behind Keel's back is detected on every read of it (pages,
single items, deltas) and never returned; /verify also finds removed ones (SQLite and
PostgreSQL)."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import delete, text, update

from app.store.database import Database
from app.store.tables import conversations, messages
from tests.integration.store.conftest import append, create_conversation, metric_value
from tests.integration.test_foundation import assert_problem

CORRUPTION = 'keel_data_corruption_total{kind="message"}'


async def _tamper(db: Database, cid: str, at_seq: int, **values: object) -> None:
    async with db.write() as conn:
        await conn.execute(
            update(messages)
            .where(messages.c.conversation_id == cid, messages.c.seq == at_seq)
            .values(**values)
        )


async def test_altered_content_is_500_data_corrupted(
    client: httpx.AsyncClient,
    store_db: Database,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cid = (await create_conversation(client))["id"]
    sent = (await append(client, cid, "original words", "second")).json()["messages"]
    await _tamper(store_db, cid, 1, content="TAMPERED words")

    url = f"/v1/conversations/{cid}"
    resp = await client.get(f"{url}/items")
    body = assert_problem(resp, 500, "data_corrupted")
    for leak in ("TAMPERED", "original words", "second", "SELECT", "checksum", "Traceback"):
        assert leak not in resp.text
    assert body["retryable"] is False
    for read in (
        client.get(f"{url}/items/{sent[0]['id']}"),
        client.get(f"{url}/items", params={"since_version": 0}),
        client.get(url, params={"since_version": 0}),
    ):
        got = await read
        assert "TAMPERED" not in got.text
        assert_problem(got, 500, "data_corrupted")
    # Reads that do not include the damaged item are still served.
    assert (await client.get(f"{url}/items/{sent[1]['id']}")).status_code == 200
    later = await client.get(f"{url}/items", params={"since_version": 2})
    assert later.status_code == 200
    page = await client.get(f"{url}/items", params={"limit": 1})  # newest first: seq 2
    assert page.status_code == 200
    metrics = (await client.get("/metrics")).text
    assert metric_value(metrics, CORRUPTION) == 4
    logged = [
        r
        for r in caplog.records
        if r.name == "keel.store" and getattr(r, "conversation_id", None) == cid
    ]
    assert logged
    assert logged[0].corrupted_message_ids == [sent[0]["id"]]  # type: ignore[attr-defined]

    report = await client.post(f"/v1/conversations/{cid}/verify")
    assert report.status_code == 200
    assert report.json() == {
        "id": cid,
        "version": 2,
        "ok": False,
        "messages_checked": 2,
        "corrupted": [{"id": sent[0]["id"], "seq": 1}],
        "missing_seqs": [],
    }
    assert "TAMPERED" not in report.text


@pytest.mark.parametrize(
    ("column", "value"), [("role", "system"), ("seq", 7), ("conversation_id", "other")]
)
async def test_other_covered_fields_are_checked(
    client: httpx.AsyncClient,
    store_db: Database,
    column: str,
    value: object,
) -> None:
    cid = (await create_conversation(client))["id"]
    other = (await create_conversation(client))["id"]
    await append(client, cid, "a", "b")
    await append(client, other, "x")
    damaged = cid
    if column == "conversation_id":  # move seq 2 of cid to the end of the other conversation
        await _tamper(store_db, cid, 2, conversation_id=other)
        await _next_seq(store_db, other, 3)
        damaged = other  # cid has a gap (verify finds it); other holds an item bound to cid
    else:
        await _tamper(store_db, cid, 2, **{column: value})
        await _next_seq(store_db, cid, 8)  # a moved seq stays inside the conversation
    assert_problem(await client.get(f"/v1/conversations/{damaged}/items"), 500, "data_corrupted")
    for target in (cid, other) if damaged == other else (cid,):
        assert (await client.post(f"/v1/conversations/{target}/verify")).json()["ok"] is False


async def _next_seq(db: Database, cid: str, next_seq: int) -> None:
    async with db.write() as conn:
        await conn.execute(
            update(conversations).where(conversations.c.id == cid).values(next_seq=next_seq)
        )


async def test_a_missing_message_is_detected(client: httpx.AsyncClient, store_db: Database) -> None:
    cid = (await create_conversation(client))["id"]
    await append(client, cid, "a", "b", "c")
    async with store_db.write() as conn:
        await conn.execute(
            delete(messages).where(messages.c.conversation_id == cid, messages.c.seq == 2)
        )
    # Pages cannot see a hole (a deleted item leaves a tombstone, so a hole is damage):
    # /verify checks that seqs run 1..n.
    report = (await client.post(f"/v1/conversations/{cid}/verify")).json()
    assert (report["ok"], report["missing_seqs"], report["corrupted"]) == (False, [2], [])


async def test_verify_reports_a_healthy_conversation(client: httpx.AsyncClient) -> None:
    cid = (await create_conversation(client))["id"]
    await append(client, cid, "a", "b")
    report = await client.post(f"/v1/conversations/{cid}/verify")
    assert report.json() == {
        "id": cid,
        "version": 2,
        "ok": True,
        "messages_checked": 2,
        "corrupted": [],
        "missing_seqs": [],
    }
    assert metric_value((await client.get("/metrics")).text, CORRUPTION) == 0


async def test_invalid_utf8_from_a_bit_flip_is_data_corrupted(
    client: httpx.AsyncClient, store_db: Database, db_url: str
) -> None:
    """One high-bit flip in an ASCII byte makes stored text invalid UTF-8. SQLite keeps the
    bytes as they are; PostgreSQL refuses them at write time (UTF8 server encoding)."""
    if not db_url.startswith("sqlite"):
        pytest.skip("PostgreSQL never stores invalid UTF-8 in a text column")
    cid = (await create_conversation(client))["id"]
    sent = (await append(client, cid, "hello world", "second")).json()["messages"]
    flipped = bytearray(b"hello world")
    flipped[1] |= 0x80  # "e" (0x65) -> 0xE5: a lead byte with no continuation
    async with store_db.write() as conn:
        await conn.execute(
            text(
                "UPDATE messages SET content = CAST(:b AS TEXT) "
                "WHERE conversation_id = :c AND seq = 1"
            ),
            {"b": bytes(flipped), "c": cid},
        )

    resp = await client.get(f"/v1/conversations/{cid}/items")
    assert_problem(resp, 500, "data_corrupted")
    assert "hello" not in resp.text
    assert "world" not in resp.text
    assert metric_value((await client.get("/metrics")).text, CORRUPTION) == 1

    report = await client.post(f"/v1/conversations/{cid}/verify")
    assert report.status_code == 200, report.text
    assert report.json()["corrupted"] == [{"id": sent[0]["id"], "seq": 1}]
    assert (await client.get("/v1/conversations")).status_code == 200
