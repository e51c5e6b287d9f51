"""Names that could escape a storage root never become paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.lifecycle.paths import UnsafeName, check_file_name, check_model_id, safe_join


@pytest.mark.parametrize(
    "bad", ["..", "../x", "/abs", "a/b", "a\\b", "", "-x", "X", "a..b", "a" * 65, "a\x00"]
)
def test_bad_model_ids(bad: str) -> None:
    with pytest.raises(UnsafeName):
        check_model_id(bad)


@pytest.mark.parametrize("good", ["gemma3-270m", "a", "whisper.base_en", "a" * 64])
def test_good_model_ids(good: str) -> None:
    assert check_model_id(good) == good


@pytest.mark.parametrize(
    "bad",
    [
        "..",
        "../m.gguf",
        "/etc/passwd",
        "d/f",
        ".hidden",
        "f..g",
        "m.gguf.partial",
        "m.gguf.partial.json",
        "m.tmp",
        "a b",
    ],
)
def test_bad_file_names(bad: str) -> None:
    with pytest.raises(UnsafeName):
        check_file_name(bad)


def test_safe_join_stays_inside(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    assert safe_join(root, "m", "f.bin") == root.resolve() / "m" / "f.bin"
    for parts in (("..",), ("m", ".."), ("/etc",), ("a/b",), ("",), (".",)):
        with pytest.raises(UnsafeName):
            safe_join(root, *parts)
    (root / "link").symlink_to(tmp_path)  # a symlink out of the root is caught on resolve
    with pytest.raises(UnsafeName):
        safe_join(root, "link", "x")
