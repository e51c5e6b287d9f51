"""What a download server answered, classified: ranges, lengths, statuses, errors.

Pure functions from an ``httpx.Response`` (or an exception) to either nothing (carry on) or the
``DownloadFailure`` the retry policy decides on.
"""

from __future__ import annotations

import errno
import re
import socket
from collections.abc import AsyncIterator

import httpx

from app.lifecycle.retry_policy import DownloadFailure, FailureKind
from app.resilience.backoff import parse_retry_after

_CONTENT_RANGE = re.compile(r"bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)$")
_RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})


def content_range(value: str) -> tuple[int | None, int | None, int | None]:
    m = _CONTENT_RANGE.match(value.strip())
    if not m:
        return None, None, None
    start, end, total = m.groups()
    return (
        int(start) if start else None,
        int(end) if end else None,
        int(total) if total and total != "*" else None,
    )


def check_content_range(resp: httpx.Response, offset: int, size: int) -> None:
    start, end, total = content_range(resp.headers.get("content-range", ""))
    if (
        start != offset
        or (total is not None and total != size)
        or (end is not None and end != size - 1)
    ):
        raise DownloadFailure(
            FailureKind.HTTP,
            "bad_content_range",
            "The server resumed at the wrong place.",
            restart=True,
        )


def check_length(resp: httpx.Response, size: int) -> None:
    encoding = resp.headers.get("content-encoding", "identity").lower()
    length = resp.headers.get("content-length")
    if encoding == "identity" and length is not None and length.isdigit() and int(length) != size:
        raise DownloadFailure(
            FailureKind.FINAL,
            "size_mismatch",
            "The server's file is not the size the manifest says.",
            code="checksum_mismatch",
            restart=True,
        )


def status_failure(resp: httpx.Response) -> DownloadFailure:
    status = resp.status_code
    if status in _RETRYABLE_STATUS:
        after = resp.headers.get("retry-after")
        return DownloadFailure(
            FailureKind.HTTP,
            "http_429" if status == 429 else f"http_{status // 100}xx",
            f"The download server answered HTTP {status}.",
            retry_after=parse_retry_after(after) if after else None,
        )
    return DownloadFailure(
        FailureKind.FINAL,
        f"http_{status // 100}xx",
        f"The download server refused the file (HTTP {status}).",
    )


def network_reason(exc: httpx.TransportError) -> str:
    """A bounded label for the log and metrics, from the root cause: some transports (aiohttp
    under httpx) report a failed name lookup or a refused connection as ``ConnectTimeout``."""
    cause = _root_cause(exc)
    if isinstance(cause, socket.gaierror):
        return "dns"
    if isinstance(exc, httpx.ConnectError) or isinstance(cause, ConnectionRefusedError):
        return "connect_error"
    if isinstance(exc, httpx.TimeoutException):
        refused = isinstance(cause, OSError) and not isinstance(cause, TimeoutError)
        return "connect_error" if isinstance(exc, httpx.ConnectTimeout) and refused else "timeout"
    return "network_error"


def _root_cause(exc: BaseException) -> BaseException:
    seen = 0
    while seen < 10:  # bounded: a cycle in __cause__/__context__ must not hang us
        nxt = exc.__cause__ or exc.__context__
        if nxt is None:
            break
        exc, seen = nxt, seen + 1
    return exc


def disk_failure(exc: OSError) -> DownloadFailure:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DownloadFailure(
            FailureKind.FINAL, "disk_full", "The storage root is full.", code="insufficient_storage"
        )
    return DownloadFailure(
        FailureKind.FINAL,
        "disk_error",
        "Writing the model file failed.",
        code="download_failed",
        retryable=False,
    )


def body_stream(resp: httpx.Response) -> AsyncIterator[bytes]:
    """The body as sent when it is not content-encoded (one layer less per chunk), else decoded
    (a server that compresses despite ``Accept-Encoding: identity`` still yields the file)."""
    encoding = resp.headers.get("content-encoding", "identity").strip().lower()
    return resp.aiter_raw() if encoding in ("", "identity") else resp.aiter_bytes()
