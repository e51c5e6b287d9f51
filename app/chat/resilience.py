"""The chat layer's side of the resilience kit: settings in, metrics and catalogue errors out.

``app.resilience`` knows neither settings, Prometheus, the timeline nor the error catalogue
(DESIGN §1). This module is the one place that connects them:

- ``guard_config`` / ``build_guard``: a provider's effective settings as a ``GuardConfig``;
- ``ChatObserver``: the guard's reports as metrics and timeline entries;
- ``classify``: the kit's classifier, extended to the catalogue errors an operation may raise;
- ``to_catalogue``: the kit's refusals as the errors a caller sees;
- ``upstream_error``: a provider's failure, after the kit's retries, as the error a caller sees.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from app.errors import (
    CircuitOpen,
    DeadlineExceeded,
    KeelError,
    Overloaded,
    RateLimited,
    UpstreamAuthFailed,
    UpstreamError,
    UpstreamNotFound,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnprocessable,
)
from app.observability.metrics import Metrics
from app.observability.timeline import Timeline
from app.resilience import failures
from app.resilience.clock import Clock
from app.resilience.config import GuardConfig
from app.resilience.deadline import Deadline
from app.resilience.errors import (
    CallNotPermitted,
    DeadlinePassed,
    QueueFull,
    ResilienceError,
    Throttled,
)
from app.resilience.failures import Classification, UpstreamFailure
from app.resilience.guard import ProviderGuard
from app.resilience.probe import Probe
from app.settings import (
    ProviderSettings,
    ResilienceSettings,
    effective_breaker,
    effective_retry,
)

# Catalogue errors that are Keel refusing, not the upstream failing.
_REFUSALS = frozenset({"circuit_open", "overloaded", "retry_budget_exhausted", "rate_limited"})


def classify(exc: BaseException) -> Classification:
    """``failures.classify``, plus catalogue errors raised inside an operation (a local
    provider's ``model_not_ready``, say): never retried, and a failure of the upstream only
    when it is a 5xx that is not one of Keel's own refusals."""
    if isinstance(exc, KeelError):
        upstream_fault = exc.status_code >= 500 and exc.code not in _REFUSALS
        return Classification(False, exc.code, exc.retry_after, counts_as_failure=upstream_fault)
    return failures.classify(exc)


def to_catalogue(exc: ResilienceError) -> KeelError:
    """The catalogue error a caller sees for one of the kit's refusals."""
    if isinstance(exc, CallNotPermitted):
        return CircuitOpen(exc.message, retry_after=exc.retry_after)
    if isinstance(exc, Throttled):
        # The provider's own 429 pause: keep its meaning, so the SDKs raise RateLimitError.
        return RateLimited(exc.message, retry_after=exc.retry_after)
    if isinstance(exc, QueueFull):
        return Overloaded(exc.message, retry_after=exc.retry_after)
    if isinstance(exc, DeadlinePassed):
        return DeadlineExceeded(exc.message)
    return KeelError(exc.message, retry_after=exc.retry_after)


def upstream_error(exc: UpstreamFailure, deadline: Deadline, target: str) -> KeelError:
    """The one translation of a provider's failure (after Keel's own retries) into the
    catalogue, keeping the status meaning the official SDKs rely on: a 429 stays 429, a 404
    stays 404; the provider's own text never reaches the caller, its blamed ``param`` may."""
    if deadline.expired:
        return DeadlineExceeded("The request deadline passed before the provider answered.")
    status = exc.status_code
    who = f"Provider target '{target}'"
    if status == 429:
        return RateLimited(
            f"{who} is rate limiting Keel (HTTP 429) after Keel's retries.",
            retry_after=exc.retry_after,
        )
    if status in (401, 403):
        return UpstreamAuthFailed(
            f"{who} refused Keel's credentials (HTTP {status}); check its api_key_env."
        )
    if exc.caller_error:
        rejected = {404: UpstreamNotFound, 422: UpstreamUnprocessable}.get(
            status or 400, UpstreamRejected
        )
        return rejected(
            f"{who} rejected the request (HTTP {status})"
            + (f"; it named the field '{exc.param}'." if exc.param else "."),
            param=exc.param,
            extra={"upstream_status": status},
        )
    if exc.reason == "timeout":
        return UpstreamTimeout(f"{who} did not answer in time.")
    if exc.reason == "bad_response":  # app/providers/upstream_checks.py
        return UpstreamError(f"{who} answered 200 with something that is not a valid answer.")
    if exc.reason == "stream_error":
        return UpstreamError(f"{who} reported an error instead of an answer.")
    if status:
        return UpstreamError(f"{who} failed (HTTP {status}).", retry_after=exc.retry_after)
    return UpstreamError(f"{who} could not be reached ({exc.reason}).")


def guard_config(
    provider: str, cfg: ProviderSettings, resilience: ResilienceSettings
) -> GuardConfig:
    """Defaults merged with the provider's overrides (``ConfigError`` names the bad setting)."""
    # A local model's first token may wait for the model to load (the runtime bounds that with
    # its own load and stall limits), so the default per-attempt limit is for remote providers.
    default_attempt = resilience.attempt_timeout_s if cfg.kind == "openai" else None
    attempt_timeout = cfg.attempt_timeout_s or default_attempt
    probe_interval = resilience.probe_interval_s
    if cfg.probe_interval_s is not None:
        probe_interval = cfg.probe_interval_s
    return GuardConfig(
        retry=effective_retry(resilience.retry, cfg.retry, provider=provider).to_config(),
        breaker=effective_breaker(resilience.breaker, cfg.breaker, provider=provider).to_config(),
        max_concurrency=cfg.max_concurrency,
        max_queue_wait_s=cfg.max_queue_wait_s,
        attempt_timeout_s=attempt_timeout,
        probe_interval_s=probe_interval,
        max_throttle_s=resilience.max_throttle_s,
    )


def build_guard(
    provider: str,
    cfg: ProviderSettings,
    resilience: ResilienceSettings,
    *,
    metrics: Metrics | None = None,
    timeline: Timeline | None = None,
    clock: Clock | None = None,
    rng: random.Random | None = None,
    prober: Probe | None = None,
) -> ProviderGuard:
    """``prober`` is the provider's cheap health request (``GET /models``), sent while the
    breaker is open (``probe_interval_s``)."""
    guard = ProviderGuard(
        provider,
        guard_config(provider, cfg, resilience),
        clock=clock,
        observer=ChatObserver(metrics, timeline),
        rng=rng,
        classifier=classify,
        prober=prober,
    )
    if metrics is not None:
        metrics.set_breaker_state(provider, guard.breaker.state.value)
    return guard


class ChatObserver:
    """A ``GuardObserver`` that counts in Prometheus and shows transitions on the timeline."""

    def __init__(self, metrics: Metrics | None, timeline: Timeline | None) -> None:
        self._metrics = metrics
        self._timeline = timeline

    def breaker_transition(
        self, provider: str, from_state: str, to_state: str, reason: str
    ) -> None:
        if self._metrics is not None:
            self._metrics.set_breaker_state(provider, to_state)
            self._metrics.breaker_transitions.labels(
                provider=provider, from_state=from_state, to_state=to_state
            ).inc()
        if self._timeline is not None:
            self._timeline.record(f"breaker:{provider}", from_state, to_state, reason)

    def attempt(self, provider: str, outcome: str, duration_s: float) -> None:
        if self._metrics is not None:
            m = self._metrics
            m.child(m.upstream_attempts, provider, outcome).inc()
            m.child(m.upstream_latency, provider).observe(duration_s)

    def retry(self, provider: str, reason: str, delay_s: float) -> None:
        if self._metrics is not None:
            self._metrics.upstream_retries.labels(provider=provider, reason=reason).inc()

    def budget_exhausted(self, provider: str) -> None:
        if self._metrics is not None:
            self._metrics.retry_budget_exhausted.labels(provider=provider).inc()

    def rejected(self, provider: str, code: str) -> None:
        if self._metrics is not None:
            self._metrics.rejections.labels(provider=provider, code=code).inc()

    def watch_occupancy(self, provider: str, read: Callable[[], tuple[int, int]]) -> None:
        if self._metrics is not None:
            m = self._metrics
            m.child(m.limiter_in_use, provider).set_function(lambda: read()[0])
            m.child(m.limiter_queued, provider).set_function(lambda: read()[1])

    def throttled(self, provider: str, seconds: float) -> None:
        if self._metrics is not None:
            self._metrics.throttle_pauses.labels(provider=provider).inc()

    def probe(self, provider: str, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.probes.labels(provider=provider, outcome=outcome).inc()

    def hedge(self, provider: str, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.hedges.labels(provider=provider, outcome=outcome).inc()
