"""Every Prometheus metric Keel exports, declared once.

A ``Metrics`` object owns its own registry and is created in the lifespan, so each app (and each
test) gets fresh series. Labels are bounded: route templates, provider, model, code, reason,
state — never ids.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics import MetricWrapperBase

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
LOAD_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
DOWNLOAD_BUCKETS = (1, 5, 15, 60, 300, 900, 3600, 14400)

BREAKER_STATES = ("closed", "open", "half_open", "forced_open", "disabled")
# Remembered label children (``Metrics.child``); the label sets are bounded, this is a guard.
_MAX_CHILDREN = 10_000


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self._children: dict[tuple[MetricWrapperBase, tuple[str, ...]], Any] = {}

        # HTTP (foundation)
        self.http_requests = Counter(
            "keel_http_requests_total",
            "HTTP requests by route template, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.http_latency = Histogram(
            "keel_http_request_duration_seconds",
            "HTTP request latency by route template",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.http_in_flight = Gauge(
            "keel_http_requests_in_flight", "HTTP requests being served", registry=r
        )
        # Counted by the middleware as a plain int and read at scrape time: a gauge update
        # takes a lock, twice per request.
        self.serving = 0
        self.http_in_flight.set_function(lambda: self.serving)

        # Resilience
        self.breaker_state = Gauge(
            "keel_breaker_state",
            "1 for the breaker's current state, 0 for the others",
            ["provider", "state"],
            registry=r,
        )
        self.breaker_transitions = Counter(
            "keel_breaker_transitions_total",
            "Circuit breaker transitions",
            ["provider", "from_state", "to_state"],
            registry=r,
        )
        self.upstream_attempts = Counter(
            "keel_upstream_attempts_total",
            "Upstream call attempts by outcome",
            ["provider", "outcome"],
            registry=r,
        )
        self.upstream_retries = Counter(
            "keel_upstream_retries_total",
            "Retries by provider and the reason for retrying",
            ["provider", "reason"],
            registry=r,
        )
        self.retry_budget_exhausted = Counter(
            "keel_retry_budget_exhausted_total",
            "Retries refused by the retry budget",
            ["provider"],
            registry=r,
        )
        self.limiter_in_use = Gauge(
            "keel_limiter_in_use", "Concurrency slots in use", ["provider"], registry=r
        )
        self.limiter_queued = Gauge(
            "keel_limiter_queued",
            "Callers waiting for a concurrency slot",
            ["provider"],
            registry=r,
        )
        self.rejections = Counter(
            "keel_rejections_total",
            "Requests rejected before reaching an upstream",
            ["provider", "code"],
            registry=r,
        )
        self.cancellations = Counter(
            "keel_cancellations_total", "Cancelled requests by reason", ["reason"], registry=r
        )
        self.upstream_latency = Histogram(
            "keel_upstream_duration_seconds",
            "Upstream attempt latency",
            ["provider"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.fallbacks = Counter(
            "keel_fallbacks_total",
            "Requests answered by a target after the first",
            ["route"],
            registry=r,
        )
        self.throttle_pauses = Counter(
            "keel_throttle_pauses_total",
            "Rate-limit answers (429) that paused new work to a provider",
            ["provider"],
            registry=r,
        )
        self.probes = Counter(
            "keel_probes_total",
            "Active probes of a provider whose breaker is open, by outcome",
            ["provider", "outcome"],
            registry=r,
        )
        self.hedges = Counter(
            "keel_hedges_total",
            "Hedged attempts by the provider hedged to and outcome (started, won, lost)",
            ["provider", "outcome"],
            registry=r,
        )

        # Store
        self.idempotent_replays = Counter(
            "keel_idempotent_replays_total",
            "Responses replayed from an idempotency key",
            ["route"],
            registry=r,
        )
        self.version_conflicts = Counter(
            "keel_version_conflicts_total",
            "Optimistic concurrency conflicts",
            ["route", "code"],
            registry=r,
        )
        self.data_corruption = Counter(
            "keel_data_corruption_total",
            "Stored records that failed their checksum",
            ["kind"],
            registry=r,
        )
        self.idempotency_swept = Counter(
            "keel_idempotency_keys_swept_total", "Expired idempotency keys deleted", registry=r
        )

        # Model lifecycle
        self.model_load_duration = Histogram(
            "keel_model_load_seconds",
            "Local model load duration: cold (a worker spawned) or warm (already resident)",
            ["model", "kind"],
            buckets=(0.001, 0.005, 0.025, *LOAD_BUCKETS),
            registry=r,
        )
        self.model_load_failures = Counter(
            "keel_model_load_failures_total",
            "Local model loads that failed, by error code",
            ["model", "code"],
            registry=r,
        )
        self.models_loaded = Gauge(
            "keel_models_loaded", "Local models with a ready worker", registry=r
        )
        self.model_transitions = Counter(
            "keel_model_transitions_total",
            "Local model state transitions",
            ["model", "from_state", "to_state"],
            registry=r,
        )
        self.worker_crashes = Counter(
            "keel_worker_crashes_total",
            "Local model workers that exited unexpectedly",
            ["model"],
            registry=r,
        )
        self.generated_tokens = Counter(
            "keel_generated_tokens_total", "Tokens generated by local models", ["model"], registry=r
        )
        self.download_bytes = Counter(
            "keel_download_bytes_total", "Bytes downloaded for model files", ["model"], registry=r
        )
        self.download_duration = Histogram(
            "keel_download_duration_seconds",
            "Whole download job duration",
            ["model"],
            buckets=DOWNLOAD_BUCKETS,
            registry=r,
        )
        self.download_resumes = Counter(
            "keel_download_resumes_total",
            "Downloads resumed from a partial file",
            ["model"],
            registry=r,
        )
        self.download_failures = Counter(
            "keel_download_failures_total",
            "Failed download attempts by error code",
            ["model", "code"],
            registry=r,
        )
        self.download_jobs = Gauge(
            "keel_download_jobs", "Download jobs by state", ["state"], registry=r
        )

        # Readiness (refreshed by every report and the background probes)
        self.readiness_status = Gauge(
            "keel_readiness_status",
            "1 for each capability's current readiness status, 0 for the others",
            ["capability", "status"],
            registry=r,
        )
        self.readiness_reasons = Gauge(
            "keel_readiness_reasons",
            "Reasons a capability is degraded or unavailable, by reason code",
            ["capability", "reason"],
            registry=r,
        )
        self.storage_free_bytes = Gauge(
            "keel_storage_free_bytes",
            "Free bytes on the disk of each capability's storage root",
            ["capability"],
            registry=r,
        )

    def child(self, metric: MetricWrapperBase, *values: str) -> Any:
        """``metric.labels(*values)``, remembered: ``labels()`` takes a lock and builds a key
        on every call, which the hot path paid several times per request."""
        key = (metric, values)
        found = self._children.get(key)
        if found is None:
            found = metric.labels(*values)
            if len(self._children) < _MAX_CHILDREN:
                self._children[key] = found
        return found

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def set_breaker_state(self, provider: str, state: str) -> None:
        for s in BREAKER_STATES:
            self.breaker_state.labels(provider=provider, state=s).set(1 if s == state else 0)
