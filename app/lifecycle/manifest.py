"""The model manifest: which models exist, which files they are made of, where those come from.

One manifest ships with Keel (``models.toml`` next to this module); ``KEEL_MODELS_MANIFEST``
adds more files, ``:``-separated. Every entry is validated up front and a bad one stops start-up
with a message naming the file, the entry and the field. Downloads only ever fetch URLs read
here, never a URL from a request.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args
from urllib.parse import urlsplit

from app.lifecycle.paths import UnsafeName, check_file_name, check_model_id
from app.settings import ConfigError

BUNDLED_MANIFEST = Path(__file__).with_name("models.toml")

Capability = Literal["llm", "embedding", "stt", "tts"]
CAPABILITIES: tuple[Capability, ...] = get_args(Capability)
URL_SCHEMES = frozenset({"http", "https", "file"})
_SHA256 = re.compile(r"[0-9a-f]{64}")
_MAX_FILES = 64


class ManifestError(ConfigError):
    """A manifest is unreadable or an entry is invalid; the message names file, entry, field."""


@dataclass(frozen=True, slots=True)
class FileSpec:
    name: str
    url: str
    sha256: str
    size: int


@dataclass(frozen=True, slots=True)
class ModelSpec:
    id: str
    name: str
    capability: Capability
    engine: str
    files: tuple[FileSpec, ...]
    chat_format: str | None = None  # llama-cpp-python's name, for GGUFs without a template

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


class Manifest:
    """The validated models of every manifest, in the order they were listed."""

    def __init__(self, models: Iterable[ModelSpec]) -> None:
        self._models: dict[str, ModelSpec] = {}
        for model in models:
            self._models[model.id] = model

    def __iter__(self) -> Iterator[ModelSpec]:
        return iter(self._models.values())

    def __len__(self) -> int:
        return len(self._models)

    def get(self, model_id: str) -> ModelSpec | None:
        return self._models.get(model_id)


def manifest_paths(extra: str | None, *, bundled: Path | None = BUNDLED_MANIFEST) -> list[Path]:
    paths = [bundled] if bundled is not None else []
    paths += [Path(p) for p in (extra or "").split(":") if p.strip()]
    return paths


def load_manifest(extra: str | None, *, bundled: Path | None = BUNDLED_MANIFEST) -> Manifest:
    """The bundled manifest plus the ``:``-separated files in ``extra``; ids must be unique."""
    models: list[ModelSpec] = []
    seen: dict[str, Path] = {}
    for path in manifest_paths(extra, bundled=bundled):
        for model in parse_manifest_file(path):
            if model.id in seen:
                raise ManifestError(
                    f"{path}: duplicate model id {model.id!r} (already defined in {seen[model.id]})"
                )
            seen[model.id] = path
            models.append(model)
    return Manifest(models)


def parse_manifest_file(path: Path) -> list[ModelSpec]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(f"{path}: manifest file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: cannot read manifest: {exc.__class__.__name__}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(f"{path}: invalid TOML: {exc}") from None
    return parse_manifest(data, source=str(path))


def parse_manifest(data: dict[str, Any], *, source: str = "manifest") -> list[ModelSpec]:
    entries = data.get("models", [])
    if not isinstance(entries, list):
        raise ManifestError(f"{source}: 'models' must be an array of tables ([[models]])")
    out: list[ModelSpec] = []
    ids: set[str] = set()
    for index, entry in enumerate(entries):
        where = f"{source}: models[{index}]"
        model = _parse_model(entry, where)
        if model.id in ids:
            raise ManifestError(f"{where}: duplicate model id {model.id!r}")
        ids.add(model.id)
        out.append(model)
    return out


def _parse_model(entry: Any, where: str) -> ModelSpec:
    if not isinstance(entry, dict):
        raise ManifestError(f"{where}: must be a table")
    unknown = set(entry) - {"id", "name", "capability", "engine", "files", "chat_format"}
    if unknown:
        raise ManifestError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    model_id = _str(entry, "id", where)
    try:
        check_model_id(model_id)
    except UnsafeName as exc:
        raise ManifestError(f"{where}.id: {exc}") from None
    where = f"{where} ({model_id})"
    capability = entry.get("capability")
    if capability not in CAPABILITIES:
        raise ManifestError(f"{where}.capability: must be one of {', '.join(CAPABILITIES)}")
    files_raw = entry.get("files")
    if not isinstance(files_raw, list) or not files_raw:
        raise ManifestError(f"{where}.files: at least one [[models.files]] entry is required")
    if len(files_raw) > _MAX_FILES:
        raise ManifestError(f"{where}.files: at most {_MAX_FILES} files per model")
    files = tuple(_parse_file(f, f"{where}.files[{i}]") for i, f in enumerate(files_raw))
    names = [f.name for f in files]
    if len(set(names)) != len(names):
        raise ManifestError(f"{where}.files: duplicate file names")
    name = entry.get("name", model_id)
    if not isinstance(name, str) or not name:
        raise ManifestError(f"{where}.name: must be a non-empty string")
    return ModelSpec(
        id=model_id,
        name=name,
        capability=capability,
        engine=_str(entry, "engine", where) if "engine" in entry else "",
        files=files,
        chat_format=_str(entry, "chat_format", where) if "chat_format" in entry else None,
    )


def _parse_file(entry: Any, where: str) -> FileSpec:
    if not isinstance(entry, dict):
        raise ManifestError(f"{where}: must be a table")
    unknown = set(entry) - {"name", "url", "sha256", "size"}
    if unknown:
        raise ManifestError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    name = _str(entry, "name", where)
    try:
        check_file_name(name)
    except UnsafeName as exc:
        raise ManifestError(f"{where}.name: {exc}") from None
    url = _str(entry, "url", where)
    parts = urlsplit(url)
    if parts.scheme not in URL_SCHEMES:
        raise ManifestError(
            f"{where}.url: scheme must be http, https or file, not {parts.scheme or 'missing'!r}"
        )
    if parts.scheme in ("http", "https") and not parts.hostname:
        raise ManifestError(f"{where}.url: an http(s) URL needs a host")
    if parts.scheme == "file" and not parts.path.startswith("/"):
        raise ManifestError(f"{where}.url: a file URL needs an absolute path")
    sha = _str(entry, "sha256", where).lower()
    if not _SHA256.fullmatch(sha):
        raise ManifestError(f"{where}.sha256: must be 64 hexadecimal characters")
    size = entry.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise ManifestError(f"{where}.size: must be a positive integer (bytes)")
    return FileSpec(name=name, url=url, sha256=sha, size=size)


def _str(entry: dict[str, Any], key: str, where: str) -> str:
    value = entry.get(key)
    if not isinstance(value, str) or not value:
        raise ManifestError(f"{where}.{key}: a non-empty string is required")
    return value
