"""Keel's configuration: defaults < TOML file < ``KEEL_*`` environment variables.

The TOML file is ``$KEEL_CONFIG`` or ``./keel.toml`` when present. Nested settings use ``__`` in
environment names (``KEEL_RESILIENCE__RETRY__MAX_ATTEMPTS=5``). Every setting is listed with its
default in ``.env.example``; the TOML-only tables (providers, routes) are documented in README.
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from app.observability.redact import redact_url
from app.resilience.config import BreakerConfig, RetryConfig
from app.settings_errors import ConfigError as ConfigError
from app.settings_errors import explain, read_toml

DEFAULT_CONFIG_FILE = Path("keel.toml")
# The local runtime's provider name when keel.toml declares no provider of kind "local":
# routes may always name local models as ``local/<model id>``.
LOCAL_PROVIDER = "local"


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
    # httpx's own pool, or aiohttp underneath httpx (httpx-aiohttp); docs/benchmarks.md has
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


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="KEEL_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    data_dir: Path = Path("./data")
    database_url: str | None = None
    api_token: SecretStr | None = None
    config: Path | None = None
    models_manifest: str | None = None
    auto_migrate: bool = True
    log_format: Literal["auto", "json", "text"] = "auto"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    timeline_size: int = Field(500, ge=10, le=100_000)
    allowed_hosts: Annotated[list[str] | None, NoDecode] = None
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    header_timeout_s: float = Field(10.0, gt=0, le=600)
    body_timeout_s: float = Field(30.0, gt=0, le=3600)

    resilience: ResilienceSettings = ResilienceSettings()
    providers: dict[str, ProviderSettings] = Field(default_factory=dict)
    routes: dict[str, list[str]] = Field(default_factory=dict)
    store: StoreSettings = StoreSettings()
    downloads: DownloadSettings = DownloadSettings()
    runtime: RuntimeSettings = RuntimeSettings()
    readiness: ReadinessSettings = ReadinessSettings()

    @field_validator("api_token")
    @classmethod
    def _token_not_blank(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and len(v.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters")
        return v

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_any_case(cls, v: Any) -> Any:
        return v.strip().upper() if isinstance(v, str) else v

    @field_validator("allowed_hosts", "cors_origins", mode="before")
    @classmethod
    def _comma_list(cls, v: Any) -> Any:
        # Environment values are comma-separated (a JSON list also works).
        if isinstance(v, str):
            text = v.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return v

    @model_validator(mode="after")
    def _refuse_open_bind(self) -> Settings:
        if self.api_token is None and not is_loopback(self.host):
            raise ValueError(
                f"KEEL_HOST={self.host} is not a loopback address; set KEEL_API_TOKEN to bind it"
            )
        return self

    @model_validator(mode="after")
    def _routes_and_overrides(self) -> Settings:
        for route, targets in self.routes.items():
            if not targets:
                raise ValueError(f"routes.{route}: needs at least one target")
            for target in targets:
                provider, sep, model = target.partition("/")
                known = provider in self.providers or provider == LOCAL_PROVIDER
                if not sep or not model or not known:
                    raise ValueError(
                        f"routes.{route}: target {target!r} names no configured provider"
                    )
        for route, delay in self.resilience.hedge.items():
            if route not in self.routes:
                raise ValueError(f"resilience.hedge.{route}: names no route")
            if delay != "p95" and not 0 < delay <= 3600:
                raise ValueError(f'resilience.hedge.{route}: seconds in (0, 3600] or "p95"')
        if sum(1 for p in self.providers.values() if p.kind == "local") > 1:
            raise ValueError('providers: at most one provider may have kind = "local"')
        for name, p in self.providers.items():
            # ConfigError is not a ValueError: pydantic lets it through with its one-line text.
            effective_retry(self.resilience.retry, p.retry, provider=name)
            effective_breaker(self.resilience.breaker, p.breaker, provider=name)
        return self

    @property
    def effective_allowed_hosts(self) -> list[str]:
        """``KEEL_ALLOWED_HOSTS``, else the loopback names and the bind address."""
        if self.allowed_hosts is not None:
            return self.allowed_hosts
        hosts = ["localhost", "127.0.0.1", "::1"]
        bind = self.host.strip("[]").lower()
        if bind not in hosts and bind not in ("0.0.0.0", "::", ""):  # noqa: S104  # a wildcard bind names no host
            hosts.append(bind)
        return hosts

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{self.data_dir / 'keel.db'}"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Rising priority is read right to left: TOML sits between defaults and the environment.
        toml_path = config_file_path()
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_path))
        return tuple(sources)


def config_file_path() -> Path | None:
    explicit = os.environ.get("KEEL_CONFIG")
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"KEEL_CONFIG: file not found: {path}")
        return path
    return DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.is_file() else None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


M = TypeVar("M", bound=BaseModel)


def _merge(model: type[M], defaults: M, overrides: Mapping[str, Any], where: str) -> M:
    try:
        return model.model_validate({**defaults.model_dump(), **overrides})
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        msg = first["msg"].removeprefix("Value error, ")
        raise ConfigError(f"invalid setting {where}{'.' + field if field else ''}: {msg}") from None


def effective_retry(
    defaults: RetrySettings, overrides: Mapping[str, Any], *, provider: str | None = None
) -> RetrySettings:
    """``[resilience.retry]`` with ``[providers.<name>.retry]`` on top, validated."""
    where = f"providers.{provider}.retry" if provider else "retry"
    return _merge(RetrySettings, defaults, overrides, where)


def effective_breaker(
    defaults: BreakerSettings, overrides: Mapping[str, Any], *, provider: str | None = None
) -> BreakerSettings:
    """``[resilience.breaker]`` with ``[providers.<name>.breaker]`` on top, validated."""
    where = f"providers.{provider}.breaker" if provider else "breaker"
    return _merge(BreakerSettings, defaults, overrides, where)


def load_settings(**overrides: Any) -> Settings:
    """Build Settings, turning pydantic's report into one line per the start-up contract: the
    environment variable, or the config file and TOML key, that holds the bad value."""
    path = config_file_path()
    written = read_toml(path) if path is not None else {}
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(explain(exc.errors()[0], path, written, Settings)) from None
    except ValueError as exc:  # malformed env JSON
        raise ConfigError(f"invalid configuration: {str(exc).splitlines()[0]}") from None


def redacted_dump(settings: Settings) -> dict[str, Any]:
    """The effective configuration with secrets replaced, for ``keel config``."""
    data = settings.model_dump(mode="json")
    if settings.api_token is not None:
        data["api_token"] = "**********"  # noqa: S105  # the redaction mask
    data["database_url"] = redact_url(settings.effective_database_url)
    for name, provider in settings.providers.items():
        # A token before the @ of an upstream URL is a credential even without a colon.
        data["providers"][name]["base_url"] = redact_url(provider.base_url, keep_user=False)
    return data
