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
from app.settings import DownloadSettings, Settings

log = logging.getLogger("keel.lifecycle")

STATE_KEY = "lifecycle"
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
    ) -> None:
        self.transport = transport
        self.free_space = free_space or disk_free
        self.rng = rng
        self.sleep = sleep or asyncio.sleep

    def __call__(self, state: dict[str, Any]) -> AbstractAsyncContextManager[None]:
        return self._lifespan(state)

    @asynccontextmanager
    async def _lifespan(self, state: dict[str, Any]) -> AsyncIterator[None]:
        settings: Settings = state["settings"]
        ds = settings.downloads
        manifest = load_manifest(settings.models_manifest)
        pool = HashPool(ds.hash_threads, ds.chunk_bytes)
        client = download_client(ds, pool, self.transport)
        manager: DownloadManager | None = None
        reaper: asyncio.Task[None] | None = None
        try:
            jobs = JobRepository(state["db"])
            storage = StorageRoots(state["db"], settings.data_dir, self.free_space)
            hub = ProgressHub()
            downloader = Downloader(
                client, pool, ds, state["metrics"], sleep=self.sleep, rng=self.rng
            )
            tasks = state["tasks"]

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
                metrics=state["metrics"],
                timeline=state["timeline"],
                spawn=spawn,
            )
            service = LifecycleService(
                manager=manager, storage=storage, jobs=jobs, hub=hub, pool=pool, settings=ds
            )
            state[STATE_KEY] = service
            state["running_jobs"] = manager.running_jobs
            if state.get("schema_error"):
                log.warning("database not migrated: downloads are not resumed")
            else:
                await storage.load()
                await asyncio.to_thread(storage.default_root.mkdir, parents=True, exist_ok=True)
                await asyncio.to_thread(storage.mark_roots)
                manager.outcomes = await jobs.latest_finished()
                await manager.resume_unfinished()
                reaper = tasks.spawn(service.reap_forever(), name="lifecycle:reaper")
            yield
        finally:
            if reaper is not None:
                reaper.cancel()
            if manager is not None:
                await manager.shutdown()
            await client.aclose()
            await asyncio.to_thread(pool.shutdown)
