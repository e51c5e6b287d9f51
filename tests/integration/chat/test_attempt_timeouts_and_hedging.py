"""Per-attempt timeouts, hedged fallbacks and throttling, on real sockets against two fake
upstreams. Nothing here asserts a wall-clock duration: the upstreams report what they saw
(calls, hang-ups) and Keel reports what it did (headers, metrics)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import httpx
import pytest

from app.settings import Settings
from tests.fakes.servers import ServerThread
from tests.fakes.upstream import FakeUpstream
from tests.integration.chat.conftest import chat_body, provider
from tests.integration.chat.test_chat_resilience import _upstream_saw_disconnect


@pytest.fixture
def second() -> Iterator[FakeUpstream]:
    with FakeUpstream(seed=99) as fake:
        yield fake


def _metric(text: str, line_start: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_a_hung_attempt_times_out_and_falls_back_at_once(
    chat_settings: Callable[..., Settings],
    serve: Callable[[Settings], ServerThread],
    upstream: FakeUpstream,
    second: FakeUpstream,
) -> None:
    upstream.faults.hang_rate = 1.0
    settings = chat_settings(
        providers={
            "cloud": provider(upstream.base_url, attempt_timeout_s=0.3),
            "backup": provider(second.base_url),
        },
        routes={"chat": ["cloud/small", "backup/small"]},
    )
    keel = serve(settings)
    async with httpx.AsyncClient(base_url=keel.url, timeout=10) as c:
        resp = await c.post("/v1/chat/completions", json=chat_body())
        metrics = (await c.get("/metrics")).text
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-keel-target"] == "backup/small"
    # One timed-out attempt on the hung target (a fallback exists, so no retry there), one answer.
    assert resp.headers["x-keel-attempts"] == "2"
    assert upstream.calls == 1
    await _upstream_saw_disconnect(upstream)  # the hung attempt's connection was closed
    assert _metric(metrics, 'keel_upstream_attempts_total{outcome="timeout",provider="cloud"}') == 1


def test_a_hung_attempt_without_fallback_is_retried_within_the_deadline(
    chat_settings: Callable[..., Settings],
    serve: Callable[[Settings], ServerThread],
    upstream: FakeUpstream,
) -> None:
    upstream.faults.hang_rate = 1.0
    keel = serve(
        chat_settings(providers={"cloud": provider(upstream.base_url, attempt_timeout_s=0.2)})
    )
    with httpx.Client(base_url=keel.url, timeout=10) as c:
        resp = c.post("/v1/chat/completions", json=chat_body(), headers={"X-Request-Timeout": "5"})
    assert resp.status_code == 504, resp.text
    assert resp.json()["code"] == "upstream_timeout"
    assert upstream.calls == 3  # max_attempts, each cut at its time-to-first-byte limit
    assert resp.headers["x-keel-attempts"] == "3"


@pytest.mark.parametrize("stream", [False, True])
async def test_hedge_takes_the_second_target_and_closes_the_first(
    chat_settings: Callable[..., Settings],
    serve: Callable[[Settings], ServerThread],
    upstream: FakeUpstream,
    second: FakeUpstream,
    stream: bool,
) -> None:
    upstream.faults.latency_s = 30  # slow, not failing: only a hedge helps
    settings = chat_settings(
        providers={"cloud": provider(upstream.base_url), "backup": provider(second.base_url)},
        routes={"chat": ["cloud/small", "backup/small"]},
        resilience={"hedge": {"chat": 0.2}},
    )
    keel = serve(settings)
    async with httpx.AsyncClient(base_url=keel.url, timeout=10) as c:
        resp = await c.post("/v1/chat/completions", json=chat_body(stream=stream))
        assert resp.status_code == 200, resp.text
        assert resp.headers["x-keel-target"] == "backup/small"
        assert resp.headers["x-keel-attempts"] == "2"  # the first target's, and the hedge
        if stream:
            assert resp.text.rstrip().endswith("data: [DONE]")
        await _upstream_saw_disconnect(upstream)  # the loser was cancelled, its socket closed
        metrics = (await c.get("/metrics")).text
    assert upstream.calls == 1
    assert second.calls == 1
    assert _metric(metrics, 'keel_hedges_total{outcome="started",provider="backup"}') == 1
    assert _metric(metrics, 'keel_hedges_total{outcome="won",provider="backup"}') == 1
    assert _metric(metrics, 'keel_fallbacks_total{route="cloud"}') == 1


async def test_no_hedge_when_the_first_target_answers_in_time(
    chat_settings: Callable[..., Settings],
    serve: Callable[[Settings], ServerThread],
    upstream: FakeUpstream,
    second: FakeUpstream,
) -> None:
    settings = chat_settings(
        providers={"cloud": provider(upstream.base_url), "backup": provider(second.base_url)},
        routes={"chat": ["cloud/small", "backup/small"]},
        resilience={"hedge": {"chat": 5.0}},
    )
    keel = serve(settings)
    async with httpx.AsyncClient(base_url=keel.url, timeout=10) as c:
        answers = await asyncio.gather(
            *(c.post("/v1/chat/completions", json=chat_body(f"q{i}")) for i in range(5))
        )
    assert {r.headers["x-keel-target"] for r in answers} == {"cloud/small"}
    assert second.calls == 0


def test_429_is_not_a_breaker_failure_and_sends_new_work_to_the_fallback(
    chat_settings: Callable[..., Settings],
    serve: Callable[[Settings], ServerThread],
    upstream: FakeUpstream,
    second: FakeUpstream,
) -> None:
    upstream.faults.error_status = 429
    upstream.faults.down = True  # every chat call is a 429 with Retry-After
    upstream.faults.retry_after = "30"
    settings = chat_settings(
        providers={
            "cloud": provider(upstream.base_url, breaker={"min_calls": 2, "window_size": 4}),
            "backup": provider(second.base_url),
        },
        routes={"chat": ["cloud/small", "backup/small"]},
    )
    keel = serve(settings)
    with httpx.Client(base_url=keel.url, timeout=10) as c:
        targets = [
            c.post("/v1/chat/completions", json=chat_body(f"q{i}")).headers.get("x-keel-target")
            for i in range(6)
        ]
        diag = c.get("/v1/diagnostics").json()
    assert targets == ["backup/small"] * 6
    assert upstream.calls == 1  # one 429, then the provider's pause sends work elsewhere
    cloud = next(p for p in diag["providers"] if p["provider"] == "cloud")
    assert cloud["breaker"]["state"] == "closed"
    assert cloud["breaker"]["calls"] == 0  # neither a failure nor a success
    assert cloud["throttle"]["pauses"] == 1


async def test_a_stream_idle_longer_than_the_providers_limit_ends_with_an_error_event(
    chat_settings: Callable[..., Settings],
    serve: Callable[[Settings], ServerThread],
    upstream: FakeUpstream,
) -> None:
    upstream.faults.chunks = 4
    upstream.faults.chunk_delay_s = 5.0  # the first chunk comes at once, the second never in time
    keel = serve(chat_settings(providers={"cloud": provider(upstream.base_url, stream_idle_s=0.3)}))
    async with httpx.AsyncClient(base_url=keel.url, timeout=10) as c:
        resp = await c.post("/v1/chat/completions", json=chat_body(stream=True))
    assert resp.status_code == 200
    events = [e for e in resp.text.split("\n\n") if e.strip()]
    assert events[0].startswith("data: {")
    assert events[-1].startswith("event: error\n")
    await _upstream_saw_disconnect(upstream)  # Keel hung up on the silent upstream
