"""What a model still needs: per file, installed or not, partial bytes, where it goes.

The plan feeds the disk preflight, ``dry_run`` answers and the model view. A file counts as
installed when it sits at its final path with its manifest size: only verified files are ever
renamed there.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from app.lifecycle.manifest import ModelSpec
from app.lifecycle.partial import PartialPaths
from app.lifecycle.storage import StorageRoots


@dataclass(slots=True)
class FilePlan:
    name: str
    size: int
    path: Path
    installed: bool
    partial_bytes: int

    @property
    def to_fetch(self) -> int:
        return 0 if self.installed else self.size - self.partial_bytes


@dataclass(slots=True)
class ModelPlan:
    model: ModelSpec
    files: list[FilePlan]

    @property
    def installed(self) -> bool:
        return all(f.installed for f in self.files)

    @property
    def to_fetch(self) -> int:
        return sum(f.to_fetch for f in self.files)

    @property
    def on_disk(self) -> int:
        return sum(f.size if f.installed else f.partial_bytes for f in self.files)


def plan_model(storage: StorageRoots, model: ModelSpec) -> ModelPlan:
    files = []
    for spec in model.files:
        path = storage.file_path(model, spec)
        try:
            installed = path.stat().st_size == spec.size
        except OSError:
            installed = False
        partial = 0 if installed else min(PartialPaths(path).size(), spec.size)
        files.append(FilePlan(spec.name, spec.size, path, installed, partial))
    return ModelPlan(model, files)


def installed_at(path: Path, size: int) -> bool:
    try:
        return path.stat().st_size == size
    except OSError:
        return False


def remove_partials(storage: StorageRoots, model: ModelSpec) -> None:
    for spec in model.files:
        PartialPaths(storage.file_path(model, spec)).remove()


def remove_files(storage: StorageRoots, model: ModelSpec) -> None:
    """Partials, installed files and the model's (then empty) folder."""
    remove_partials(storage, model)
    for spec in model.files:
        with contextlib.suppress(FileNotFoundError):
            storage.file_path(model, spec).unlink()
    with contextlib.suppress(OSError):
        storage.model_dir(model).rmdir()
