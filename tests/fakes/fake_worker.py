"""A scriptable stand-in for ``app.runtime.worker``: same line protocol, no model.

``python tests/fakes/fake_worker.py '<json script>'``; script keys (all optional):

    load: "ok" | "hang" | "crash" | "fail" | "slow"   (slow: progress every 50 ms for load_s)
    load_s: seconds a slow load takes (default 0.5)
    tokens: tokens per generation (default 5; max_tokens lowers it); token_delay_s: gap (0.01)
    crash_after: exit 9 after this many tokens      stall_after: go silent after this many
    ignore_cancel: keep generating after a cancel    rss_bytes: reported after load
    exit_on_eof: false ignores stdin EOF and shutdown (the supervisor must then signal it)
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections import deque
from typing import Any

script: dict[str, Any] = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
out_lock = threading.Lock()
cancelled: deque[str] = deque(maxlen=64)
inbox: list[dict[str, Any] | None] = []
inbox_cv = threading.Condition()


def send(msg: dict[str, Any]) -> None:
    with out_lock:
        sys.stdout.write(json.dumps(msg) + "\n")
        sys.stdout.flush()


def reader() -> None:
    for line in sys.stdin:
        msg = json.loads(line)
        if msg.get("op") == "cancel":
            cancelled.append(msg["id"])
            continue
        with inbox_cv:
            inbox.append(msg)
            inbox_cv.notify()
    if script.get("exit_on_eof", True):
        with inbox_cv:
            inbox.append(None)
            inbox_cv.notify()


def load() -> None:
    mode = script.get("load", "ok")
    sys.stderr.write("fake: loading\n")
    sys.stderr.flush()
    if mode == "hang":
        while True:
            time.sleep(3600)
    if mode == "crash":
        sys.stderr.write("fake: corrupted tensor data, aborting\n")
        sys.stderr.flush()
        os._exit(3)
    if mode == "fail":
        send({"ev": "error", "code": "load_failed", "message": "Failed to load model"})
        os._exit(1)
    if mode == "slow":
        end = time.monotonic() + float(script.get("load_s", 0.5))
        while time.monotonic() < end:
            send({"ev": "progress", "phase": "reading"})
            time.sleep(0.05)
    send({"ev": "loaded", "rss_bytes": script.get("rss_bytes", 50_000_000)})


def generate(msg: dict[str, Any]) -> None:
    gen_id = msg["id"]
    n = int(script.get("tokens", 5))
    limit = (msg.get("params") or {}).get("max_tokens")
    if limit is not None:
        n = min(n, int(limit))
    delay = float(script.get("token_delay_s", 0.01))
    for i in range(n):
        if gen_id in cancelled and not script.get("ignore_cancel"):
            send({"ev": "done", "id": gen_id, "finish_reason": "cancelled", "usage": usage(i)})
            return
        if script.get("crash_after") == i:
            os._exit(9)
        if script.get("stall_after") == i:
            while True:
                time.sleep(3600)
        send({"ev": "token", "id": gen_id, "text": f"tok{i} "})
        time.sleep(delay)
    send({"ev": "done", "id": gen_id, "finish_reason": "length", "usage": usage(n)})


def usage(completion: int) -> dict[str, int]:
    return {"prompt_tokens": 7, "completion_tokens": completion}


def main() -> None:
    threading.Thread(target=reader, daemon=True).start()
    while True:
        with inbox_cv:
            while not inbox:
                inbox_cv.wait()
            msg = inbox.pop(0)
        if msg is None:
            os._exit(0)
        if msg.get("op") == "shutdown" and script.get("exit_on_eof", True):
            os._exit(0)
        op = msg.get("op")
        if op == "load":
            load()
        elif op == "ping":
            send({"ev": "pong", "id": msg.get("id")})
        elif op == "generate":
            generate(msg)
        elif op == "embed":
            data = [[0.1, 0.2, 0.3] for _ in msg.get("input", [])]
            send({"ev": "embedding", "id": msg["id"], "data": data, "usage": usage(0)})


if __name__ == "__main__":
    main()
