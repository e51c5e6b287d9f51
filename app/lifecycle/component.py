"""The lifecycle's lifespan component: every long-lived download resource, created and closed here.

On enter: load the manifest (a bad one stops start-up with a line naming file and field), open
the hash pool and the download ``httpx.AsyncClient``, load storage roots, resume interrupted
jobs, start the stale-partial sweeper. On exit: cancel running jobs as a *shutdown* (rows stay
active, partials stay on disk for the next start), then close the client and the pool.

Tests inject the HTTP transport, the free-space probe, the RNG and the sleep through the
constructor: ``LifecycleComponent(free_space=lambda path: 0)``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import httpx

from app.lifecycle.downloader import Downloader
from app.lifecycle.file_transport import FileTransport
from app.lifecycle.hashing import HashPool
from app.lifecycle.jobs import JobRepository
from app.lifecycle.manager import DownloadManager
from app.lifecycle.manifest import load_manifest
from app.lifecycle.progress import ProgressHub
from app.lifecycle.service import LifecycleService
from app.lifecycle.storage import FreeSpace, StorageRoots, disk_free
from app.lifecycle.transport import download_transport
from app.settings import DownloadSettings
from app.store.component import Store
from app.store.database import Database
from app.store.migrate import schema_status

log = logging.getLogger("keel.lifecycle")

USER_AGENT = "keel/0.1 (model downloader)"


_PROXY_VARIABLES = (
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
)


def download_client(
    settings: DownloadSettings, pool: HashPool, transport: httpx.AsyncBaseTransport | None = None
) -> httpx.AsyncClient:
    limits = httpx.Limits(
        max_connections=settings.max_concurrent + 2,
        max_keepalive_connections=settings.max_concurrent,
    )
    if transport is None and not any(os.environ.get(v) for v in _PROXY_VARIABLES):
        # httpx applies proxy variables only to its own transport; behind a proxy, use that.
        transport = download_transport(limits)
    # The read timeout is a backstop: the downloader's own stall watchdog fires first.
    timeout = httpx.Timeout(
        connect=settings.connect_timeout_s,
        read=settings.stall_s + 5.0,
        write=settings.connect_timeout_s,
        pool=settings.connect_timeout_s,
    )
    return httpx.AsyncClient(
        transport=transport,
        mounts={"file://": FileTransport(pool, settings.chunk_bytes)},
        timeout=timeout,
        limits=limits,
        headers={"Accept-Encoding": "identity", "User-Agent": USER_AGENT},
        follow_redirects=True,  # model hosts redirect to their CDN
        max_redirects=5,
    )


class LifecycleComponent:
    def __init__(
        self,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        free_space: FreeSpace | None = None,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        schema_poll_s: float = 2.0,
    ) -> None:
        self.transport = transport
        self.free_space = free_space or disk_free
        self.rng = rng
        self.sleep = sleep or asyncio.sleep
        self.schema_poll_s = schema_poll_s

    def __call__(self, store: Store) -> AbstractAsyncContextManager[LifecycleService]:
        return self._lifespan(store)

    @asynccontextmanager
    async def _lifespan(self, store: Store) -> AsyncIterator[LifecycleService]:
        core = store.core
        settings = core.settings
        ds = settings.downloads
        manifest = load_manifest(settings.models_manifest)
        pool = HashPool(ds.hash_threads, ds.chunk_bytes)
        client = download_client(ds, pool, self.transport)
        manager: DownloadManager | None = None
        background: list[asyncio.Task[None]] = []  # the reaper, or the wait for a migration
        try:
            jobs = JobRepository(store.db)
            storage = StorageRoots(store.db, settings.data_dir, self.free_space)
            hub = ProgressHub()
            downloader = Downloader(client, pool, ds, core.metrics, sleep=self.sleep, rng=self.rng)
            tasks = core.tasks

            def spawn(coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
                task: asyncio.Task[None] = tasks.spawn(coro, name=name)
                return task

            manager = DownloadManager(
                manifest=manifest,
                storage=storage,
                jobs=jobs,
                downloader=downloader,
                hub=hub,
                settings=ds,
                metrics=core.metrics,
                timeline=core.timeline,
                spawn=spawn,
            )
            service = LifecycleService(
                manager=manager,
                storage=storage,
                jobs=jobs,
                hub=hub,
                pool=pool,
                settings=ds,
                idempotency=store.idempotency,
            )
            running = manager

            async def start() -> None:
                await storage.load()
                await asyncio.to_thread(storage.default_root.mkdir, parents=True, exist_ok=True)
                await asyncio.to_thread(storage.mark_roots)
                running.outcomes = await jobs.latest_finished()
                await running.resume_unfinished()
                background.append(tasks.spawn(service.reap_forever(), name="lifecycle:reaper"))

            async def start_when_migrated() -> None:
                # A replica started before `keel migrate`: /readyz turns ready once the schema
                # is at head, and the lifecycle starts then (persisted roots, resumed jobs).
                # Polling on purpose: the migration runs in another process, nothing here
                # could set an Event for it.
                while not (await _schema_current(store.db)):  # noqa: ASYNC110
                    await asyncio.sleep(self.schema_poll_s)
                log.info("database migrated: starting downloads and the partial reaper")
                await start()

            if store.schema_error:
                log.warning("database not migrated: downloads resume once it is")
                background.append(
                    tasks.spawn(start_when_migrated(), name="lifecycle:wait-for-migration")
                )
            else:
                await start()
            yield service
        finally:
            for task in background:
                task.cancel()
            if manager is not None:
                await manager.shutdown()
            await client.aclose()
            await asyncio.to_thread(pool.shutdown)


async def _schema_current(db: Database) -> bool:
    try:
        return (await schema_status(db)).up_to_date
    except Exception:  # unreachable or busy: ask again at the next poll
        log.debug("schema check failed", exc_info=True)
        return False
