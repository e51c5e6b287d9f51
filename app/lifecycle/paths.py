"""Names that become paths: model ids and file names, and the one join that stays inside a root.

Ids and file names come from manifests (and ids from URLs), so they are checked against a strict
alphabet before they ever touch the filesystem, and ``safe_join`` re-checks the resolved result:
belt and braces, because an escape here would let a manifest or a request write anywhere.
"""

from __future__ import annotations

import re
from pathlib import Path

MODEL_ID = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")
PARTIAL_SUFFIX = ".partial"
SIDECAR_SUFFIX = ".partial.json"
_RESERVED_SUFFIXES = (PARTIAL_SUFFIX, SIDECAR_SUFFIX, ".tmp")


class UnsafeName(ValueError):
    """A model id or file name that could escape its directory or collide with our own files."""


class PathEscapesRoot(UnsafeName):
    """A well-formed path that resolves outside its root (a symbolic link, a loop)."""


def check_model_id(value: str) -> str:
    if not MODEL_ID.fullmatch(value) or ".." in value:
        raise UnsafeName(f"invalid model id {value!r}: expected [a-z0-9][a-z0-9._-]{{0,63}}")
    return value


def check_file_name(value: str) -> str:
    if not FILE_NAME.fullmatch(value) or ".." in value:
        raise UnsafeName(
            f"invalid file name {value!r}: a plain name of letters, digits, '.', '_' and '-'"
        )
    if value.endswith(_RESERVED_SUFFIXES):
        raise UnsafeName(f"invalid file name {value!r}: the suffix is reserved for partials")
    return value


def safe_join(root: Path, *parts: str) -> Path:
    """``root / parts`` that is guaranteed to stay inside ``root`` (after resolving links)."""
    for part in parts:
        if not part or part in (".", "..") or "/" in part or "\\" in part or "\x00" in part:
            raise UnsafeName(f"unsafe path component {part!r}")
    try:
        base = root.resolve()
        target = base.joinpath(*parts).resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop; an unreadable directory
        raise PathEscapesRoot("path cannot be resolved inside its storage root") from exc
    if target != base and base not in target.parents:
        raise PathEscapesRoot("path escapes its storage root")
    return target
