"""Configuration mistakes as one line each (the start-up contract): which environment variable
or which config file and TOML key holds the bad value, a TOML syntax error with its line, a
data directory that cannot be used. ``app/settings.py`` raises these; the CLI prints them and
exits with status 2.
"""

from __future__ import annotations

import difflib
import os
import tempfile
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel


class ConfigError(Exception):
    """A setting is invalid; the message is one line naming the setting."""


def read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:  # its text ends "(at line N, column M)"
        raise ConfigError(f"{path}: TOML syntax error: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the config file ({type(exc).__name__})") from None


def explain(
    error: Any, path: Path | None, written: Mapping[str, Any], root: type[BaseModel]
) -> str:
    loc = tuple(str(p) for p in error["loc"])
    msg = str(error["msg"]).removeprefix("Value error, ")
    if not loc:  # a check across settings: the message names them itself
        return f"invalid configuration: {msg}" + (f" (config file {path})" if path else "")
    env = "KEEL_" + "__".join(loc).upper()
    from_env = any(name.upper() == env for name in os.environ)
    if path is not None and not from_env and _written_at(written, loc):
        key = ".".join(loc)
        if error["type"] == "extra_forbidden":
            hint = difflib.get_close_matches(loc[-1], _fields_at(root, loc[:-1]), n=1)
            guess = f" (did you mean {hint[0]!r}?)" if hint else ""
            return f"{path}: unknown key {key}{guess}"
        return f"{path}: invalid value for {key}: {msg}"
    if error["type"] == "extra_forbidden":
        return f"unknown setting {env}"
    return f"invalid setting {env}: {msg}"


def _written_at(data: Mapping[str, Any], loc: tuple[str, ...]) -> bool:
    node: Any = data
    for part in loc:
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def _fields_at(root: type[BaseModel], loc: tuple[str, ...]) -> list[str]:
    """The setting names valid at ``loc`` (for "did you mean"), following models and dicts."""
    annotation: Any = root
    for part in loc:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field = annotation.model_fields.get(part)
            if field is None:
                return []
            annotation = field.annotation
        elif typing.get_origin(annotation) is dict:
            annotation = typing.get_args(annotation)[1]  # ``part`` is a key, e.g. a provider
        else:
            return []
        if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
            annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return list(annotation.model_fields)
    return []


def prepare_data_dir(path: Path) -> None:
    """Create the data directory (not its parents: a mistyped path should not grow a tree)
    and prove it writable, so a bad ``KEEL_DATA_DIR`` is one line instead of a traceback."""
    where = f"KEEL_DATA_DIR={path}"
    if not path.exists():
        if not path.parent.is_dir():
            raise ConfigError(f"{where}: the parent directory {path.parent} does not exist")
        try:
            path.mkdir()
        except OSError as exc:
            raise ConfigError(f"{where}: cannot create it ({exc.strerror})") from None
    if not path.is_dir():
        raise ConfigError(f"{where}: exists and is not a directory")
    try:
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise ConfigError(f"{where}: not writable ({exc.strerror})") from None
