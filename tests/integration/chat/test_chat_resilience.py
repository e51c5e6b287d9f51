"""Chat under faults: retries, budgets, breakers, fallbacks, deadlines, shedding, leaks."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import httpx
import pytest

from app.chat.component import ChatComponent
from app.main import Components
from app.settings import Settings
from tests.fakes.clock import SteppedClock
from tests.fakes.servers import ServerThread
from tests.fakes.upstream import MARKER, FakeUpstream
from tests.integration.chat.conftest import API_KEY, chat_body, dead_url, provider


def _problem(resp: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    body: dict[str, object] = resp.json()
    assert body["code"] == code
    return body


async def _upstream_saw_disconnect(upstream: FakeUpstream, within_s: float = 2.0) -> None:
    """Poll (bounded) until the fake upstream records a client hang-up."""
    for _ in range(int(within_s / 0.05)):
        if upstream.disconnects:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the upstream never saw the disconnect")


def test_succeeds_through_injected_503s(keel: ServerThread, upstream: FakeUpstream) -> None:
    upstream.faults.error_rate = 0.15
    ok = 0
    n = 400
    with httpx.Client(base_url=keel.url, timeout=10) as c:
        for i in range(n):
            resp = c.post("/v1/chat/completions", json=chat_body(f"q{i}"))
            ok += resp.status_code == 200
    assert ok / n >= 0.995, ok
    assert upstream.calls <= 1.25 * n, upstream.calls


def test_upstream_400_is_one_call_and_a_4xx(keel: ServerThread, upstream: FakeUpstream) -> None:
    upstream.faults.statuses.append(400)
    with httpx.Client(base_url=keel.url) as c:
        resp = c.post("/v1/chat/completions", json=chat_body())
    body = _problem(resp, 400, "upstream_rejected")
    assert upstream.calls == 1
    assert MARKER not in resp.text
    assert body["retryable"] is False


def test_429_retry_after_is_waited_out(keel: ServerThread, upstream: FakeUpstream) -> None:
    upstream.faults.statuses.append(429)
    upstream.faults.retry_after = "1"
    with httpx.Client(base_url=keel.url, timeout=10) as c:
        resp = c.post("/v1/chat/completions", json=chat_body(), headers={"X-Request-Timeout": "5"})
    assert resp.status_code == 200, resp.text
    # How long the wait lasted is the guard's unit tests' business (virtual clock).
    assert upstream.calls == 2
    assert resp.headers["x-keel-attempts"] == "2"


def test_429_retry_after_beyond_deadline_fails_at_once(
    keel: ServerThread, upstream: FakeUpstream
) -> None:
    upstream.faults.statuses.append(429)
    upstream.faults.retry_after = "30"
    with httpx.Client(base_url=keel.url, timeout=10) as c:
        resp = c.post("/v1/chat/completions", json=chat_body(), headers={"X-Request-Timeout": "2"})
    # The provider's 429 keeps its meaning (the SDKs raise RateLimitError) and its wait.
    assert resp.status_code == 429, resp.text
    assert resp.json()["code"] == "rate_limited"
    assert resp.headers["retry-after"] == "30"
    assert resp.headers["x-should-retry"] == "false"  # Keel already decided not to retry
    # A 429 (not a 504 after waiting out the deadline) shows it did not wait.
    assert upstream.calls == 1


def test_outage_opens_breaker_fails_fast_then_recovers(
    chat_settings: Callable[..., Settings],
    serve: Callable[..., ServerThread],
    upstream: FakeUpstream,
) -> None:
    # The breaker stays open until the test moves the guards' clock past open_s: however slow
    # the machine, no request below can find it half-open early.
    cfg = provider(
        upstream.base_url,
        breaker={"min_calls": 5, "window_size": 10, "open_s": 30, "open_max_s": 60},
    )
    clock = SteppedClock()
    keel = serve(
        chat_settings(providers={"cloud": cfg}), Components(chat=ChatComponent(clock=clock))
    )
    upstream.faults.down = True
    with httpx.Client(base_url=keel.url, timeout=10) as c:
        statuses = [c.post("/v1/chat/completions", json=chat_body()).status_code for _ in range(5)]
        assert set(statuses) <= {502, 503}
        calls_during_outage = upstream.calls
        # Failing fast is counted, not timed: not one of these reaches the upstream. (How
        # fast "fast" is on a given machine is bench/'s business, not a test's.)
        for _ in range(50):
            resp = c.post("/v1/chat/completions", json=chat_body())
            body = _problem(resp, 503, "circuit_open")
            assert int(resp.headers["retry-after"]) >= 1
            assert body["retry_after"] == int(resp.headers["retry-after"])
        assert upstream.calls == calls_during_outage  # nothing reached the upstream
        # 5 requests x 3 attempts at most; the retry budget's floor allows that much here.
        assert calls_during_outage <= 15
        diag = c.get("/v1/diagnostics", params={"subject": "provider:cloud"}).json()
        assert diag["providers"][0]["breaker"]["state"] == "open"

        upstream.faults.down = False
        clock.step(31)
        resp = c.post("/v1/chat/completions", json=chat_body())
        assert resp.status_code == 200, resp.text
        diag = c.get("/v1/diagnostics", params={"subject": "provider:cloud"}).json()
        assert diag["providers"][0]["breaker"]["state"] == "closed"
        transitions = [
            (t["from"], t["to"])
            for t in c.get("/v1/diagnostics").json()["transitions"]
            if t["subject"] == "breaker:cloud"
        ]
        assert ("closed", "open") in transitions
        assert ("half_open", "closed") in transitions
        metrics = c.get("/metrics").text
        assert 'keel_breaker_state{provider="cloud",state="closed"} 1.0' in metrics


def test_dead_first_target_falls_back(
    chat_settings: Callable[..., Settings],
    serve: Callable[[Settings], ServerThread],
    upstream: FakeUpstream,
) -> None:
    settings = chat_settings(
        providers={"dead": provider(dead_url()), "cloud": provider(upstream.base_url)},
        routes={"chat": ["dead/small", "cloud/small"]},
    )
    keel = serve(settings)
    with httpx.Client(base_url=keel.url, timeout=10) as c:
        resp = c.post("/v1/chat/completions", json=chat_body())
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-keel-target"] == "cloud/small"
    # three connect failures on the dead target (max_attempts), then the answer
    assert resp.headers["x-keel-attempts"] == "4"


def test_request_timeout_header_bounds_the_request(
    keel: ServerThread, upstream: FakeUpstream
) -> None:
    upstream.faults.latency_s = 5
    with httpx.Client(base_url=keel.url, timeout=10) as c:
        resp = c.post("/v1/chat/completions", json=chat_body(), headers={"X-Request-Timeout": "1"})
    _problem(resp, 504, "deadline_exceeded")  # the upstream would have answered after 5 s
    assert upstream.completed == 0
    with httpx.Client(base_url=keel.url) as c:
        assert 'keel_cancellations_total{reason="deadline"} 1.0' in c.get("/metrics").text


def test_bad_request_timeout_header_is_422(keel: ServerThread) -> None:
    with httpx.Client(base_url=keel.url) as c:
        resp = c.post("/v1/chat/completions", json=chat_body(), headers={"X-Request-Timeout": "x"})
    _problem(resp, 422, "validation_error")


async def test_overload_sheds_with_503(
    chat_settings: Callable[..., Settings],
    serve: Callable[[Settings], ServerThread],
    upstream: FakeUpstream,
) -> None:
    cfg = provider(upstream.base_url, max_concurrency=2, max_queue_wait_s=0.2)
    keel = serve(chat_settings(providers={"cloud": cfg}))
    upstream.faults.latency_s = 1.0
    async with httpx.AsyncClient(base_url=keel.url, timeout=10) as c:
        resps = await asyncio.gather(
            *[c.post("/v1/chat/completions", json=chat_body()) for _ in range(6)]
        )
    codes = sorted(r.status_code for r in resps)
    assert codes.count(200) == 2, codes
    for r in resps:
        if r.status_code != 200:
            _problem(r, 503, "overloaded")
            assert int(r.headers["retry-after"]) >= 1


async def test_client_giving_up_cancels_the_upstream_call(
    keel: ServerThread, upstream: FakeUpstream
) -> None:
    upstream.faults.latency_s = 5
    async with httpx.AsyncClient(base_url=keel.url) as c:
        with pytest.raises(httpx.ReadTimeout):
            await c.post("/v1/chat/completions", json=chat_body(), timeout=0.5)
    await _upstream_saw_disconnect(upstream)
    assert upstream.completed == 0  # it hung up before its 5 s answer
    async with httpx.AsyncClient(base_url=keel.url) as c:
        metrics = (await c.get("/metrics")).text
    assert 'keel_cancellations_total{reason="client_disconnect"} 1.0' in metrics


async def test_client_leaving_a_stream_cancels_the_upstream(
    keel: ServerThread, upstream: FakeUpstream
) -> None:
    upstream.faults.chunks = 40
    upstream.faults.chunk_delay_s = 0.3
    async with (
        httpx.AsyncClient(base_url=keel.url, timeout=10) as c,
        c.stream("POST", "/v1/chat/completions", json=chat_body(stream=True)) as resp,
    ):
        assert resp.status_code == 200
        async for line in resp.aiter_lines():
            if line.startswith("data:"):
                break
    await _upstream_saw_disconnect(upstream)
    assert upstream.completed == 0  # cut off before its 40 x 0.3 s of chunks


def test_mid_stream_drop_ends_with_error_event(keel: ServerThread, upstream: FakeUpstream) -> None:
    upstream.faults.chunks = 5
    upstream.faults.drop_after_chunks = 2
    with (
        httpx.Client(base_url=keel.url, timeout=10) as c,
        c.stream("POST", "/v1/chat/completions", json=chat_body(stream=True)) as resp,
    ):
        assert resp.status_code == 200
        text = resp.read().decode()
    events = [e for e in text.split("\n\n") if e.strip()]
    assert len([e for e in events if e.startswith("data: {")]) == 2
    assert "[DONE]" not in text
    assert events[-1].startswith("event: error\ndata: ")
    problem = json.loads(events[-1].split("data: ", 1)[1])
    assert problem["code"] == "upstream_error"
    assert MARKER not in text
    assert upstream.calls == 1  # nothing is retried once bytes reached the client


def test_failure_before_first_byte_of_stream_is_retried(
    keel: ServerThread, upstream: FakeUpstream
) -> None:
    upstream.faults.statuses.extend([503, 503])
    with httpx.Client(base_url=keel.url, timeout=10) as c:
        resp = c.post("/v1/chat/completions", json=chat_body(stream=True))
    assert resp.status_code == 200
    assert resp.text.rstrip().endswith("data: [DONE]")
    assert resp.headers["x-keel-attempts"] == "3"


def test_errors_never_leak_upstream_text_or_secrets(
    keel: ServerThread, upstream: FakeUpstream
) -> None:
    bodies = []
    with httpx.Client(base_url=keel.url, timeout=10) as c:
        for status in (400, 401, 404, 422, 500, 502, 503):
            upstream.faults.statuses.extend([status] * 3)
            bodies.append(c.post("/v1/chat/completions", json=chat_body()).text)
            upstream.faults.statuses.clear()
        bodies.append(c.get("/v1/diagnostics").text)
        bodies.append(c.get("/metrics").text)
    for text in bodies:
        assert MARKER not in text
        assert API_KEY not in text
        assert "/srv/" not in text
    # ... and the key did reach the upstream, only there.
    assert upstream.requests[0].headers["authorization"] == f"Bearer {API_KEY}"


def test_fast_failures_never_reach_the_upstream(keel: ServerThread, upstream: FakeUpstream) -> None:
    # Validation failures are answered without an upstream call (counted, not timed: their
    # latency is a benchmark's business).
    with httpx.Client(base_url=keel.url) as c:
        for _ in range(20):
            resp = c.post("/v1/chat/completions", json={"model": "chat", "messages": []})
            _problem(resp, 422, "validation_error")
        resp = c.post("/v1/chat/completions", json=chat_body(model="nope"))
        _problem(resp, 404, "model_not_found")
    assert upstream.calls == 0
