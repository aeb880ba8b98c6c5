"""The app that tests/test_trio.py serves with ``hypercorn --worker-class trio``.

No asyncio here: every wait goes through anyio, so the app runs on trio and
sse_fast takes its generic writer (``_writer_anyio``). Streaming endpoints take
``key``; what happened to the stream (iterator ``finally`` ran, close handler
called, exception left the response) is recorded in ``STATE[key]`` and read
back with ``GET /status?key=...``.
"""

from __future__ import annotations

import os

import anyio
import sniffio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import sse_fast
from sse_fast import EventSourceResponse

# the same per-key record of what happened to a stream as the uvicorn test app (importing it
# runs nothing on asyncio: its endpoints are not routed here)
from .server_app import STATE, Recording, _rec


async def status(request: Request):
    return JSONResponse({"state": STATE.get(request.query_params["key"]), "pid": os.getpid(),
                         "impl": sse_fast.IMPLEMENTATION, "library": sniffio.current_async_library()})


async def numbers(request: Request):
    """``n`` events ``id: i`` / ``data: i``, one every ``interval`` s (0: none in between)."""
    key = request.query_params.get("key", "numbers")
    n = int(request.query_params.get("n", "5"))
    interval = float(request.query_params.get("interval", "0"))
    ping = float(request.query_params.get("ping", "15"))
    rec = _rec(key)

    async def gen():
        try:
            for i in range(n):
                if interval:
                    await anyio.sleep(interval)
                rec["events"] += 1
                yield {"data": i, "id": str(i)}
        finally:
            rec["finally"] = True

    async def on_close(message):
        await anyio.sleep(0.05)  # the handler is awaited to its end
        rec["closed_by"] = message["type"]

    return Recording(EventSourceResponse(gen(), ping=ping, client_close_handler_callable=on_close), key)


async def flood(request: Request):
    """Offers ``mb`` MB of 4 KiB events; with ``send_timeout`` for a client that stops reading."""
    key = request.query_params["key"]
    mb = int(request.query_params.get("mb", "50"))
    timeout = request.query_params.get("send_timeout")
    rec = _rec(key)
    payload = "x" * 4090

    async def gen():
        try:
            for i in range(mb * 256):
                rec["events"] = i + 1
                yield payload
        finally:
            rec["finally"] = True

    return Recording(EventSourceResponse(gen(), send_timeout=float(timeout) if timeout else None), key)


async def head(request: Request):
    """GET streams two events; HEAD must not start the iterator (``started`` stays 0)."""
    key = request.query_params["key"]
    rec = _rec(key)
    rec.setdefault("started", 0)

    async def gen():
        rec["started"] += 1
        yield {"data": "a"}
        yield {"data": "b"}

    return Recording(EventSourceResponse(gen()), key)


app = Starlette(routes=[
    Route("/status", status),
    Route("/numbers", numbers),
    Route("/flood", flood),
    Route("/head", head, methods=["GET", "HEAD"]),
])
