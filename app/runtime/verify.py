"""Verify before use: a model file is loaded only if its verification stamp still matches.

A stamp is what the file looked like when its SHA-256 was last checked: size, mtime, inode and
the digest. When size, mtime or inode differ (or no stamp exists) the file is re-hashed first
(0.2 s for the 253 MB Gemma); a digest other than the manifest's is ``checksum_mismatch`` and
no worker is spawned. A GGUF with flipped bytes in its tensors loads and answers garbage, so
this check is the only guard. Stamps live in ``<data_dir>/runtime/stamps/<model id>.json``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from app.errors import ChecksumMismatch

_CHUNK = 1024 * 1024


def _stat_key(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


class StampStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, model_id: str) -> Path:
        return self.directory / f"{model_id}.json"

    def read(self, model_id: str) -> dict[str, Any]:
        try:
            data = json.loads(self._path(model_id).read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def write(self, model_id: str, stamps: dict[str, Any]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        target = self._path(model_id)
        tmp = target.with_suffix(".tmp")
        tmp.write_text(json.dumps(stamps, sort_keys=True))
        os.replace(tmp, target)

    def forget(self, model_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(model_id).unlink()


def check_files(
    model_id: str, files: list[tuple[Path, str]], store: StampStore
) -> tuple[bool, list[str]]:
    """``(rehashed, bad file names)``; blocking (run it in a thread)."""
    stamps = store.read(model_id)
    fresh: dict[str, Any] = {}
    rehashed = False
    bad: list[str] = []
    for path, sha256 in files:
        key = _stat_key(path)
        old = stamps.get(path.name)
        if isinstance(old, dict) and old.get("sha256") == sha256 and _same(old, key):
            fresh[path.name] = old
            continue
        rehashed = True
        digest = _sha256(path)
        if digest != sha256:
            bad.append(path.name)
            continue
        fresh[path.name] = {**_stat_key(path), "sha256": digest}
    if bad:
        store.forget(model_id)
    elif fresh != stamps:
        store.write(model_id, fresh)
    return rehashed, bad


def _same(old: dict[str, Any], key: dict[str, int]) -> bool:
    return all(old.get(k) == v for k, v in key.items())


async def verify_before_use(
    model_id: str, files: list[tuple[Path, str]], store: StampStore
) -> bool:
    """Raise ``ChecksumMismatch`` unless every file matches; ``True`` if it had to re-hash."""
    rehashed, bad = await asyncio.to_thread(check_files, model_id, files, store)
    if bad:
        raise ChecksumMismatch(
            f"Model '{model_id}' failed verification before loading: a file no longer matches "
            "its manifest SHA-256. Re-download or re-import it.",
            extra={"files": bad},
        )
    return rehashed
