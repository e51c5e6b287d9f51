"""The readiness report: what each capability can do right now, why not, and what fixes it.

Probes (database, storage roots, runtime packages) run at start-up in the background, again
every ``refresh_interval_s``, and on demand when a request finds them older than ``ttl_s``;
a request never waits for them (a probe that has not finished yet reads ``running``) unless it
asks for ``refresh``. Live checks (models, providers) are computed per request from memory.

A capability is ``available`` when every model and provider serving it is usable and nothing
warns, ``degraded`` when at least one is usable but something is wrong, ``unavailable`` when
none is (DESIGN §6). Each capability stands alone: a missing LLM does not touch STT.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from app.lifecycle.manifest import CAPABILITIES
from app.lifecycle.service import LifecycleService
from app.observability.metrics import Metrics
from app.readiness import checks
from app.readiness.checks import CheckResult, FindSpec, module_installed
from app.readiness.reasons import REASONS, Reason, reason
from app.readiness.runtime_view import ModelRuntimeView, RuntimeModel
from app.settings import Settings
from app.store.database import Database

log = logging.getLogger("keel.readiness")

STATUSES = ("available", "degraded", "unavailable")

Spawn = Callable[[Coroutine[Any, Any, None], str], "asyncio.Task[None]"]


class GuardView(Protocol):
    def diagnostics(self) -> dict[str, Any]: ...


class ReadinessService:
    def __init__(
        self,
        *,
        settings: Settings,
        db: Database,
        lifecycle: LifecycleService,
        guards: Mapping[str, GuardView],
        metrics: Metrics,
        runtime: ModelRuntimeView | None = None,
        find: FindSpec = module_installed,
        environ: Mapping[str, str] = os.environ,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.cfg = settings.readiness
        self.db = db
        self.lifecycle = lifecycle
        self.guards = guards
        self.metrics = metrics
        self.runtime = runtime
        self.find = find
        self.environ = environ
        self.clock = clock
        self.wall_clock = wall_clock
        self._probes: dict[str, CheckResult] = {}
        self._probed_at: float | None = None
        self._refresh: asyncio.Task[None] | None = None
        self._spawn: Spawn | None = None

    # -- probes ------------------------------------------------------------------------------

    def start(self, spawn: Spawn) -> None:
        """Begin the background probing (start-up, then every ``refresh_interval_s``)."""
        self._spawn = spawn
        _ = spawn(self._forever(), "readiness:probes")

    async def _forever(self) -> None:
        while True:
            try:
                await self.refresh()
                self.report()  # keeps the readiness gauges current between scrapes
            except Exception:  # the checks turn failures into findings; this is a bug
                log.exception("readiness probes failed")
            await asyncio.sleep(self.cfg.refresh_interval_s)

    async def refresh(self) -> None:
        """Run every probe once; concurrent callers share the run in flight."""
        if self._refresh is None or self._refresh.done():
            self._refresh = asyncio.ensure_future(self._probe_all())
        await asyncio.shield(self._refresh)

    def kick(self) -> None:
        """Start a refresh in the background when the cached probes are stale."""
        stale = self._probed_at is None or self.clock() - self._probed_at > self.cfg.ttl_s
        busy = self._refresh is not None and not self._refresh.done()
        if stale and not busy and self._spawn is not None:
            _ = self._spawn(self.refresh(), "readiness:refresh")

    def _roots(self) -> dict[Path, list[str]]:
        roots: dict[Path, list[str]] = {}
        for cap in CAPABILITIES:
            roots.setdefault(self.lifecycle.storage.root(cap), []).append(cap)
        return roots

    def _engines(self) -> list[str]:
        return sorted({m.engine for m in self.lifecycle.manager.manifest})

    def probe_names(self) -> list[str]:
        return [
            "database",
            *("storage:" + ",".join(caps) for caps in self._roots().values()),
            *(f"runtime:{e}" for e in self._engines()),
        ]

    async def _probe_all(self) -> None:
        timeout = self.cfg.check_timeout_s
        free = self.lifecycle.storage.free_space
        low = self.cfg.disk_low_bytes
        jobs: list[tuple[str, Callable[[], Awaitable[CheckResult]]]] = [
            ("database", partial(checks.probe_database, self.db))
        ]
        for root, caps in self._roots().items():
            probe = partial(checks.probe_storage, caps, root, free, low)
            jobs.append(("storage:" + ",".join(caps), partial(asyncio.to_thread, probe)))
        for engine in self._engines():
            probe_rt = partial(checks.probe_runtime, engine, self.find)
            jobs.append((f"runtime:{engine}", partial(asyncio.to_thread, probe_rt)))
        done = await asyncio.gather(
            *(checks.timed(name, work, timeout, self.clock) for name, work in jobs)
        )
        at = self.wall_clock()
        for out in done:
            out.checked_at = at
        self._probes = {out.name: out for out in done}
        self._probed_at = self.clock()

    def _probe(self, name: str) -> CheckResult:
        return self._probes.get(name) or checks.running(name)

    # -- the report --------------------------------------------------------------------------

    def _runtime_models(self) -> dict[str, RuntimeModel]:
        if self.runtime is None:
            return {}
        return {m.model: m for m in self.runtime.runtime_models()}

    def _live_checks(self) -> tuple[list[CheckResult], list[CheckResult]]:
        runtime = self._runtime_models()
        models = []
        for spec in self.lifecycle.manager.manifest:
            started = self.clock()
            view = self.lifecycle.model_view(spec)
            error = view.get("error") or {}
            probe = self._probes.get(f"runtime:{spec.engine}")
            out = checks.check_model(
                spec, view["state"], error.get("code"), runtime.get(spec.id), probe
            )
            out.duration_s = self.clock() - started
            models.append(out)
        providers = []
        for name, cfg in self.settings.providers.items():
            if cfg.kind != "openai":
                continue  # local models are reported per model
            started = self.clock()
            guard = self.guards.get(name)
            breaker = guard.diagnostics().get("breaker") if guard is not None else None
            out = checks.check_provider(name, cfg, breaker, self.environ)
            out.duration_s = self.clock() - started
            providers.append(out)
        at = self.wall_clock()
        for out in (*models, *providers):
            out.checked_at = at
        return models, providers

    def report(self) -> dict[str, Any]:
        self.kick()
        models, providers = self._live_checks()
        probes = [self._probe(n) for n in self.probe_names()]
        storage = {p.name: p for p in probes if p.name.startswith("storage:")}
        database = self._probe("database")
        capabilities: dict[str, dict[str, Any]] = {}
        for cap in CAPABILITIES:
            mine_m = [c for c in models if c.detail["capability"] == cap]
            mine_p = [c for c in providers if cap in c.detail["capabilities"]]
            shared = [database]
            if mine_m:
                shared += [s for s in storage.values() if cap in _caps(s)]
            capabilities[cap] = _capability(cap, mine_m, mine_p, shared)
        self._export(capabilities, storage.values())
        return {
            "generated_at": datetime.fromtimestamp(self.wall_clock(), tz=UTC).isoformat(),
            "complete": all(p.status != "running" for p in probes),
            "capabilities": capabilities,
            "checks": [c.as_json() for c in (*probes, *models, *providers)],
            "storage": [s.detail for s in storage.values() if s.status != "running"],
        }

    async def fresh_report(self) -> dict[str, Any]:
        """Re-run the probes first (bounded), for a caller who just changed something."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.cfg.check_timeout_s + 1):
                await self.refresh()
        return self.report()

    def _export(self, capabilities: dict[str, dict[str, Any]], storage: Any) -> None:
        m = self.metrics
        for cap, body in capabilities.items():
            for status in STATUSES:
                m.readiness_status.labels(capability=cap, status=status).set(
                    1 if body["status"] == status else 0
                )
            codes = [r["code"] for r in body["reasons"]]
            for code in REASONS:
                m.readiness_reasons.labels(capability=cap, reason=code).set(codes.count(code))
        for s in storage:
            free = s.detail.get("free_bytes")
            for cap in _caps(s):
                if free is not None:
                    m.storage_free_bytes.labels(capability=cap).set(free)


def _caps(storage_check: CheckResult) -> list[str]:
    return storage_check.name.removeprefix("storage:").split(",")


def _capability(
    cap: str, models: list[CheckResult], providers: list[CheckResult], shared: list[CheckResult]
) -> dict[str, Any]:
    sources = [*models, *providers]
    reasons: list[Reason] = []
    for check in (*sources, *shared):
        for r in check.reasons:
            if all((r.code, r.subject) != (o.code, o.subject) for o in reasons):
                reasons.append(r)
    usable = [s for s in sources if not s.blocking]
    if not sources:
        status = "unavailable"
        reasons.insert(0, reason("not_configured", f"capability:{cap}", capability=cap))
    elif not usable:
        status = "unavailable"
    elif reasons or len(usable) < len(sources):
        status = "degraded"
    else:
        status = "available"
    return {
        "status": status,
        "reasons": [r.as_json() for r in reasons],
        "models": [m.name.removeprefix("model:") for m in models],
        "providers": [p.name.removeprefix("provider:") for p in providers],
        "usable": [s.name for s in usable],
        "checks": [c.name for c in (*sources, *shared)],
    }
