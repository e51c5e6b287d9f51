"""Storage roots: where installed model files live, persisted in ``settings_kv``.

One shared root (default ``<data_dir>/models``) and optional per-capability overrides. A root
is accepted only if it is an absolute directory Keel can write (``create: true`` makes a missing
one) and not a system location; Keel marks it as its own (``ownership.py``). Changing a root
does not move files already installed under the old one. Model files are
``<root>/<model id>/<file name>``, joined with ``safe_join`` so nothing escapes the root: a path
that resolves elsewhere (a symbolic link) is ``storage_unavailable`` for that model only.

A dry run applies the same checks as the real call, without creating or probing anything.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator
from sqlalchemy import select, update

from app.errors import StorageUnavailable, ValidationFailed
from app.lifecycle.jobs import utcnow
from app.lifecycle.manifest import CAPABILITIES, FileSpec, ModelSpec
from app.lifecycle.ownership import is_system_location, mark_root
from app.lifecycle.paths import PathEscapesRoot, safe_join
from app.store.database import Database
from app.store.tables import settings_kv

SETTINGS_KEY = "lifecycle.storage"
log = logging.getLogger("keel.lifecycle")

FreeSpace = Callable[[Path], int]


class StorageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    root: str | None = None
    overrides: dict[str, str] = {}

    @field_validator("overrides")
    @classmethod
    def _known_capabilities(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = set(value) - set(CAPABILITIES)
        if unknown:
            raise ValueError(f"unknown capability; expected one of {', '.join(CAPABILITIES)}")
        return value


def disk_free(path: Path) -> int:
    return shutil.disk_usage(existing_ancestor(path)).free


def existing_ancestor(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path("/")


def device_of(path: Path) -> int:
    return existing_ancestor(path).stat().st_dev


class StorageRoots:
    def __init__(self, db: Database, data_dir: Path, free_space: FreeSpace = disk_free) -> None:
        self.db = db
        self.default_root = (data_dir / "models").absolute()
        self.free_space = free_space
        self.config = StorageConfig()

    async def load(self) -> None:
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    select(settings_kv.c.value).where(settings_kv.c.key == SETTINGS_KEY)
                )
            ).first()
        if row is not None:
            self.config = StorageConfig.model_validate(row.value)

    def mark_roots(self) -> None:
        """Mark every root that exists as Keel's (roots accepted before roots were marked).

        The default root is Keel's by construction (it lives in Keel's data dir, which may
        itself be under a system location such as ``/root``); configured ones are re-checked.
        """
        for root in self.all_roots():
            mine = root == self.default_root
            if root.is_dir() and (mine or not is_system_location(root)):
                try:
                    mark_root(root)
                except OSError:
                    log.warning("could not mark a storage root", extra={"root": str(root)})

    def root(self, capability: str | None = None) -> Path:
        override = self.config.overrides.get(capability) if capability else None
        if override:
            return Path(override)
        return Path(self.config.root) if self.config.root else self.default_root

    def all_roots(self) -> list[Path]:
        seen: list[Path] = []
        for path in [self.root(None), *(self.root(c) for c in CAPABILITIES)]:
            if path not in seen:
                seen.append(path)
        return seen

    def model_dir(self, model: ModelSpec) -> Path:
        try:
            return safe_join(self.root(model.capability), model.id)
        except PathEscapesRoot:
            raise _escaped(model) from None

    def file_path(self, model: ModelSpec, spec: FileSpec) -> Path:
        try:
            return safe_join(self.root(model.capability), model.id, spec.name)
        except PathEscapesRoot:
            raise _escaped(model) from None

    def describe(self) -> dict[str, Any]:
        roots = []
        for cap in CAPABILITIES:
            path = self.root(cap)
            roots.append(
                {
                    "capability": cap,
                    "path": str(path),
                    "overridden": cap in self.config.overrides,
                    "exists": path.is_dir(),
                    "free_bytes": self._free(path),
                }
            )
        return {
            "root": self.config.root,
            "default_root": str(self.default_root),
            "overrides": dict(self.config.overrides),
            "effective": roots,
        }

    def _free(self, path: Path) -> int | None:
        try:
            return self.free_space(path)
        except OSError:
            return None

    async def replace(self, new: StorageConfig, *, create: bool, dry_run: bool) -> None:
        """Validate every root of ``new`` (creating missing ones when asked) and persist it."""
        checks: list[tuple[str, str]] = []
        if new.root is not None:
            checks.append(("root", new.root))
        checks += [(f"overrides.{cap}", path) for cap, path in new.overrides.items()]
        for field, raw in checks:
            check_root(field, raw, create=create, dry_run=dry_run)
        normalised = StorageConfig(
            root=str(Path(new.root)) if new.root else None,
            overrides={cap: str(Path(p)) for cap, p in new.overrides.items()},
        )
        if dry_run:
            return
        value = normalised.model_dump(mode="json")
        async with self.db.write() as conn:
            done = await conn.execute(
                update(settings_kv)
                .where(settings_kv.c.key == SETTINGS_KEY)
                .values(value=value, updated_at=utcnow())
            )
            if not done.rowcount:
                await conn.execute(
                    settings_kv.insert().values(key=SETTINGS_KEY, value=value, updated_at=utcnow())
                )
        self.config = normalised


def check_root(field: str, raw: str, *, create: bool, dry_run: bool = False) -> None:
    """Refuse a root that is relative, a system location, missing (unless created) or not
    writable; mark an accepted one. A dry run refuses exactly what the real call refuses.

    Problem details name the field, never the path (DESIGN §4); the caller knows what it sent.
    """
    path = Path(raw)
    if not path.is_absolute() or "\x00" in raw:
        raise _invalid(field, "must be an absolute path")
    if is_system_location(path):
        raise _invalid(field, "is a system location; give Keel a directory of its own")
    try:
        exists = path.exists()
    except OSError:  # e.g. a component that is a file: /etc/passwd/x
        exists = False
    if exists and not path.is_dir():
        raise _invalid(field, "exists and is not a directory")
    if not exists:
        if not create:
            raise _invalid(field, 'does not exist; send "create": true to create it')
        parent = existing_ancestor(path)
        if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
            raise _invalid(field, "could not be created")
        if dry_run:
            return
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError:
            raise _invalid(field, "could not be created") from None
    if dry_run:
        if not os.access(path, os.W_OK | os.X_OK):
            raise _invalid(field, "is not writable by Keel")
        return
    if not is_writable(path):
        raise _invalid(field, "is not writable by Keel")
    try:
        mark_root(path)
    except OSError:
        raise _invalid(field, "is not writable by Keel") from None


def is_writable(path: Path) -> bool:
    try:
        fd, name = tempfile.mkstemp(prefix=".keel-probe-", dir=path)
    except OSError:
        return False
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(name)
    return True


def _escaped(model: ModelSpec) -> StorageUnavailable:
    return StorageUnavailable(
        "This model's folder or files resolve outside their storage root (a symbolic link?); "
        "remove the link or move the files into the root.",
        extra={"model": model.id},
    )


def _invalid(field: str, why: str) -> ValidationFailed:
    return ValidationFailed(
        f"The storage root {field} {why}.", extra={"errors": [{"field": field, "message": why}]}
    )
