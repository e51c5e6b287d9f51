"""One rule per kind of value that crosses the edge, as reusable annotated types.

Everything a client sends is checked here, once, while the request is parsed, so nothing
beyond the edge meets a value the database, the file system or a JSON encoder refuses (each
of which used to surface as a 500):

- ``DbInt``, ``Version``: integers that reach a database column fit it (64-bit; versions
  32-bit).
- ``Text``: strings are valid Unicode (no lone surrogates, which UTF-8 cannot encode) without
  U+0000 (which PostgreSQL cannot store).
- ``JsonObject`` and ``check_json``: free-form JSON (metadata, chat pass-through fields) holds
  only finite numbers, valid strings and keys, and nests at most ``MAX_JSON_DEPTH`` deep.
- ``ID_PATTERN``/``ResourceId``: an id Keel issued is at most 64 printable characters, so
  nothing else reaches SQL (PostgreSQL answers a NUL in text with an error, not "no row").
- ``StoragePath``: a path the file system can hold (components and total length within the
  limits, no NUL).

A violation is a ``ValueError`` inside pydantic validation, so it becomes the usual 422
``validation_error`` naming the field, never the value.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import AfterValidator, Field

DB_INT_MAX = 2**63 - 1
MAX_JSON_DEPTH = 32
# POSIX NAME_MAX and PATH_MAX as Linux and macOS have them, in bytes.
NAME_MAX = 255
PATH_MAX = 4095


def valid_text(value: str) -> str:
    if "\x00" in value:
        # Valid JSON, but PostgreSQL text and jsonb cannot hold U+0000 (an error, so a 500).
        raise ValueError("must not contain U+0000")
    # isascii() is a flag check in CPython: the common case costs nothing.
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("must be valid Unicode (no lone surrogates)") from None
    return value


def check_json(value: Any, depth: int = 0) -> None:
    """Raise ``ValueError`` when ``value`` is not JSON that every encoder and store accepts."""
    if depth > MAX_JSON_DEPTH:
        raise ValueError(f"nests deeper than {MAX_JSON_DEPTH} levels")
    if isinstance(value, str):
        valid_text(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("numbers must be finite (no NaN, Infinity or overflow like 1e400)")
    elif isinstance(value, bool) or value is None:
        pass
    elif isinstance(value, int):
        # JSON parsers differ beyond 64 bits; PostgreSQL's jsonb keeps them, SQLite does not.
        if not -DB_INT_MAX - 1 <= value <= DB_INT_MAX:
            raise ValueError("integers must fit in 64 bits")
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError("object keys must be strings")
            valid_text(key)
            check_json(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            check_json(item, depth + 1)
    else:
        raise ValueError("must be plain JSON")


def _json_object(value: dict[str, Any]) -> dict[str, Any]:
    check_json(value)
    return value


def _storage_path(value: str) -> str:
    valid_text(value)
    if "\x00" in value:
        raise ValueError("must not contain NUL")
    if len(value.encode("utf-8")) > PATH_MAX:
        raise ValueError(f"must be at most {PATH_MAX} bytes")
    if any(len(part.encode("utf-8")) > NAME_MAX for part in value.split("/")):
        raise ValueError(f"each path component must be at most {NAME_MAX} bytes")
    return value


ID_MAX = 64
ID_PATTERN = r"^[^\x00-\x1f\x7f]+$"

DbInt = Annotated[int, Field(ge=-DB_INT_MAX - 1, le=DB_INT_MAX)]
# Conversation versions and seqs live in 32-bit INTEGER columns (PostgreSQL's int4).
VERSION_MAX = 2**31 - 1
Version = Annotated[int, Field(ge=0, le=VERSION_MAX)]
Text = Annotated[str, AfterValidator(valid_text)]
JsonObject = Annotated[dict[str, Any], AfterValidator(_json_object)]
ResourceId = Annotated[str, Field(min_length=1, max_length=ID_MAX, pattern=ID_PATTERN)]
StoragePath = Annotated[
    str, Field(min_length=1, max_length=PATH_MAX), AfterValidator(_storage_path)
]
