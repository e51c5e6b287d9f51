"""The baseline Keel is measured against: a bare pass-through with no features at all.

Pure ASGI, one long-lived aiohttp session, served by the same uvicorn (uvloop, httptools, one
worker) as Keel. It forwards the request body to the upstream and relays the answer, streamed
or not. Whatever Keel costs beyond this is Keel's own work (routing, guard, metrics, logs).

Run: python -m bench.proxy_overhead.bare PORT UPSTREAM_BASE_URL
"""

from __future__ import annotations

import sys
from typing import Any

import aiohttp
import uvicorn

Scope = dict[str, Any]


class PassThrough:
    def __init__(self, upstream: str) -> None:
        self.url = upstream.rstrip("/") + "/chat/completions"
        self.session: aiohttp.ClientSession | None = None

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    self.session = aiohttp.ClientSession(
                        connector=aiohttp.TCPConnector(limit=256, ttl_dns_cache=None)
                    )
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    if self.session is not None:
                        await self.session.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["method"] == "GET":  # liveness for the bench driver
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        assert self.session is not None
        async with self.session.post(
            self.url, data=body, headers={"content-type": "application/json"}
        ) as upstream:
            content_type = upstream.headers.get("content-type", "application/json")
            await send(
                {
                    "type": "http.response.start",
                    "status": upstream.status,
                    "headers": [(b"content-type", content_type.encode())],
                }
            )
            if content_type.startswith("text/event-stream"):
                async for chunk in upstream.content.iter_any():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b""})
            else:
                await send({"type": "http.response.body", "body": await upstream.read()})


if __name__ == "__main__":
    port, upstream = int(sys.argv[1]), sys.argv[2]
    uvicorn.run(
        PassThrough(upstream),
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        proxy_headers=False,  # as keel serve
    )
