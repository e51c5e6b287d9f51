"""Residency decisions and verify-before-use stamps."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from app.errors import ChecksumMismatch, MemoryBudgetExceeded
from app.runtime.residency import MIB, Resident, admit, estimate_bytes
from app.runtime.verify import StampStore, check_files, verify_before_use


def test_the_gemma_estimate_is_near_its_measured_rss() -> None:
    assert 380 * MIB < estimate_bytes(253_113_024, 2048) < 460 * MIB


def test_a_model_bigger_than_the_budget_is_refused() -> None:
    with pytest.raises(MemoryBudgetExceeded):
        admit("big", 500 * MIB, [], budget_bytes=400 * MIB, max_loaded=2)


def test_the_least_recently_used_idle_model_is_evicted() -> None:
    residents = [
        Resident("a", 300 * MIB, last_used=5.0, busy=False),
        Resident("b", 300 * MIB, last_used=1.0, busy=False),
    ]
    assert admit("c", 300 * MIB, residents, budget_bytes=700 * MIB, max_loaded=5) == ["b"]
    assert admit("c", 10, residents, budget_bytes=10_000 * MIB, max_loaded=2) == ["b"]


def test_busy_models_are_never_evicted() -> None:
    residents = [Resident("a", 300 * MIB, last_used=0.0, busy=True)]
    with pytest.raises(MemoryBudgetExceeded):
        admit("c", 300 * MIB, residents, budget_bytes=500 * MIB, max_loaded=5)


def _file(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "m.gguf"
    data = os.urandom(64 * 1024)
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


def test_a_matching_stamp_skips_the_hash(tmp_path: Path) -> None:
    path, sha = _file(tmp_path)
    store = StampStore(tmp_path / "stamps")
    assert check_files("m", [(path, sha)], store) == (True, [])
    assert check_files("m", [(path, sha)], store) == (False, [])


async def test_a_flipped_byte_is_a_checksum_mismatch(tmp_path: Path) -> None:
    path, sha = _file(tmp_path)
    store = StampStore(tmp_path / "stamps")
    await verify_before_use("m", [(path, sha)], store)
    with path.open("r+b") as f:
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.utime(path, ns=(1, 1))  # the stat key changes: re-hashed
    with pytest.raises(ChecksumMismatch):
        await verify_before_use("m", [(path, sha)], store)
    assert store.read("m") == {}
