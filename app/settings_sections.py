"""The sections of Keel's configuration (``app/settings.py`` holds ``Settings`` itself, the
sources and the merge rules): resilience, providers, store, downloads, readiness, runtime."""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    model_validator,
)

from app.resilience.config import BreakerConfig, RetryConfig


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RetrySettings(_Section):
    max_attempts: int = Field(3, ge=1, le=10, description="attempts per target, first included")
    base_delay_s: float = Field(0.1, ge=0, le=60)
    max_delay_s: float = Field(5.0, ge=0, le=600)
    budget_ratio: float = Field(0.2, ge=0, le=1, description="retries / requests over 10 s")
    budget_min_per_s: float = Field(10, ge=0, le=10_000, description="retry floor per second")

    def to_config(self) -> RetryConfig:
        return RetryConfig(**self.model_dump())


class BreakerSettings(_Section):
    # Defaults chosen so independent errors up to 30 % do not trip it (docs/resilience.md).
    window: Literal["count", "time"] = "count"
    window_size: int = Field(200, ge=1, le=10_000)
    min_calls: int = Field(100, ge=1, le=10_000)
    failure_rate: float = Field(0.5, gt=0, le=1)
    slow_call_s: float = Field(30.0, gt=0)
    slow_call_rate: float = Field(1.0, gt=0, le=1)
    open_s: float = Field(10.0, gt=0)
    open_max_s: float = Field(300.0, gt=0)
    half_open_permits: int = Field(1, ge=1, le=1000)

    @model_validator(mode="after")
    def _open_bounds(self) -> BreakerSettings:
        if self.open_max_s < self.open_s:
            raise ValueError("open_max_s must be >= open_s")
        return self

    def to_config(self) -> BreakerConfig:
        return BreakerConfig(**self.model_dump())


class ResilienceSettings(_Section):
    retry: RetrySettings = RetrySettings()
    breaker: BreakerSettings = BreakerSettings()
    default_timeout_s: float = Field(60.0, gt=0, le=3600, description="request deadline")
    stream_idle_s: float = Field(30.0, gt=0, le=3600, description="max gap between chunks")
    attempt_timeout_s: float = Field(
        20.0, gt=0, le=3600, description="time to first byte per attempt, inside the deadline"
    )
    probe_interval_s: float = Field(
        1.0, ge=0, le=600, description="active probe period while a breaker is open (0: off)"
    )
    max_throttle_s: float = Field(
        60.0, ge=0, le=3600, description="longest Retry-After pause honoured after a 429"
    )
    # Hedged fallback per route: seconds without a first byte from the first target before the
    # second starts too, or "p95" for the first target's observed p95 (docs/resilience.md).
    hedge: dict[str, float | Literal["p95"]] = Field(
        default_factory=dict, description="route -> hedge delay (seconds or p95)"
    )


ProviderCapability = Literal["llm", "embedding", "stt", "tts"]


class ProviderSettings(_Section):
    """One upstream provider. ``retry``/``breaker`` hold overrides of ``[resilience]``."""

    kind: Literal["openai", "local"] = "openai"
    base_url: str = ""
    api_key_env: str | None = None
    models: list[str] = Field(default_factory=list)
    # What the provider's models serve, for the readiness report (DESIGN §6).
    capabilities: list[ProviderCapability] = Field(
        default_factory=lambda: list[ProviderCapability](["llm"]), max_length=4
    )
    max_concurrency: int = Field(64, ge=1, le=100_000)
    max_queue_wait_s: float = Field(1.0, ge=0, le=600)
    timeout_s: float | None = Field(None, gt=0, le=3600)
    connect_timeout_s: float = Field(5.0, gt=0, le=600)
    # Overrides of [resilience] for this provider (None: the [resilience] value).
    attempt_timeout_s: float | None = Field(None, gt=0, le=3600)
    stream_idle_s: float | None = Field(None, gt=0, le=3600)
    probe_interval_s: float | None = Field(None, ge=0, le=600)
    # The client under the provider: aiohttp straight (app/providers/wire_aiohttp.py), or
    # httpx with its own pool (wire_httpx.py); docs/benchmarks.md has
    # the measurements behind the default.
    http_transport: Literal["httpx", "aiohttp"] = "aiohttp"
    retry: dict[str, Any] = Field(default_factory=dict)
    breaker: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _needs_base_url(self) -> ProviderSettings:
        if self.kind == "openai" and not self.base_url.strip():
            raise ValueError('base_url is required for kind = "openai"')
        return self

    def api_key(self) -> str | None:
        """The secret itself, read at use; it is never stored in settings or printed."""
        return os.environ.get(self.api_key_env) if self.api_key_env else None


class StoreSettings(_Section):
    max_message_chars: int = Field(100_000, ge=1)
    max_messages_per_append: int = Field(100, ge=1)
    max_title_chars: int = Field(500, ge=1)
    max_metadata_bytes: int = Field(16_384, ge=2)
    page_limit_max: int = Field(200, ge=1)
    idempotency_ttl_s: float = Field(86_400.0, gt=0)
    idempotency_lease_s: float = Field(60.0, gt=0, description="in_progress rows older expire")
    sweep_interval_s: float = Field(300.0, gt=0)
    sweep_batch: int = Field(500, ge=1, le=100_000)
    fast_path: bool = Field(
        True,
        description="hot-path statements straight on the driver (sqlite_fastpath.py); "
        "false sends every statement through SQLAlchemy",
    )
    sqlite_synchronous: Literal["NORMAL", "FULL"] = "NORMAL"
    sqlite_busy_timeout_ms: int = Field(5000, ge=0)
    pool_size: int = Field(10, ge=1, le=1000, description="PostgreSQL connections kept open")
    pool_max_overflow: int = Field(
        10, ge=0, le=1000, description="extra PostgreSQL connections opened under load"
    )
    pool_timeout_s: float = Field(
        10.0, gt=0, le=300, description="wait for a free connection, then 503 overloaded"
    )


class DownloadSettings(_Section):
    max_concurrent: int = Field(2, ge=1, le=32)
    stall_s: float = Field(30.0, gt=0)
    retries: int = Field(2, ge=0, le=10, description="automatic retries for HTTP failures")
    network_retries: int = Field(4, ge=0, le=10, description="automatic retries for net errors")
    base_delay_s: float = Field(0.5, ge=0)
    max_delay_s: float = Field(10.0, ge=0)
    free_space_margin_bytes: int = Field(64 * 1024 * 1024, ge=0)
    partial_max_age_s: float = Field(7 * 86_400.0, gt=0)
    chunk_bytes: int = Field(1024 * 1024, ge=4096)
    hash_threads: int = Field(2, ge=1, le=16)
    write_batch_bytes: int = Field(
        4 * 1024 * 1024,
        ge=64 * 1024,
        le=256 * 1024 * 1024,
        description="received bytes handed to the hash+write thread at once",
    )
    write_queue_depth: int = Field(
        4, ge=1, le=64, description="batches in flight between network and disk per download"
    )
    persist_interval_s: float = Field(
        2.0, gt=0, description="how often a running download saves its progress (sidecar, job)"
    )
    progress_interval_s: float = Field(
        0.25, ge=0, description="least gap between two progress events of one download"
    )
    connect_timeout_s: float = Field(15.0, gt=0)
    reap_interval_s: float = Field(3600.0, gt=0, description="stale partial sweep period")


class ReadinessSettings(_Section):
    ttl_s: float = Field(5.0, gt=0, le=3600, description="how long probe results are reused")
    refresh_interval_s: float = Field(
        30.0, gt=0, le=86_400, description="background re-run of the probes (for /metrics)"
    )
    check_timeout_s: float = Field(5.0, gt=0, le=600, description="bound on each probe")
    disk_low_bytes: int = Field(
        1024 * 1024 * 1024, ge=0, description="free bytes under which a storage root is low"
    )


class RuntimeBreakerSettings(_Section):
    """The model-initialisation breaker (DESIGN §5 semantics, over load attempts)."""

    min_calls: int = Field(2, ge=1, le=100, description="load attempts before the rate counts")
    failure_rate: float = Field(0.5, gt=0, le=1, description="failed loads / loads that opens it")
    window_size: int = Field(4, ge=1, le=100, description="last load attempts evaluated")
    open_s: float = Field(10.0, gt=0, description="first cooldown; doubles on consecutive re-opens")
    open_max_s: float = Field(300.0, gt=0, description="longest cooldown")

    @model_validator(mode="after")
    def _open_bounds(self) -> RuntimeBreakerSettings:
        if self.open_max_s < self.open_s:
            raise ValueError("open_max_s must be >= open_s")
        return self


class RuntimeSettings(_Section):
    """Local models: one supervised llama.cpp worker process per loaded model."""

    keep_alive_s: float = Field(
        300.0, ge=0, le=7 * 86_400, description="unload a model idle this long; 0 = after each use"
    )
    max_loaded: int = Field(2, ge=1, le=64, description="models resident at once")
    memory_budget_mb: int = Field(
        4096, ge=1, description="hard limit for all resident models' memory (estimate, then RSS)"
    )
    n_threads: int = Field(1, ge=1, le=256, description="threads per worker")
    n_ctx: int = Field(2048, ge=128, le=1_048_576, description="context length in tokens")
    load_timeout_s: float = Field(60.0, gt=0, le=3600, description="whole load")
    load_stall_s: float = Field(
        15.0, gt=0, le=3600, description="no load progress and no stderr this long -> killed"
    )
    token_stall_s: float = Field(
        10.0, gt=0, le=3600, description="no token this long mid-generation -> worker killed"
    )
    max_queue_wait_s: float = Field(
        5.0, ge=0, le=600, description="wait for the model's one generation slot, then 503"
    )
    stop_grace_s: float = Field(
        5.0, gt=0, le=600, description="after shutdown/SIGTERM, wait this long before SIGKILL"
    )
    breaker: RuntimeBreakerSettings = RuntimeBreakerSettings()
