"""Whether and when a failed download attempt is tried again: a pure, RNG-injected policy.

DESIGN §6: transport errors, stalls, 5xx and 429 are retried with full-jitter backoff, up to
``retries`` times for HTTP failures and ``network_retries`` times for network failures (the two
allowances are counted separately); other 4xx, a full disk and a checksum mismatch are final,
except that an attempt which had *resumed* from a partial gets one fresh-from-zero retry (the
prefix on disk, or the server's idea of the file, may be what was wrong). The upstream's
``Retry-After`` raises the wait, never above ``max_delay_s``.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass

from app.resilience.backoff import full_jitter


class FailureKind(enum.Enum):
    NETWORK = "network"  # connect/read errors, resets, timeouts, stalls, short bodies
    HTTP = "http"  # 5xx, 429, 408, and a server that answered a resume inconsistently
    FINAL = "final"  # other 4xx, disk full, checksum or size mismatch


class DownloadFailure(Exception):
    """One failed attempt. ``reason`` is a bounded metric label; ``code`` the catalogue code the
    job reports if this is the last attempt; ``message`` a sentence for the caller."""

    def __init__(
        self,
        kind: FailureKind,
        reason: str,
        message: str,
        *,
        code: str = "download_failed",
        retryable: bool | None = None,
        retry_after: float | None = None,
        restart: bool = False,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.reason = reason
        self.message = message
        self.code = code
        self.retryable = kind is not FailureKind.FINAL if retryable is None else retryable
        self.retry_after = retry_after
        self.restart = restart  # the partial is unusable: the next attempt starts from zero
        self.resumed = False  # set by the downloader: did the failed attempt resume?
        self.attempts = 1  # set by the downloader when it gives up: attempts made in all


@dataclass(frozen=True, slots=True)
class Decision:
    retry: bool
    delay: float = 0.0
    fresh: bool = False  # delete the partial and start from byte 0


STOP = Decision(retry=False)


class DownloadRetryPolicy:
    """Counts one file's retries. ``decide`` is called once per failed attempt."""

    def __init__(
        self,
        *,
        retries: int,
        network_retries: int,
        base_delay_s: float,
        max_delay_s: float,
        rng: random.Random,
    ) -> None:
        self.retries = retries
        self.network_retries = network_retries
        self.base_delay_s = base_delay_s
        self.max_delay_s = max_delay_s
        self.rng = rng
        self.http_used = 0
        self.network_used = 0
        self.fresh_used = False

    def decide(self, failure: DownloadFailure) -> Decision:
        if failure.kind is FailureKind.FINAL:
            if failure.resumed and not self.fresh_used:
                self.fresh_used = True
                return Decision(retry=True, fresh=True)
            return STOP
        if failure.kind is FailureKind.NETWORK:
            if self.network_used >= self.network_retries:
                return STOP
            n = self.network_used
            self.network_used += 1
        else:
            if self.http_used >= self.retries:
                return STOP
            n = self.http_used
            self.http_used += 1
        delay = full_jitter(n, self.base_delay_s, self.max_delay_s, self.rng)
        if failure.retry_after is not None:
            delay = min(max(delay, failure.retry_after), self.max_delay_s)
        return Decision(retry=True, delay=delay, fresh=failure.restart)
