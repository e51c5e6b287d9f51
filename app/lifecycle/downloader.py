"""Fetch one manifest file into place: resumable, verified, atomic (DESIGN §6).

One stream per file into ``<file>.partial`` (+ JSON sidecar). A resume sends ``Range`` and
``If-Range``; the answer decides: 206 with a matching ``Content-Range`` appends, 200 means the
server ignored the range (or the file changed) so the partial is truncated and this very body
is used from byte 0, 416 means the partial may already be complete: its size is checked, then
it is verified or restarted. SHA-256 is computed while streaming (the prefix of a resumed
partial is re-hashed first, in the hash pool). Only a file whose size and digest match the
manifest is fsynced, renamed into its final path and the directory fsynced: a file is never in
its final path unverified.

Failed attempts go through ``DownloadRetryPolicy``; the last failure is raised as
``DownloadFailure``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from app.lifecycle.answers import (
    body_stream,
    check_content_range,
    check_length,
    content_range,
    disk_failure,
    network_reason,
    status_failure,
)
from app.lifecycle.file_transport import request_url
from app.lifecycle.hashing import Hasher, HashPool
from app.lifecycle.manifest import FileSpec
from app.lifecycle.partial import PartialPaths, Sidecar, open_partial, promote
from app.lifecycle.retry_policy import DownloadFailure, DownloadRetryPolicy, FailureKind
from app.lifecycle.writer import BatchWriter
from app.observability.metrics import Metrics
from app.settings import DownloadSettings

log = logging.getLogger("keel.downloads")

_FLUSH_IDLE_S = 0.5  # a slow stream still reaches the disk this often


@dataclass(frozen=True, slots=True)
class FileProgress:
    phase: str  # downloading | verifying | promoting
    file: str
    bytes: int
    total: int
    attempt: int
    resumed_from: int
    bytes_per_s: float


Reporter = Callable[[FileProgress], Awaitable[None]]
Sleeper = Callable[[float], Awaitable[None]]


@dataclass(slots=True)
class _Carry:
    """The hash of the partial's first ``offset`` bytes, kept between attempts in-process."""

    offset: int
    hasher: Hasher


@dataclass(slots=True)
class _AttemptState:
    attempt: int = 0
    carry: _Carry | None = None


class Downloader:
    def __init__(
        self,
        client: httpx.AsyncClient,
        pool: HashPool,
        settings: DownloadSettings,
        metrics: Metrics,
        *,
        sleep: Sleeper = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.client = client
        self.pool = pool
        self.settings = settings
        self.metrics = metrics
        self.sleep = sleep
        self.rng = rng or random.Random()

    async def fetch(self, model_id: str, spec: FileSpec, final: Path, report: Reporter) -> None:
        """Download, verify and install ``spec`` at ``final``; raise the last DownloadFailure."""
        s = self.settings
        paths = PartialPaths(final)
        policy = DownloadRetryPolicy(
            retries=s.retries,
            network_retries=s.network_retries,
            base_delay_s=s.base_delay_s,
            max_delay_s=s.max_delay_s,
            rng=self.rng,
        )
        state = _AttemptState()
        while True:
            state.attempt += 1
            try:
                await self._attempt(model_id, spec, paths, state, report)
                break
            except DownloadFailure as failure:
                self.metrics.download_failures.labels(model=model_id, code=failure.reason).inc()
                if failure.restart:
                    paths.remove()
                    state.carry = None
                decision = policy.decide(failure)
                log.info(
                    "download attempt failed",
                    extra={
                        "model": model_id,
                        "file": spec.name,
                        "attempt": state.attempt,
                        "reason": failure.reason,
                        "retry": decision.retry,
                        "fresh": decision.fresh,
                    },
                )
                if not decision.retry:
                    failure.attempts = state.attempt
                    raise
                if decision.fresh:
                    paths.remove()
                    state.carry = None
                await self.sleep(decision.delay)
        await report(
            FileProgress("promoting", spec.name, spec.size, spec.size, state.attempt, 0, 0.0)
        )
        try:
            await self.pool.run(promote, paths)
        except OSError as exc:
            raise disk_failure(exc) from exc

    async def _attempt(
        self,
        model_id: str,
        spec: FileSpec,
        paths: PartialPaths,
        state: _AttemptState,
        report: Reporter,
    ) -> None:
        attempt = state.attempt
        sidecar, offset = await self.pool.run(lambda: (paths.read_sidecar(), paths.size()))
        if sidecar is None or not sidecar.matches(spec) or offset > spec.size:
            if offset or sidecar is not None:
                paths.remove()
            offset, state.carry = 0, None
            sidecar = Sidecar(url=spec.url, sha256=spec.sha256, size=spec.size)
        if state.carry is not None and state.carry.offset != offset:
            state.carry = None
        resumed = False
        try:
            if offset and state.carry is None:
                # Re-hash the prefix before asking for the rest: the server is not kept waiting.
                await report(
                    FileProgress("downloading", spec.name, offset, spec.size, attempt, offset, 0.0)
                )
                state.carry = _Carry(offset, await self.pool.hash_file(paths.partial, offset))
            headers = {"Accept-Encoding": "identity"}
            if offset:
                headers["Range"] = f"bytes={offset}-"
                validator = sidecar.if_range()
                if validator:
                    headers["If-Range"] = validator
            async with self.client.stream("GET", request_url(spec.url), headers=headers) as resp:
                status = resp.status_code
                if offset and status == 416:
                    resumed = True
                    await self._complete_partial(model_id, spec, paths, state, offset, resp, report)
                    return
                if offset and status == 206:
                    check_content_range(resp, offset, spec.size)
                    resumed = True
                    self.metrics.download_resumes.labels(model=model_id).inc()
                elif status == 200:
                    if offset:
                        log.info(
                            "server ignored the range; restarting from byte 0",
                            extra={"model": model_id, "file": spec.name},
                        )
                    offset, state.carry = 0, None
                    check_length(resp, spec.size)
                else:
                    raise status_failure(resp)
                sidecar.etag = resp.headers.get("etag")
                sidecar.last_modified = resp.headers.get("last-modified")
                sidecar.bytes = offset
                hasher = state.carry.hasher.copy() if state.carry else hashlib.sha256()
                await self.pool.run(paths.write_sidecar, sidecar)
                fd = await self.pool.run(open_partial, paths.partial, offset)
                writer = BatchWriter(
                    self.pool.strand(), fd, hasher, offset, self.settings.write_queue_depth
                )
                try:
                    await self._stream(
                        model_id, resp, writer, spec, paths, sidecar, attempt, offset, report
                    )
                finally:
                    try:
                        await writer.close()
                    finally:
                        # What is both on disk and hashed seeds the next attempt.
                        state.carry = (
                            None if writer.failed else _Carry(writer.hashed, writer.hasher)
                        )
            await self._verify(spec, writer.hashed, writer.hasher, attempt, report)
        except DownloadFailure as failure:
            failure.resumed = resumed
            raise
        except httpx.TransportError as exc:
            net = DownloadFailure(
                FailureKind.NETWORK,
                network_reason(exc),
                "The connection to the download server failed.",
            )
            net.resumed = resumed
            raise net from exc
        except OSError as exc:
            disk = disk_failure(exc)
            disk.resumed = resumed
            raise disk from exc

    async def _complete_partial(
        self,
        model_id: str,
        spec: FileSpec,
        paths: PartialPaths,
        state: _AttemptState,
        offset: int,
        resp: httpx.Response,
        report: Reporter,
    ) -> None:
        """416 to a resume: if the partial already holds the whole file, verify it in place."""
        total = content_range(resp.headers.get("content-range", ""))[2]
        if offset != spec.size or total not in (None, spec.size):
            raise DownloadFailure(
                FailureKind.HTTP,
                "range_not_satisfiable",
                "The server could not resume the download.",
                restart=True,
            )
        self.metrics.download_resumes.labels(model=model_id).inc()
        hasher = (
            state.carry.hasher if state.carry else await self.pool.hash_file(paths.partial, offset)
        )
        await self._verify(spec, offset, hasher, state.attempt, report)

    async def _verify(
        self, spec: FileSpec, size: int, hasher: Hasher, attempt: int, report: Reporter
    ) -> None:
        await report(FileProgress("verifying", spec.name, size, spec.size, attempt, 0, 0.0))
        if size != spec.size:
            raise DownloadFailure(
                FailureKind.NETWORK,
                "short_body",
                "The download ended before the whole file arrived.",
            )
        if hasher.hexdigest() != spec.sha256:
            raise DownloadFailure(
                FailureKind.FINAL,
                "checksum_mismatch",
                "The downloaded file does not match the manifest's SHA-256.",
                code="checksum_mismatch",
                restart=True,
            )

    async def _stream(
        self,
        model_id: str,
        resp: httpx.Response,
        writer: BatchWriter,
        spec: FileSpec,
        paths: PartialPaths,
        sidecar: Sidecar,
        attempt: int,
        offset: int,
        report: Reporter,
    ) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        limit = spec.size - offset
        received = buffered = 0
        batch: list[bytes] = []
        started = last_kick = last_flush = last_report = last_persist = loop.time()
        kick_every = s.stall_s / 4
        counted = 0

        def save(done: int) -> None:
            sidecar.bytes = done
            with contextlib.suppress(OSError):
                paths.write_sidecar(sidecar)

        try:
            async with asyncio.timeout(s.stall_s) as watchdog:
                async for chunk in body_stream(resp):
                    n = len(chunk)
                    received += n
                    if received > limit:
                        raise DownloadFailure(
                            FailureKind.FINAL,
                            "size_mismatch",
                            "The server sent more bytes than the manifest's size.",
                            code="checksum_mismatch",
                            restart=True,
                        )
                    batch.append(chunk)
                    buffered += n
                    now = loop.time()
                    if buffered >= s.write_batch_bytes or now - last_flush >= _FLUSH_IDLE_S:
                        await writer.write(batch)
                        batch, buffered, last_flush = [], 0, now
                    if now - last_kick >= kick_every:
                        watchdog.reschedule(now + s.stall_s)
                        last_kick = now
                    if now - last_report >= s.progress_interval_s:
                        last_report = now
                        self.metrics.download_bytes.labels(model=model_id).inc(received - counted)
                        counted = received
                        rate = received / max(now - started, 1e-6)
                        await report(
                            FileProgress(
                                "downloading",
                                spec.name,
                                offset + received,
                                spec.size,
                                attempt,
                                offset,
                                rate,
                            )
                        )
                    if now - last_persist >= s.persist_interval_s:
                        last_persist = now
                        writer.checkpoint(save)
                if batch:
                    await writer.write(batch)
                    batch = []
                writer.checkpoint(save)
                await writer.drain()
        except BaseException as exc:
            # Bytes that arrived before a drop, stall or shutdown are a valid prefix: keep them.
            if not isinstance(exc, DownloadFailure):
                writer.push(batch)
            if isinstance(exc, TimeoutError):
                raise DownloadFailure(
                    FailureKind.NETWORK, "stalled", f"No data arrived for {s.stall_s:g} s."
                ) from None
            if isinstance(exc, OSError):
                raise disk_failure(exc) from exc
            raise
        finally:
            self.metrics.download_bytes.labels(model=model_id).inc(received - counted)
        if received < limit:
            raise DownloadFailure(
                FailureKind.NETWORK,
                "short_body",
                "The download ended before the whole file arrived.",
            )
        rate = received / max(loop.time() - started, 1e-6)
        await report(
            FileProgress("downloading", spec.name, spec.size, spec.size, attempt, offset, rate)
        )
