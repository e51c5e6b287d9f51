"""The readiness checks, one function each, returning a ``CheckResult``.

Two kinds. *Probes* touch the outside world (database, storage roots, importing a runtime's
package spec) and are cached by ``ReadinessService``. *Live* checks only read state Keel
already holds in memory (a model's lifecycle state, the runtime's snapshot, breakers, whether
an environment variable is set), so they run on every request and are never stale.
"""

from __future__ import annotations

import asyncio
import importlib.util
import math
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from app.lifecycle.manifest import ModelSpec
from app.lifecycle.storage import existing_ancestor, is_writable
from app.readiness.reasons import Reason, human_bytes, reason
from app.readiness.runtime_view import RuntimeModel
from app.settings import ProviderSettings
from app.store.database import Database
from app.store.migrate import SchemaStatus, alembic_config

CHECK_STATES = ("ok", "warn", "fail", "running")

# engine -> (the module its runtime imports, how to install it)
ENGINES: dict[str, tuple[str, str]] = {
    "llama_cpp": (
        "llama_cpp",
        "pip install 'keel[local]' (llama-cpp-python) into Keel's environment",
    ),
}

FindSpec = Callable[[str], bool]


def module_installed(name: str) -> bool:
    """Whether ``import name`` would find a module, without importing it (no start-up cost)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


@dataclass(slots=True)
class CheckResult:
    name: str
    status: str
    reasons: tuple[Reason, ...] = ()
    duration_s: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    checked_at: float | None = None  # wall-clock seconds; None while running

    @property
    def blocking(self) -> bool:
        return any(r.blocking for r in self.reasons)

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "duration_ms": None if self.duration_s is None else round(self.duration_s * 1000, 2),
            "reasons": [r.code for r in self.reasons],
            "detail": self.detail,
        }


def result(name: str, reasons: list[Reason], *, failed: bool = False, **detail: Any) -> CheckResult:
    blocking = any(r.blocking for r in reasons)
    status = "fail" if failed or blocking else "warn" if reasons else "ok"
    return CheckResult(name, status, tuple(reasons), detail=detail)


def running(name: str) -> CheckResult:
    return CheckResult(name, "running")


# -- probes ----------------------------------------------------------------------------------


def _heads() -> tuple[str, ...]:
    return tuple(ScriptDirectory.from_config(alembic_config()).get_heads())


async def probe_database(db: Database) -> CheckResult:
    subject = "database"
    # Reading the migration scripts costs tens of ms of CPU: not on the event loop.
    head = await asyncio.to_thread(_heads)

    def current(conn: Connection) -> tuple[str, ...]:
        return tuple(MigrationContext.configure(conn).get_current_heads())

    try:
        async with db.engine.connect() as conn:
            status = SchemaStatus(current=await conn.run_sync(current), head=head)
    except Exception:  # any failure to reach the store is the finding, not an error
        return result(subject, [reason("database_unreachable", subject)], failed=True)
    if not status.up_to_date:
        return result(subject, [reason("database_not_migrated", subject)], failed=True)
    return result(subject, [], kind=db.engine.dialect.name)


def probe_storage(
    capabilities: list[str], root: Path, free_space: Callable[[Path], int], low_bytes: int
) -> CheckResult:
    """Blocking file-system calls: run in a thread."""
    name = "storage:" + ",".join(capabilities)
    label = "/".join(capabilities)
    exists = root.is_dir()
    writable = is_writable(root if exists else existing_ancestor(root))
    try:
        free: int | None = free_space(root)
    except OSError:
        free = None
    reasons = []
    if not writable:
        reasons.append(reason("storage_unwritable", name, capability=label))
    if free is not None and free < low_bytes:
        reasons.append(
            reason(
                "disk_low",
                name,
                capability=label,
                free=human_bytes(free),
                low=human_bytes(low_bytes),
            )
        )
    return result(
        name,
        reasons,
        failed=not writable,
        capabilities=capabilities,
        path=str(root),
        exists=exists,
        writable=writable,
        free_bytes=free,
    )


def probe_runtime(engine: str, find: FindSpec = module_installed) -> CheckResult:
    name = f"runtime:{engine}"
    known = ENGINES.get(engine)
    if known is None:
        missing = reason(
            "runtime_missing", name, engine=engine, install="use a model whose engine Keel runs"
        )
        return result(name, [missing], module=None)
    module, install = known
    if find(module):
        return result(name, [], module=module)
    return result(
        name, [reason("runtime_missing", name, engine=engine, install=install)], module=module
    )


async def timed(
    name: str,
    work: Callable[[], Awaitable[CheckResult]],
    timeout_s: float,
    clock: Callable[[], float],
) -> CheckResult:
    """Run a probe under a timeout and stamp its duration; a timeout is a finding too."""
    started = clock()
    try:
        async with asyncio.timeout(timeout_s):
            out = await work()
    except TimeoutError:
        out = result(name, [reason("check_timeout", name, check=name)], failed=True)
    out.duration_s = clock() - started
    return out


# -- live checks -----------------------------------------------------------------------------


def check_model(
    model: ModelSpec,
    lifecycle_state: str,
    error_code: str | None,
    runtime: RuntimeModel | None,
    runtime_probe: CheckResult | None,
) -> CheckResult:
    name = f"model:{model.id}"
    reasons: list[Reason] = []
    if lifecycle_state == "absent":
        reasons.append(reason("model_absent", name, model=model.id))
    elif lifecycle_state in ("downloading", "verifying"):
        reasons.append(reason("model_downloading", name, model=model.id))
    elif lifecycle_state == "error":
        reasons.append(
            reason("model_download_failed", name, model=model.id, error=error_code or "unknown")
        )
    if runtime_probe is not None:
        reasons.extend(runtime_probe.reasons)
    if runtime is not None:
        seconds = math.ceil(runtime.seconds_until_retry or 0)
        if runtime.state == "cooldown":
            reasons.append(reason("model_cooldown", name, model=model.id, seconds=seconds))
        elif runtime.state == "error":
            reasons.append(reason("model_error", name, model=model.id))
    return result(
        name,
        reasons,
        capability=model.capability,
        engine=model.engine,
        state=runtime.state
        if runtime is not None and lifecycle_state == "installed"
        else lifecycle_state,
    )


def check_provider(
    name: str,
    cfg: ProviderSettings,
    breaker: Mapping[str, Any] | None,
    environ: Mapping[str, str] = os.environ,
) -> CheckResult:
    subject = f"provider:{name}"
    reasons: list[Reason] = []
    if cfg.api_key_env and not environ.get(cfg.api_key_env):
        reasons.append(reason("provider_key_missing", subject, provider=name, env=cfg.api_key_env))
    state = breaker.get("state") if breaker else None
    if state in ("open", "forced_open"):
        seconds = math.ceil(breaker.get("seconds_until_half_open") or 0) if breaker else 0
        reasons.append(reason("provider_circuit_open", subject, provider=name, seconds=seconds))
    elif state == "half_open":
        reasons.append(reason("provider_recovering", subject, provider=name))
    return result(
        subject,
        reasons,
        capabilities=list(cfg.capabilities),
        breaker=state,
        api_key_env=cfg.api_key_env,
    )
