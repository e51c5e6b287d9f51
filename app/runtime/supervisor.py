"""One worker subprocess, supervised: spawn, load with a whole and a stall timeout, stream a
generation with a per-token stall timeout, cancel, stop (shutdown, SIGTERM, SIGKILL, reap).

Modelled on Ollama's runner supervision: a task waits on the child's exit, so a crash is an
event, not a poll; any load progress or stderr output resets the load stall timer; the last
8 KiB of stderr travel with every error. Nothing outlives Keel: the child asks the kernel for
SIGKILL when its parent dies (``PR_SET_PDEATHSIG``, set between fork and exec) and exits on
stdin EOF; ``stop`` always reaps.

Timeouts here are real time: they bound a real process. The decisions about what a failure
means for the model (state, breaker, eviction) live in the pure state machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import Any

from app.runtime.protocol import MAX_LINE_BYTES, decode, encode
from app.runtime.worker import die_with_parent, rss_bytes

log = logging.getLogger("keel.runtime.supervisor")

STDERR_TAIL_BYTES = 8 * 1024
_INBOX_SIZE = 1024  # bounded; a full inbox stops the reader, the pipe stops the worker


class WorkerError(Exception):
    """The worker failed. ``code`` is bounded (metrics label); ``stderr`` its last 8 KiB."""

    def __init__(self, code: str, message: str, stderr: str = "") -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.stderr = stderr


class StderrTail:
    def __init__(self, limit: int = STDERR_TAIL_BYTES) -> None:
        self._buf = bytearray()
        self._limit = limit

    def add(self, chunk: bytes) -> None:
        self._buf += chunk
        if len(self._buf) > self._limit:
            del self._buf[: len(self._buf) - self._limit]

    def text(self) -> str:
        return self._buf.decode("utf-8", errors="replace")


class WorkerProcess:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self._proc = proc
        self.pid = proc.pid
        self.tail = StderrTail()
        self.last_activity = time.monotonic()
        self.exited = asyncio.Event()
        self._activity = asyncio.Event()
        self._inbox: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(_INBOX_SIZE)
        self._exit_listeners: list[Callable[[WorkerProcess], None]] = []
        self._stopping = False
        self._tasks = [
            asyncio.create_task(self._read_stdout(), name=f"worker:{self.pid}:stdout"),
            asyncio.create_task(self._read_stderr(), name=f"worker:{self.pid}:stderr"),
            asyncio.create_task(self._wait_exit(), name=f"worker:{self.pid}:exit"),
        ]

    @classmethod
    async def spawn(cls, argv: Sequence[str], env: dict[str, str] | None = None) -> WorkerProcess:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            limit=MAX_LINE_BYTES,
            # Its own session: a terminal's Ctrl-C reaches Keel, which stops workers in order.
            start_new_session=True,
            preexec_fn=die_with_parent,  # prctl only; no locks taken
        )
        log.info("worker spawned", extra={"pid": proc.pid})
        return cls(proc)

    # -- observing -----------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return not self.exited.is_set()

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode

    @property
    def stopping(self) -> bool:
        return self._stopping

    def rss_bytes(self) -> int | None:
        return rss_bytes(self.pid) if self.alive else None

    def stderr_tail(self) -> str:
        return self.tail.text()

    def on_exit(self, listener: Callable[[WorkerProcess], None]) -> None:
        self._exit_listeners.append(listener)

    # -- protocol ------------------------------------------------------------------------

    def send(self, message: dict[str, Any]) -> None:
        stdin = self._proc.stdin
        if stdin is None or stdin.is_closing() or not self.alive:
            raise self._crashed("the worker is not running")
        stdin.write(encode(message))

    async def load(
        self,
        request: dict[str, Any],
        *,
        timeout_s: float,
        stall_s: float,
        on_progress: Callable[[str], None] | None = None,
    ) -> dict[str, Any]:
        """Send ``load`` and wait for ``loaded``. Raises ``WorkerError`` with code
        ``load_timeout``, ``load_stall``, ``load_failed`` or ``worker_crashed``."""
        started = time.monotonic()
        self.last_activity = started
        self.send({"op": "load", **request})
        while True:
            now = time.monotonic()
            if now - started >= timeout_s:
                raise WorkerError("load_timeout", f"not ready after {timeout_s:g} s", self._t())
            if now - self.last_activity >= stall_s:
                raise WorkerError("load_stall", f"no progress for {stall_s:g} s", self._t())
            self._activity.clear()
            if self._inbox.empty():
                wait = min(started + timeout_s, self.last_activity + stall_s) - now
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._activity.wait(), max(wait, 0.001))
                continue
            msg = self._inbox.get_nowait()
            if msg is None:
                raise self._crashed("the worker exited while loading", code="worker_crashed")
            ev = msg.get("ev")
            if ev == "loaded":
                return msg
            if ev == "progress" and on_progress is not None:
                on_progress(str(msg.get("phase", "")))
            elif ev == "error":
                raise WorkerError("load_failed", str(msg.get("message", ""))[:500], self._t())

    async def generate(
        self, gen_id: str, request: dict[str, Any], *, token_stall_s: float
    ) -> AsyncGenerator[dict[str, Any], None]:
        """Yield ``token`` messages, then the final ``done``. Closing the iterator early
        cancels the generation and waits until the worker is idle again (or kills it)."""
        self.send({"op": "generate", "id": gen_id, **request})
        finished = False
        try:
            while True:
                msg = await self._next(token_stall_s)
                if msg.get("id") != gen_id:
                    continue  # the tail of an earlier, cancelled generation
                ev = msg.get("ev")
                if ev == "token":
                    yield msg
                elif ev in ("done", "embedding"):
                    finished = True
                    yield msg
                    return
                elif ev == "error":
                    finished = True
                    raise WorkerError("generate_failed", str(msg.get("message", ""))[:500])
        except WorkerError as exc:
            finished = exc.code == "worker_crashed"  # nothing left to cancel
            raise
        finally:
            if not finished and self.alive:
                await self._cancel_and_drain(gen_id, token_stall_s)

    async def _cancel_and_drain(self, gen_id: str, grace_s: float) -> None:
        """Cancel and read up to its end, so the next request starts on an idle worker. A
        worker that ignores the cancel for ``grace_s`` is killed: the generation must stop."""
        try:
            self.send({"op": "cancel", "id": gen_id})
            async with asyncio.timeout(grace_s):
                while True:
                    msg = await self._next(grace_s)
                    if msg.get("id") == gen_id and msg.get("ev") in ("done", "error"):
                        return
        except (WorkerError, TimeoutError):
            log.warning("worker ignored a cancel; killing it", extra={"pid": self.pid})
            await self.kill()

    async def _next(self, stall_s: float) -> dict[str, Any]:
        try:
            msg = await asyncio.wait_for(self._inbox.get(), stall_s)
        except TimeoutError:
            raise WorkerError("token_stall", f"no output for {stall_s:g} s", self._t()) from None
        if msg is None:
            self._inbox.put_nowait(None)  # every later reader sees the end too
            raise self._crashed("the worker exited")
        return msg

    # -- stopping ------------------------------------------------------------------------

    async def stop(self, grace_s: float) -> None:
        """``shutdown`` + stdin EOF, then SIGTERM after ``grace_s``, then SIGKILL; reaped."""
        self._stopping = True
        if self.alive:
            with contextlib.suppress(WorkerError, OSError):
                self.send({"op": "shutdown"})
            stdin = self._proc.stdin
            if stdin is not None:
                stdin.close()
            if not await self._wait(grace_s):
                self._signal(signal.SIGTERM)
                if not await self._wait(min(grace_s, 2.0)):
                    self._signal(signal.SIGKILL)
        await self._reap()

    async def kill(self) -> None:
        """SIGKILL and reap. Unlike ``stop`` this reads as a crash to exit listeners: the
        worker misbehaved (ignored a cancel, stalled) and its model must reload."""
        self._signal(signal.SIGKILL)
        await self._reap()

    async def _reap(self) -> None:
        await self._proc.wait()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _wait(self, seconds: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.exited.wait(), seconds)
        return self.exited.is_set()

    def _signal(self, sig: int) -> None:
        if self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    # -- readers -------------------------------------------------------------------------

    def _touch(self) -> None:
        self.last_activity = time.monotonic()
        self._activity.set()

    async def _read_stdout(self) -> None:
        assert self._proc.stdout is not None
        try:
            while line := await self._proc.stdout.readline():
                try:
                    msg = decode(line)
                except ValueError:
                    self.tail.add(b"[keel] unparsable protocol line from worker\n")
                    continue
                await self._inbox.put(msg)
                self._touch()
        except (ValueError, OSError):  # an over-long line or a broken pipe ends the protocol
            log.warning("worker stdout unreadable", extra={"pid": self.pid})
        finally:
            with contextlib.suppress(asyncio.QueueFull):
                self._inbox.put_nowait(None)
            self._touch()

    async def _read_stderr(self) -> None:
        assert self._proc.stderr is not None
        with contextlib.suppress(OSError):
            while chunk := await self._proc.stderr.read(4096):
                self.tail.add(chunk)
                self._touch()

    async def _wait_exit(self) -> None:
        code = await self._proc.wait()
        self.exited.set()
        if not self._stopping:
            log.warning(
                "worker exited", extra={"pid": self.pid, "exit_code": code, "stderr": self._t()}
            )
        for listener in list(self._exit_listeners):
            try:
                listener(self)
            except Exception:
                log.exception("worker exit listener failed")

    def _t(self) -> str:
        return self.tail.text()

    def _crashed(self, message: str, *, code: str = "worker_crashed") -> WorkerError:
        status = self._proc.returncode
        suffix = f" (exit status {status})" if status is not None else ""
        return WorkerError(code, message + suffix, self._t())
