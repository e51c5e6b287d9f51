"""What Keel owns on disk: marked storage roots, marked partial downloads, and the system
locations it refuses to take as a root (DESIGN §10).

A root Keel accepts gets a marker file (``.keel-storage-root``); every partial download has a
sidecar carrying ``"keel": PARTIAL_MARK``, written before the partial's first byte. The stale
partial reaper deletes only inside marked roots, never through a symbolic link, and only the
partials whose sidecar carries the mark: a user's own ``*.partial`` files are not Keel's.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from app.lifecycle.paths import MODEL_ID, PARTIAL_SUFFIX, SIDECAR_SUFFIX

ROOT_MARKER = ".keel-storage-root"
PARTIAL_MARK = "keel-partial/1"
_SIDECAR_TMP = SIDECAR_SUFFIX + ".tmp"
_MARKER_BODY = b'{"keel": "storage-root/1", "note": "model files managed by Keel"}\n'

# Refused as roots, together with everything below them: the operating system's own trees.
_SYSTEM_TREES = tuple(
    Path(p)
    for p in (
        "/bin",
        "/boot",
        "/dev",
        "/etc",
        "/lib",
        "/lib32",
        "/lib64",
        "/libx32",
        "/proc",
        "/root",
        "/run",
        "/sbin",
        "/sys",
        "/usr",
        "/var/lib/dpkg",
        "/var/log",
    )
)
# Refused themselves (shared parents), while a directory of its own below them is fine.
_SHARED_PARENTS = frozenset(
    Path(p)
    # S108: names compared against, never written to.
    for p in ("/", "/home", "/media", "/mnt", "/opt", "/srv", "/tmp", "/var")  # noqa: S108
)


def is_system_location(path: Path) -> bool:
    """True for ``/``, the OS trees above and anything under them, by name or after links."""
    candidates = {Path(os.path.normpath(path))}
    with contextlib.suppress(OSError, RuntimeError):
        candidates.add(path.resolve())
    for candidate in candidates:
        if candidate in _SHARED_PARENTS:
            return True
        if any(candidate == tree or tree in candidate.parents for tree in _SYSTEM_TREES):
            return True
    return False


def mark_root(root: Path) -> None:
    """Write the root's marker unless it is there (never through a symbolic link)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(root / ROOT_MARKER, flags, 0o644)
    except FileExistsError:
        return
    try:
        os.write(fd, _MARKER_BODY)
    finally:
        os.close(fd)


def is_marked_root(root: Path) -> bool:
    try:
        return stat.S_ISREG((root / ROOT_MARKER).lstat().st_mode)
    except OSError:
        return False


def _is_keel_sidecar(path: Path) -> bool:
    try:
        if not stat.S_ISREG(path.lstat().st_mode) or path.lstat().st_size > 64 * 1024:
            return False
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("keel") == PARTIAL_MARK


def _stale(path: Path, cutoff: float) -> bool:
    try:
        st = path.lstat()
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_mtime < cutoff


def _final_name(name: str) -> str | None:
    for suffix in (_SIDECAR_TMP, SIDECAR_SUFFIX, PARTIAL_SUFFIX):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return None


def reap_stale_partials(roots: Iterable[Path], owned: set[Path], cutoff: float) -> int:
    """Delete Keel's partial downloads older than ``cutoff`` that no running job owns.

    A partial and its sidecar go together, and only when the sidecar carries Keel's mark;
    a sidecar's ``.tmp`` only when it carries the mark itself. Bounded by the directory sizes.
    """
    removed = 0
    for root in roots:
        if not is_marked_root(root):
            continue
        for model_dir in _real_dirs(root):
            if model_dir in owned or not MODEL_ID.fullmatch(model_dir.name):
                continue
            finals = {f for p in model_dir.iterdir() if (f := _final_name(p.name)) is not None}
            for final in sorted(finals):
                removed += _reap_one(model_dir, final, cutoff)
    return removed


def _real_dirs(root: Path) -> list[Path]:
    try:
        entries = list(root.iterdir())
    except OSError:
        return []
    return [p for p in entries if not p.is_symlink() and p.is_dir()]


def _reap_one(folder: Path, final: str, cutoff: float) -> int:
    partial = folder / (final + PARTIAL_SUFFIX)
    sidecar = folder / (final + SIDECAR_SUFFIX)
    tmp = folder / (final + _SIDECAR_TMP)
    doomed: list[Path] = []
    if _is_keel_sidecar(sidecar) and _stale(sidecar, cutoff):
        if partial.exists() or partial.is_symlink():
            if not _stale(partial, cutoff):
                return 0  # still being written: both stay
            doomed.append(partial)
        doomed.append(sidecar)
    if _is_keel_sidecar(tmp) and _stale(tmp, cutoff):
        doomed.append(tmp)
    removed = 0
    for path in doomed:
        with contextlib.suppress(OSError):
            path.unlink()
            removed += 1
    return removed
