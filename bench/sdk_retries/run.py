"""Retry multiplication: the official SDK (defaults: max_retries=2) against Keel (defaults:
max_attempts=3) in front of a provider that always answers 503.

Counts provider calls per SDK call and the time each SDK call takes to fail, for the first
call (breaker closed) and for the next ones, twice in one run: as Keel answers, and with the
``x-should-retry`` header removed before the SDK sees it (the behaviour before Keel sent it).
Run: ``python -m bench.sdk_retries.run``.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import httpx
import openai

from app.main import create_app
from app.settings import Settings
from tests.fakes.servers import ServerThread
from tests.fakes.upstream import FakeUpstream

CALLS = 6


def _strip_should_retry(response: httpx.Response) -> None:
    del response.headers["x-should-retry"]


def main() -> None:
    for label, hooks in (("as served", []), ("x-should-retry removed", [_strip_should_retry])):
        print(f"-- {label}")
        run(openai.DefaultHttpxClient(event_hooks={"response": hooks}))


def run(http_client: openai.DefaultHttpxClient) -> None:
    with FakeUpstream() as upstream, tempfile.TemporaryDirectory() as tmp:
        upstream.faults.down = True
        settings = Settings(
            data_dir=Path(tmp),
            log_level="ERROR",
            providers={"cloud": {"base_url": upstream.base_url, "models": ["small"]}},
            routes={"chat": ["cloud/small"]},
        )
        with ServerThread(create_app(settings)) as keel:
            client = openai.OpenAI(
                base_url=keel.url + "/v1", api_key="unused", http_client=http_client
            )
            for i in range(CALLS):
                before, started = upstream.calls, time.perf_counter()
                try:
                    client.chat.completions.create(
                        model="chat", messages=[{"role": "user", "content": "hi"}]
                    )
                except openai.APIStatusError as exc:
                    code = exc.code or exc.status_code
                else:
                    code = "ok"
                took = time.perf_counter() - started
                print(
                    f"call {i + 1}: {upstream.calls - before} provider calls, "
                    f"failed in {took:.2f} s ({code})"
                )
            client.close()
    sys.stdout.flush()


if __name__ == "__main__":
    main()
