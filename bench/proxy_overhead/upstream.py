"""A static OpenAI-compatible upstream for benchmarks: one canned answer, keep-alive, no parsing.

A body asking for ``"stream": true`` gets a chunked SSE answer of ``STREAM_CHUNKS`` chunks
followed by ``data: [DONE]``, written as fast as the socket takes them.

Run: python -m bench.proxy_overhead.upstream PORT
"""

from __future__ import annotations

import asyncio
import json
import re
import sys

BODY = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "m",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
).encode()
RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
    b"content-length: " + str(len(BODY)).encode() + b"\r\n\r\n" + BODY
)

STREAM_CHUNKS = 200
_CHUNK = (
    b"data: "
    + json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": "m",
            "choices": [{"index": 0, "delta": {"content": "ok "}, "finish_reason": None}],
        }
    ).encode()
    + b"\n\n"
)
_STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
)
_WANTS_STREAM = re.compile(rb'"stream"\s*:\s*true')


def _chunked(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


async def _stream(writer: asyncio.StreamWriter) -> None:
    writer.write(_STREAM_HEAD)
    for _ in range(STREAM_CHUNKS):
        writer.write(_chunked(_CHUNK))
        await writer.drain()
    writer.write(_chunked(b"data: [DONE]\n\n") + b"0\r\n\r\n")
    await writer.drain()


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            body = await reader.readexactly(length) if length else b""
            if _WANTS_STREAM.search(body):
                await _stream(writer)
                continue
            writer.write(RESPONSE)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main(port: int) -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main(int(sys.argv[1])))
