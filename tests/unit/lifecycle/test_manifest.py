"""Manifest validation: every bad entry stops start-up with a message naming what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.lifecycle.manifest import BUNDLED_MANIFEST, ManifestError, load_manifest, parse_manifest

SHA = "ab" * 32


def _model(**overrides: object) -> dict[str, object]:
    file = {"name": "m.gguf", "url": "https://models.example/m.gguf", "sha256": SHA, "size": 10}
    file.update({k.removeprefix("file_"): v for k, v in overrides.items() if k.startswith("file_")})
    model: dict[str, object] = {
        "id": "m1",
        "name": "M",
        "capability": "llm",
        "engine": "llama_cpp",
        "files": [file],
    }
    model.update({k: v for k, v in overrides.items() if not k.startswith("file_")})
    return model


def test_bundled_manifest_lists_gemma() -> None:
    manifest = load_manifest(None)
    gemma = manifest.get("gemma3-270m")
    assert gemma is not None
    assert gemma.capability == "llm"
    [f] = gemma.files
    assert f.sha256 == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    assert f.size == 253113024
    assert f.url.startswith("https://")
    assert f.name.endswith(".gguf")
    assert BUNDLED_MANIFEST.name == "models.toml"


def test_extra_manifests_are_colon_separated(tmp_path: Path) -> None:
    a, b = tmp_path / "a.toml", tmp_path / "b.toml"
    for path, model_id in ((a, "alpha"), (b, "beta")):
        path.write_text(
            f'[[models]]\nid = "{model_id}"\ncapability = "stt"\n'
            f'[[models.files]]\nname = "{model_id}.bin"\n'
            f'url = "file:///srv/{model_id}.bin"\nsha256 = "{SHA}"\nsize = 5\n'
        )
    manifest = load_manifest(f"{a}:{b}")
    assert [m.id for m in manifest] == ["gemma3-270m", "alpha", "beta"]
    beta = manifest.get("beta")
    assert beta is not None
    assert beta.files[0].url == "file:///srv/beta.bin"


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"id": "Bad_Id"}, "models[0].id"),
        ({"id": "../x"}, "models[0].id"),
        ({"id": "a" * 65}, "models[0].id"),
        ({"capability": "vision"}, "capability"),
        ({"files": []}, "files"),
        ({"file_sha256": "xyz"}, "sha256: must be 64 hexadecimal"),
        ({"file_sha256": "a" * 63}, "sha256"),
        ({"file_size": 0}, "size"),
        ({"file_size": "10"}, "size"),
        ({"file_url": "ftp://host/m.gguf"}, "scheme must be http, https or file"),
        ({"file_url": "javascript:alert(1)"}, "scheme"),
        ({"file_url": "https:///nohost"}, "needs a host"),
        ({"file_name": "../m.gguf"}, "files[0].name"),
        ({"file_name": "/etc/passwd"}, "files[0].name"),
        ({"file_name": "a/b.gguf"}, "files[0].name"),
        ({"surprise": 1}, "unknown field"),
    ],
)
def test_invalid_entries_are_refused_with_a_clear_message(
    overrides: dict[str, object], needle: str
) -> None:
    with pytest.raises(ManifestError) as info:
        parse_manifest({"models": [_model(**overrides)]}, source="extra.toml")
    assert needle in str(info.value)
    assert str(info.value).startswith("extra.toml: models[0]")


def test_duplicate_ids_are_refused_within_and_across_files(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="duplicate model id 'm1'"):
        parse_manifest({"models": [_model(), _model()]})
    clash = tmp_path / "clash.toml"
    clash.write_text(
        '[[models]]\nid = "gemma3-270m"\ncapability = "llm"\n[[models.files]]\n'
        f'name = "g.gguf"\nurl = "https://x.example/g"\nsha256 = "{SHA}"\n'
        "size = 1\n"
    )
    with pytest.raises(ManifestError, match="duplicate model id 'gemma3-270m'"):
        load_manifest(str(clash))


def test_unreadable_manifests(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="not found"):
        load_manifest(str(tmp_path / "missing.toml"))
    broken = tmp_path / "broken.toml"
    broken.write_text("[[models]\n")
    with pytest.raises(ManifestError, match="invalid TOML"):
        load_manifest(str(broken))
