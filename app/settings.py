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
from app.settings_errors import ConfigError as ConfigError
from app.settings_errors import explain, read_toml
from app.settings_sections import (
    BreakerSettings,
    DownloadSettings,
    ProviderSettings,
    ReadinessSettings,
    ResilienceSettings,
    RetrySettings,
    RuntimeBreakerSettings,
    RuntimeSettings,
    StoreSettings,
)

# The sections live in settings_sections.py; importing them from here keeps working.
__all__ = [
    "BreakerSettings",
    "ConfigError",
    "DownloadSettings",
    "ProviderSettings",
    "ReadinessSettings",
    "ResilienceSettings",
    "RetrySettings",
    "RuntimeBreakerSettings",
    "RuntimeSettings",
    "Settings",
    "StoreSettings",
    "load_settings",
]

DEFAULT_CONFIG_FILE = Path("keel.toml")
# The local runtime's provider name when keel.toml declares no provider of kind "local":
# routes may always name local models as ``local/<model id>``.
LOCAL_PROVIDER = "local"


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
    # The chat and relay endpoints served straight from Keel's middleware, past FastAPI's
    # router (app/api/direct.py); false serves them through the router like every other.
    direct_routes: bool = True

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
