"""``python -m app.runtime.worker``: loads one GGUF with llama-cpp-python and serves it over the
line protocol of ``app/runtime/protocol.py`` on stdin/stdout.

Why a program of Keel's and not ``llama_cpp.server`` (docs/runtime.md): a fraction of the memory
(no ``logits_all``), no default that interrupts a running stream, five dependencies, and a
protocol that carries cancellation and load progress.

One generation runs at a time, in the main thread; a reader thread reads stdin beside it so a
``cancel`` stops the generation at the next token. The worker exits when stdin closes (Keel
went away) and asks the kernel to kill it if its parent dies (``PR_SET_PDEATHSIG``, also set by
the supervisor before exec). The protocol owns the real stdout; file descriptor 1 is pointed at
stderr so nothing llama.cpp prints can corrupt it.
"""

from __future__ import annotations

import ctypes
import os
import queue
import signal
import sys
import threading
from collections import deque
from collections.abc import Iterator
from typing import IO, Any

from app.runtime.protocol import decode, encode

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Linux only; elsewhere stdin EOF is the (slower) signal that Keel is gone."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def rss_bytes(pid: int | str = "self") -> int | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


class Worker:
    def __init__(self, out: IO[bytes]) -> None:
        self._out = out
        self._lock = threading.Lock()
        self._inbox: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=64)
        # Cancels may arrive before their generate leaves the inbox: remember the last few.
        self._cancelled: deque[str] = deque(maxlen=64)
        self._gone = threading.Event()
        self._llm: Any = None

    def send(self, message: dict[str, Any]) -> None:
        with self._lock:
            self._out.write(encode(message))
            self._out.flush()

    def read_stdin(self, stdin: IO[bytes]) -> None:
        for line in stdin:
            try:
                msg = decode(line)
            except ValueError:
                self.send({"ev": "error", "code": "bad_message", "message": "not a JSON object"})
                continue
            if msg.get("op") == "cancel":
                self._cancelled.append(str(msg.get("id")))
                continue
            self._inbox.put(msg)
        self._gone.set()  # Keel is gone: stop whatever runs
        self._inbox.put(None)

    def serve(self) -> int:
        while True:
            msg = self._inbox.get()
            if msg is None or msg.get("op") == "shutdown":
                return 0
            op = msg.get("op")
            try:
                if op == "load":
                    if not self._load(msg):
                        return 1
                elif op == "ping":
                    self.send({"ev": "pong", "id": msg.get("id"), "rss_bytes": rss_bytes()})
                elif op == "generate":
                    self._generate(msg)
                elif op == "embed":
                    self._embed(msg)
                else:
                    self.send({"ev": "error", "code": "bad_message", "message": f"op {op!r}"})
            except Exception as exc:  # one bad request must not take the model down
                self.send(
                    {"ev": "error", "id": msg.get("id"), "code": "failed", "message": repr(exc)}
                )

    def _load(self, msg: dict[str, Any]) -> bool:
        self.send({"ev": "progress", "phase": "importing"})
        import llama_cpp

        self.send({"ev": "progress", "phase": "reading"})
        try:
            self._llm = llama_cpp.Llama(
                model_path=str(msg["path"]),
                n_ctx=int(msg.get("n_ctx", 2048)),
                n_threads=int(msg.get("n_threads", 1)),
                n_threads_batch=int(msg.get("n_threads", 1)),
                chat_format=msg.get("chat_format") or None,
                embedding=bool(msg.get("embedding", False)),
                # verbose: llama.cpp's log (the real reason a file fails) goes to stderr,
                # where the supervisor keeps its tail; without it only "Failed to load model".
                verbose=True,
            )
        except Exception as exc:
            self.send({"ev": "error", "code": "load_failed", "message": str(exc)[:500]})
            return False
        self.send({"ev": "loaded", "rss_bytes": rss_bytes()})
        return True

    def _generate(self, msg: dict[str, Any]) -> None:
        gen_id = str(msg["id"])
        if self._llm is None:
            self.send({"ev": "error", "id": gen_id, "code": "not_loaded", "message": "no model"})
            return
        params = _sampling(msg.get("params") or {})
        finish: str | None = None
        completion_tokens = 0
        chunks: Iterator[Any] = self._llm.create_chat_completion(
            messages=msg["messages"], stream=True, **params
        )
        try:
            for chunk in chunks:
                if self._gone.is_set() or gen_id in self._cancelled:
                    finish = "cancelled"
                    break
                choice = chunk["choices"][0]
                text = choice.get("delta", {}).get("content")
                if text:
                    completion_tokens += 1
                    self.send({"ev": "token", "id": gen_id, "text": text})
                if choice.get("finish_reason"):
                    finish = choice["finish_reason"]
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
        # llama.cpp's context holds the prompt plus what was generated.
        prompt_tokens = max(0, int(self._llm.n_tokens) - completion_tokens)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}
        self.send({"ev": "done", "id": gen_id, "finish_reason": finish or "stop", "usage": usage})

    def _embed(self, msg: dict[str, Any]) -> None:
        inputs = [str(x) for x in msg.get("input", [])]
        result = self._llm.create_embedding(inputs)
        data = [item["embedding"] for item in result["data"]]
        usage = {"prompt_tokens": int(result.get("usage", {}).get("prompt_tokens", 0))}
        self.send({"ev": "embedding", "id": msg.get("id"), "data": data, "usage": usage})


def _sampling(params: dict[str, Any]) -> dict[str, Any]:
    """OpenAI sampling fields -> create_chat_completion keywords; unknown ones are dropped."""
    out: dict[str, Any] = {}
    for key in ("temperature", "top_p", "max_tokens", "seed", "presence_penalty"):
        if params.get(key) is not None:
            out[key] = params[key]
    if params.get("frequency_penalty") is not None:
        out["frequency_penalty"] = params["frequency_penalty"]
    stop = params.get("stop")
    if isinstance(stop, str):
        out["stop"] = [stop]
    elif isinstance(stop, list):
        out["stop"] = [str(s) for s in stop][:4]
    return out


def main() -> int:
    die_with_parent()
    # The protocol keeps the real stdout; fd 1 becomes stderr for everything else.
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    worker = Worker(out)
    reader = threading.Thread(
        target=worker.read_stdin, args=(sys.stdin.buffer,), name="stdin", daemon=True
    )
    reader.start()
    code = worker.serve()
    out.flush()
    # os._exit: llama.cpp's destructors and the daemon reader need not run on the way out.
    os._exit(code)


if __name__ == "__main__":
    main()
