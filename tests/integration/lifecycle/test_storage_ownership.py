"""Storage roots are Keel's own: a symbolic link that leads out of a root fails that model only
(state error, storage_unavailable), system locations are refused by the dry run exactly as by
the real call, roots are marked, and the stale-partial reaper deletes only Keel's own files."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from app.lifecycle.ownership import PARTIAL_MARK, ROOT_MARKER
from app.lifecycle.partial import PartialPaths, Sidecar
from tests.conftest import asgi_client
from tests.integration.lifecycle.conftest import Harness, payload, wait_for, wait_state
from tests.integration.test_foundation import assert_problem

SIZE = 4096


async def test_a_link_out_of_the_root_fails_that_model_only(
    harness: Harness, tmp_path: Path
) -> None:
    harness.model("linked", payload(SIZE))
    harness.model("filelink", payload(SIZE, 1))
    harness.model("fine", payload(SIZE, 2))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "linked.bin").write_bytes(b"not Keel's")
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"keep me")
    models = harness.data_dir / "models"
    models.mkdir()
    (models / "linked").symlink_to(outside, target_is_directory=True)
    (models / "filelink").mkdir()
    (models / "filelink" / "filelink.bin").symlink_to(secret)

    async with asgi_client(harness.app()) as client:
        listed = await client.get("/v1/lifecycle/models")
        assert listed.status_code == 200, listed.text
        states = {m["id"]: m for m in listed.json()["data"]}
        for bad in ("linked", "filelink"):
            assert states[bad]["state"] == "error"
            assert states[bad]["error"]["code"] == "storage_unavailable"
            one = await client.get(f"/v1/lifecycle/models/{bad}")
            assert one.status_code == 200
            assert one.json()["state"] == "error"
            events = await client.get(f"/v1/lifecycle/models/{bad}/events")
            assert events.status_code == 200
            first = json.loads(events.text.split("data: ", 1)[1].split("\n", 1)[0])
            assert first["error"]["code"] == "storage_unavailable"
            for resp in (
                await client.post(f"/v1/lifecycle/models/{bad}/download"),
                await client.post(f"/v1/lifecycle/models/{bad}/download?dry_run=true"),
                await client.delete(f"/v1/lifecycle/models/{bad}"),
                await client.delete(f"/v1/lifecycle/models/{bad}?dry_run=true"),
                await client.post(f"/v1/lifecycle/models/{bad}/verify"),
            ):
                body = assert_problem(resp, 503, "storage_unavailable")
                assert str(outside) not in resp.text
                assert str(secret) not in resp.text
                assert body["detail"]
        assert states["fine"]["state"] == "absent"
        assert (await client.post("/v1/lifecycle/models/fine/download")).status_code == 202
        assert (await wait_state(client, "fine", {"installed", "error"}))["state"] == "installed"
        assert (await client.get("/readyz")).status_code == 200
    assert (outside / "linked.bin").read_bytes() == b"not Keel's"
    assert secret.read_bytes() == b"keep me"


@pytest.mark.parametrize(
    "path",
    ["/", "/proc", "/sys", "/etc", "/etc/passwd/x", "/usr/local/models", "/root/models", "/tmp"],
)
async def test_system_locations_are_refused_by_dry_run_and_real_call(
    harness: Harness, path: str
) -> None:
    async with asgi_client(harness.app()) as client:
        for dry in ("?dry_run=true", ""):
            resp = await client.put(
                f"/v1/lifecycle/storage{dry}", json={"root": path, "create": True}
            )
            assert_problem(resp, 422, "validation_error")
            assert path not in resp.text or path == "/"
    assert not Path("/etc/passwd/x").exists()


async def test_dry_run_agrees_with_the_real_call(harness: Harness, tmp_path: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    missing = tmp_path / "missing"
    async with asgi_client(harness.app()) as client:
        for body in (
            {"root": str(a_file / "below")},  # a component is a file
            {"root": str(a_file)},  # not a directory
            {"root": str(missing)},  # missing without create
        ):
            outcomes = []
            for query in ("?dry_run=true", ""):
                resp = await client.put(f"/v1/lifecycle/storage{query}", json=body)
                outcomes.append((resp.status_code, resp.json().get("code")))
            assert outcomes[0] == outcomes[1] == (422, "validation_error"), body
        dry = await client.put(
            "/v1/lifecycle/storage?dry_run=true", json={"root": str(missing), "create": True}
        )
        assert dry.status_code == 200
        assert not missing.exists()
        real = await client.put(
            "/v1/lifecycle/storage", json={"root": str(missing), "create": True}
        )
        assert real.status_code == 200
        assert (missing / ROOT_MARKER).is_file()
    assert (harness.data_dir / "models" / ROOT_MARKER).is_file()  # the default root too


async def test_the_reaper_deletes_only_keels_own_stale_partials(harness: Harness) -> None:
    harness.model("tiny", payload(SIZE))
    folder = harness.final("tiny").parent
    folder.mkdir(parents=True)
    ours = PartialPaths(folder / "tiny.bin")
    ours.write_sidecar(Sidecar(url="http://x/tiny.bin", sha256="0" * 64, size=SIZE))
    ours.partial.write_bytes(b"x")
    assert json.loads(ours.sidecar.read_text())["keel"] == PARTIAL_MARK
    foreign = folder / "holiday.mov.partial"  # a user's own download, same naming habit
    foreign_sidecar = folder / "holiday.mov.partial.json"
    foreign.write_bytes(b"user data")
    foreign_sidecar.write_text('{"url": "http://elsewhere"}')
    user_dir = harness.data_dir / "models" / "notes"
    user_dir.mkdir()
    (user_dir / "draft.partial").write_bytes(b"user data")
    ancient = time.time() - 3600
    for path in (ours.partial, ours.sidecar, foreign, foreign_sidecar, user_dir / "draft.partial"):
        os.utime(path, (ancient, ancient))

    async with asgi_client(harness.app(harness.settings(partial_max_age_s=600))):
        await wait_for(lambda: not ours.partial.exists() and not ours.sidecar.exists())
    assert foreign.read_bytes() == b"user data"
    assert foreign_sidecar.exists()
    assert (user_dir / "draft.partial").read_bytes() == b"user data"


async def test_the_reaper_leaves_an_unmarked_root_alone(harness: Harness, tmp_path: Path) -> None:
    harness.model("tiny", payload(SIZE))
    folder = harness.final("tiny").parent
    folder.mkdir(parents=True)
    ours = PartialPaths(folder / "tiny.bin")
    ours.write_sidecar(Sidecar(url="http://x/tiny.bin", sha256="0" * 64, size=SIZE))
    ours.partial.write_bytes(b"x")
    ancient = time.time() - 3600
    for path in (ours.partial, ours.sidecar):
        os.utime(path, (ancient, ancient))
    from app.lifecycle.ownership import reap_stale_partials

    root = harness.data_dir / "models"
    assert reap_stale_partials([root], set(), time.time()) == 0  # no marker: not Keel's root
    (root / ROOT_MARKER).write_text("{}")
    assert reap_stale_partials([root], set(), time.time()) == 2


async def test_a_replica_started_before_migration_starts_its_lifecycle_once_migrated(
    harness: Harness, tmp_path: Path
) -> None:
    """Persisted roots are loaded and unfinished jobs resumed when the schema reaches head,
    without a restart (the replica was started before `keel migrate`)."""
    from app.store.database import Database
    from app.store.migrate import upgrade_to_head

    harness.model("tiny", payload(SIZE))
    settings = harness.settings().model_copy(update={"auto_migrate": False})
    app = harness.app(settings, schema_poll_s=0.05)
    async with asgi_client(app) as client:
        assert not (harness.data_dir / "models" / ROOT_MARKER).exists()
        listed = await client.get("/v1/lifecycle/models")
        assert listed.json()["data"][0]["state"] == "absent"
        db = Database(harness.db_url)
        try:
            await upgrade_to_head(db)
        finally:
            await db.dispose()
        await wait_for(lambda: (harness.data_dir / "models" / ROOT_MARKER).is_file())
        assert (await client.get("/readyz")).status_code == 200
        assert (await client.post("/v1/lifecycle/models/tiny/download")).status_code == 202
        assert (await wait_state(client, "tiny", {"installed", "error"}))["state"] == "installed"


def test_the_default_root_is_marked_even_below_a_system_location(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keel's own data dir may sit under /root (running as root from its home)."""
    from typing import cast

    from app.lifecycle.storage import StorageRoots
    from app.store.database import Database

    monkeypatch.setattr("app.lifecycle.storage.is_system_location", lambda _path: True)
    storage = StorageRoots(cast(Database, None), tmp_path / "data")
    storage.default_root.mkdir(parents=True)
    storage.mark_roots()
    assert (storage.default_root / ROOT_MARKER).is_file()
