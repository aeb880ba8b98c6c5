"""The app that the real-server tests run under uvicorn (uvloop + httptools).

Each streaming endpoint takes ``key``; what happened to its stream (iterator
``finally`` ran, close handler called, exception raised) is recorded in
``STATE[key]`` and read back with ``GET /status?key=...``.
"""

from __future__ import annotations

import asyncio
import os
import time

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import sse_fast
from sse_fast import EventSourceResponse, ServerSentEvent

STATE: dict[str, dict] = {}


def _rec(key: str) -> dict:
    return STATE.setdefault(key, {"events": 0, "finally": False, "closed_by": None, "error": None})


class Recording:
    """Wraps a response to record the exception that leaves it, if any."""

    def __init__(self, response, key: str) -> None:
        self.response = response
        self.key = key

    async def __call__(self, scope, receive, send):
        try:
            await self.response(scope, receive, send)
        except BaseException as exc:
            _rec(self.key)["error"] = type(exc).__name__
            raise
        else:
            _rec(self.key)["returned"] = True


async def status(request: Request):
    return JSONResponse({"state": STATE.get(request.query_params["key"]), "pid": os.getpid(),
                         "impl": sse_fast.IMPLEMENTATION})


async def ticks(request: Request):
    """``n`` events, one every ``interval`` s, data = send time (time.time())."""
    key = request.query_params["key"]
    n = int(request.query_params.get("n", "1000000"))
    interval = float(request.query_params.get("interval", "0.02"))
    ping = float(request.query_params.get("ping", "15"))
    rec = _rec(key)

    async def gen():
        try:
            for i in range(n):
                rec["events"] += 1
                yield {"data": repr(time.time()), "id": str(i)}
                await asyncio.sleep(interval)
        finally:
            rec["finally"] = True

    async def on_close(message):
        rec["closed_by"] = message["type"]

    return Recording(EventSourceResponse(gen(), ping=ping, client_close_handler_callable=on_close), key)


async def busy(request: Request):
    """A producer that never awaits: must still stop on disconnect and shutdown."""
    key = request.query_params["key"]
    rec = _rec(key)

    async def gen():
        try:
            i = 0
            while True:
                i += 1
                rec["events"] = i
                yield b"data: x\r\n\r\n"
        finally:
            rec["finally"] = True

    return Recording(EventSourceResponse(gen()), key)


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

    max_buffer = int(request.query_params.get("max_buffer_bytes", "65536"))
    return Recording(EventSourceResponse(gen(), send_timeout=float(timeout) if timeout else None,
                                         max_buffer_bytes=max_buffer), key)


async def shutdown(request: Request):
    """Endless slow stream; ``farewell=1`` uses shutdown_event + grace period."""
    key = request.query_params["key"]
    rec = _rec(key)
    farewell = request.query_params.get("farewell") == "1"
    event = anyio.Event() if farewell else None

    async def gen():
        try:
            i = 0
            while True:
                yield {"data": f"tick {i}"}
                i += 1
                if farewell:
                    with anyio.move_on_after(0.2):
                        await event.wait()
                    if event.is_set():
                        yield {"event": "farewell", "data": "bye"}
                        return
                else:
                    await asyncio.sleep(0.2)
        finally:
            rec["finally"] = True

    return Recording(EventSourceResponse(gen(), shutdown_event=event, shutdown_grace_period=3 if farewell else 0), key)


def _sync_gen(n):
    for i in range(n):
        time.sleep(0.001)
        yield ServerSentEvent(f"s{i}", id=str(i))


async def sync(request: Request):
    n = int(request.query_params.get("n", "5"))
    return EventSourceResponse(_sync_gen(n))


async def push(request: Request):
    """Push style: an anyio memory object stream as content, filled by data_sender_callable."""
    n = int(request.query_params.get("n", "5"))
    send_stream, receive_stream = anyio.create_memory_object_stream(2)

    async def sender():
        async with send_stream:
            for i in range(n):
                await send_stream.send({"data": f"pushed {i}", "id": str(i)})
                await asyncio.sleep(0.001)

    return EventSourceResponse(receive_stream, data_sender_callable=sender)


async def failing(request: Request):
    key = request.query_params["key"]

    async def gen():
        yield {"data": "one"}
        raise LookupError("boom")

    return Recording(EventSourceResponse(gen()), key)


app = Starlette(routes=[
    Route("/status", status),
    Route("/ticks", ticks),
    Route("/busy", busy),
    Route("/flood", flood),
    Route("/shutdown", shutdown),
    Route("/sync", sync, methods=["GET", "HEAD"]),
    Route("/failing", failing),
    Route("/push", push),
])
