"""A file being downloaded: ``<name>.partial`` plus a JSON sidecar ``<name>.partial.json``.

The sidecar records what the partial bytes are a prefix *of* (url, expected sha256 and size) and
the validators the server gave (``ETag``, ``Last-Modified``) so a resume can send ``If-Range``.
The partial's length on disk is the resume offset: it survives ``kill -9`` (the page cache
does). After a power loss the tail may be garbage; the final SHA-256 catches that and the one
fresh-from-zero retry of a resumed attempt repairs it.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from app.lifecycle.hashing import fsync_dir
from app.lifecycle.manifest import FileSpec
from app.lifecycle.ownership import PARTIAL_MARK
from app.lifecycle.paths import PARTIAL_SUFFIX, SIDECAR_SUFFIX


@dataclass(slots=True)
class Sidecar:
    url: str
    sha256: str
    size: int
    etag: str | None = None
    last_modified: str | None = None
    bytes: int = 0
    updated_at: float = 0.0
    keel: str = PARTIAL_MARK  # the reaper deletes only partials whose sidecar says so

    def matches(self, spec: FileSpec) -> bool:
        return (self.url, self.sha256, self.size) == (spec.url, spec.sha256, spec.size)

    def if_range(self) -> str | None:
        """A strong ETag, else Last-Modified (RFC 9110 §13.1.5: weak tags never match)."""
        if self.etag and not self.etag.startswith("W/"):
            return self.etag
        return self.last_modified


@dataclass(frozen=True, slots=True)
class PartialPaths:
    final: Path

    @property
    def partial(self) -> Path:
        return self.final.with_name(self.final.name + PARTIAL_SUFFIX)

    @property
    def sidecar(self) -> Path:
        return self.final.with_name(self.final.name + SIDECAR_SUFFIX)

    def size(self) -> int:
        try:
            return self.partial.stat().st_size
        except FileNotFoundError:
            return 0

    def read_sidecar(self) -> Sidecar | None:
        try:
            data = json.loads(self.sidecar.read_text(encoding="utf-8"))
            return Sidecar(**{f.name: data[f.name] for f in fields(Sidecar) if f.name in data})
        except (OSError, ValueError, TypeError):
            return None

    def write_sidecar(self, sidecar: Sidecar) -> None:
        """Atomically replace the sidecar (small; no fsync: it is advisory, the hash decides)."""
        sidecar.updated_at = time.time()
        tmp = self.sidecar.with_name(self.sidecar.name + ".tmp")
        tmp.write_text(json.dumps(asdict(sidecar)), encoding="utf-8")
        os.replace(tmp, self.sidecar)

    def remove(self) -> None:
        for path in (self.partial, self.sidecar):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def open_partial(path: Path, offset: int) -> int:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.ftruncate(fd, offset)
        os.lseek(fd, offset, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


def promote(paths: PartialPaths) -> None:
    """fsync the verified partial, rename it into place, fsync the directory."""
    fd = os.open(paths.partial, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(paths.partial, paths.final)
    fsync_dir(paths.final.parent)
    with contextlib.suppress(FileNotFoundError):
        paths.sidecar.unlink()
