"""How long to wait before the next attempt.

Full jitter (``U(0, min(max_delay, base * 2**n))``, the AWS Architecture Blog's recommendation)
spreads retries of many clients over the whole interval, so a provider that hiccups is not hit
by synchronised waves. The upstream's ``Retry-After`` is a floor on the wait (with jitter
spreading the retries after it) and the request deadline a ceiling: a wait that cannot leave
room for one more attempt is not taken at all.
"""

from __future__ import annotations

import math
import random
import re
import time
from datetime import UTC
from email.utils import parsedate_to_datetime

# 2**64 * any sane base is beyond any cap; stop the exponent before floats overflow.
_MAX_EXPONENT = 64
_DELAY_SECONDS = re.compile(r"\d+(?:\.\d+)?")


def backoff_ceiling(attempt: int, base: float, cap: float) -> float:
    """``min(cap, base * 2**attempt)``; ``attempt`` counts retries from 0."""
    exponent = min(max(0, attempt), _MAX_EXPONENT)
    return max(0.0, min(cap, math.ldexp(base, exponent)))


def full_jitter(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """A uniformly random delay in ``[0, min(cap, base * 2**attempt)]``."""
    ceiling = backoff_ceiling(attempt, base, cap)
    return min(ceiling, rng.uniform(0.0, ceiling))


def parse_retry_after(value: str, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value: delay-seconds or an HTTP-date.

    ``now`` is wall-clock seconds since the epoch (an HTTP-date is wall-clock time). A date in
    the past gives 0. Anything unparseable gives ``None``, as if the header were absent.
    """
    text = value.strip()
    if not text:
        return None
    if _DELAY_SECONDS.fullmatch(text):
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000" means UTC with no further information
        when = when.replace(tzinfo=UTC)
    wall = time.time() if now is None else now
    seconds = when.timestamp() - wall
    return max(0.0, seconds) if math.isfinite(seconds) else None


def compute_delay(
    attempt: int,
    base: float,
    cap: float,
    rng: random.Random,
    retry_after: float | None = None,
    remaining: float | None = None,
    min_attempt_s: float = 0.0,
) -> float | None:
    """The wait before retry number ``attempt`` (from 0), or ``None`` when it cannot fit.

    Without ``Retry-After`` the wait is full jitter. With it, the wait is the upstream's pause
    plus full jitter over up to as much again (``U(ra, ra + min(ra, cap))``): every client told
    "1 s" coming back at exactly 1 s would be the next wave of 429s. With a deadline
    ``remaining`` seconds away, the wait plus ``min_attempt_s`` (the least time worth giving an
    attempt) must fit: jitter is shortened to fit (it is random anyway), but ``Retry-After`` is
    the upstream's demand and is never shortened: if it does not fit, there is no retry.
    """
    if retry_after is None:
        floor, delay = 0.0, full_jitter(attempt, base, cap, rng)
    else:
        floor = max(0.0, retry_after)
        delay = floor + rng.uniform(0.0, max(0.0, min(floor, cap)))
    if remaining is None:
        return delay
    room = remaining - min_attempt_s
    if room < 0 or floor > room:
        return None
    return max(min(delay, room), floor)
