"""ASGI apps compared by the end-to-end, many-streams and fan-out benchmarks.

One plain ASGI callable, ``app``, dispatches on the path; the implementation is
picked per request with the ``impl`` query parameter, so one server process
serves every peer and they are measured side by side::

    uvicorn --app-dir benchmarks apps:app --loop uvloop --http httptools --no-access-log

Endpoints (query parameters; seconds and bytes):

- ``/health``: ``200 ok`` (readiness probe).
- ``/stream?impl=I&n=N&size=B&kind=dict|bytes|sleep0&ping=P&send_timeout=T``: ``N``
  events, then the response ends. ``kind=dict`` (default): the generator yields
  ``{"id": str(i), "data": <B bytes>}``; ``kind=sleep0``: the same dicts with
  ``await asyncio.sleep(0)`` before each one (a producer that gives the loop a turn
  between events); ``kind=bytes``: it yields one preformatted event (``bytes``)
  ``N`` times. ``impl``:

  - ``sse_fast``: ``sse_fast.EventSourceResponse(gen, ping=P, send_timeout=T)``;
  - ``sse_starlette``: ``sse_starlette.EventSourceResponse`` with the same arguments;
  - ``fastapi``: FastAPI's own SSE (``fastapi.sse``): a FastAPI app whose route
    ``GET /stream`` has ``response_class=fastapi.sse.EventSourceResponse`` and
    yields ``fastapi.sse.ServerSentEvent(raw_data=<B bytes>, id=str(i))`` (the
    same fields as the dicts, unquoted data; ``kind=dict|sleep0`` only). FastAPI
    takes no ``ping``/``send_timeout``: it sends ``: ping`` after 15 s without an
    event, listens for the disconnect (Starlette's ``StreamingResponse``) and has
    no send timeout. Its events end with ``\n\n``, not ``\r\n\r\n``;
  - ``hand``: a hand-written loop over the same generator: f-string encoding,
    64 events per ``send()``, no ping, no timeout, no disconnect listener;
  - ``raw``: the ceiling: one preformatted 64-event batch sent ``N / 64`` times.

  ``ping`` defaults to 15 (both libraries' default); ``send_timeout`` to none.
- ``/idle?impl=I&ping=P``: an event stream that never yields an event; only
  pings every ``P`` seconds (default 15).
- ``/fanout?impl=I&interval=S&size=B``: every client gets the events of one
  broadcaster task per (interval, size), each event put on the client's own
  ``asyncio.Queue``; data is JSON ``{"seq": n, "t": <time.time() at broadcast>,
  "p": "..."}`` padded to ``B`` bytes (default 100), every ``S`` seconds
  (default 0.1).

``impl`` is ``sse_fast`` or ``sse_starlette`` for ``/idle`` and ``/fanout``; ``/idle`` also
takes ``raw`` (head sent, then only waiting for ``http.disconnect``: the server's own floor).
An unknown ``impl`` or a bad number gets ``400`` with the reason.

With ``SSE_FAST_BENCH_METRICS=1`` in the environment, sse_fast's Prometheus
metrics are enabled at import (``sse_fast.metrics.enable_metrics()``): every
sse_fast stream of this process counts (``e2e.py``'s ``sse_fast+metrics`` row
runs such a second server beside the plain one), except a ``/stream`` request
with ``metrics=off``: that one starts with ``sse_fast.metrics.ACTIVE`` set to
``None`` (the disabled path; each stream reads it once, when it starts), so
both sides of the comparison run in the same process (one stream at a time).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs

_metrics: Any = None
if os.environ.get("SSE_FAST_BENCH_METRICS") == "1":
    from sse_fast import metrics as _metrics

    _metrics.enable_metrics()

SEP = "\r\n"
BATCH = 64
SMALL_DATA = '{"msg":"hello world","value":12345,"ok":true}'  # 45 bytes


def payload(size: int) -> str:
    """Return ``size`` bytes of ASCII data (``SMALL_DATA`` for 45, else JSON-ish padding)."""
    if size == len(SMALL_DATA):
        return SMALL_DATA
    return ("x" * size) if size < 8 else '{"p":"' + "x" * (size - 8) + '"}'


def event_bytes(i: int, data: str) -> bytes:
    """The wire form of ``{"id": str(i), "data": data}`` (what every peer sends)."""
    return f"id: {i}{SEP}data: {data}{SEP}{SEP}".encode()


def _digits_total(n: int) -> int:
    """Total length of ``str(i)`` for ``i`` in ``range(n)``."""
    total, low, d = 0, 0, 1
    while low < n:
        high = min(n, 10 ** d)
        total += (high - low) * d
        low, d = high, d + 1
    return total


def expected_body_bytes(impl: str, kind: str, n: int, size: int) -> int:
    """The body size, without chunk framing and pings, of ``/stream`` with these parameters.

    ``id: i CRLF data: D CRLF CRLF`` per event (``impl=fastapi``: ``data: D LF id: i LF LF``);
    ``kind=bytes`` and ``impl=raw`` repeat the event of id 0.
    """
    data = len(payload(size))
    if impl == "raw" or kind == "bytes":
        return n * len(event_bytes(0, payload(size)))
    per_event = 13 if impl == "fastapi" else 16  # field names and line ends
    return n * (per_event + data) + _digits_total(n)


async def dict_events(n: int, data: str) -> AsyncIterator[dict]:
    """The common generator: ``n`` dicts ``{"id": str(i), "data": data}``."""
    for i in range(n):
        yield {"id": str(i), "data": data}


async def sleep0_events(n: int, data: str) -> AsyncIterator[dict]:
    """The common dicts, with ``await asyncio.sleep(0)`` before each: a producer that yields to the loop."""
    sleep = asyncio.sleep
    for i in range(n):
        await sleep(0)
        yield {"id": str(i), "data": data}


async def bytes_events(n: int, data: str) -> AsyncIterator[bytes]:
    """``n`` times the same preformatted event (no per-event work in the producer)."""
    one = event_bytes(0, data)
    for _ in range(n):
        yield one


def _response_class(impl: str):
    if impl == "sse_fast":
        from sse_fast import EventSourceResponse
    elif impl == "sse_starlette":
        from sse_starlette.sse import EventSourceResponse
    else:
        raise ValueError(f"impl must be sse_fast or sse_starlette here, got {impl!r}")
    return EventSourceResponse


_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-store"),
    (b"x-accel-buffering", b"no"),
]


async def hand_loop(send, items: AsyncIterator[dict]) -> None:
    """The hand-written batched loop over ``items``: f-string per event, one ``send()`` per 64 events."""
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    parts: list[str] = []
    append = parts.append
    async for item in items:
        append(f"id: {item['id']}\r\ndata: {item['data']}\r\n\r\n")
        if len(parts) >= BATCH:
            await send({"type": "http.response.body", "body": "".join(parts).encode(), "more_body": True})
            parts.clear()
    await send({"type": "http.response.body", "body": "".join(parts).encode(), "more_body": False})


async def raw_ceiling(send, n: int, data: str) -> None:
    """The ceiling: a preformatted 64-event batch sent ``n // 64`` times, the rest once."""
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    one = event_bytes(0, data)
    batch = one * BATCH
    for _ in range(n // BATCH):
        await send({"type": "http.response.body", "body": batch, "more_body": True})
    await send({"type": "http.response.body", "body": one * (n % BATCH), "more_body": False})


async def raw_idle(send, receive) -> None:
    """The floor for an idle stream: response head sent, then wait for ``http.disconnect`` (no pings)."""
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": b"", "more_body": True})
    while (await receive())["type"] != "http.disconnect":
        pass


# ---------------------------------------------------------------- FastAPI's own SSE
_fastapi_app = None


def fastapi_app():
    """The FastAPI app serving ``/stream`` through ``fastapi.sse`` (built on first use).

    Raises:
        ImportError: FastAPI is not installed, or has no ``fastapi.sse``.
    """
    global _fastapi_app
    if _fastapi_app is not None:
        return _fastapi_app
    from collections.abc import AsyncIterable

    from fastapi import FastAPI, Query
    from fastapi.sse import EventSourceResponse, ServerSentEvent

    api = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

    @api.get("/stream", response_class=EventSourceResponse)
    async def stream(n: int = 1000, size: int = len(SMALL_DATA),
                     kind: str = Query("dict", pattern="^(dict|sleep0)$")) -> AsyncIterable[ServerSentEvent]:
        data = payload(size)
        if kind == "sleep0":
            sleep = asyncio.sleep
            for i in range(n):
                await sleep(0)
                yield ServerSentEvent(raw_data=data, id=str(i))
        else:
            for i in range(n):
                yield ServerSentEvent(raw_data=data, id=str(i))

    _fastapi_app = api
    return api


# ---------------------------------------------------------------- fan-out
class Broadcaster:
    """One task putting each event on every subscriber's ``asyncio.Queue``."""

    def __init__(self, interval: float, size: int) -> None:
        self.interval = interval
        self.size = size
        self.queues: set[asyncio.Queue] = set()
        self.task: asyncio.Task | None = None

    def subscribe(self) -> asyncio.Queue:
        q: asyncio.Queue = asyncio.Queue()
        self.queues.add(q)
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._run())
        return q

    def unsubscribe(self, q: asyncio.Queue) -> None:
        self.queues.discard(q)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        seq = 0
        start = loop.time()
        head = len('{"seq":0000000,"t":1700000000.000000,"p":""}')
        pad = "x" * max(0, self.size - head)
        while True:
            seq += 1
            # absolute schedule: no drift from the time the puts take
            await asyncio.sleep(max(0.0, start + seq * self.interval - loop.time()))
            item = {"id": str(seq), "data": f'{{"seq":{seq:07d},"t":{time.time():.6f},"p":"{pad}"}}'}
            for q in self.queues:
                q.put_nowait(item)


_broadcasters: dict[tuple[float, int], Broadcaster] = {}
_KINDS = {"dict": dict_events, "sleep0": sleep0_events, "bytes": bytes_events}


async def fanout_events(b: Broadcaster) -> AsyncIterator[dict]:
    """One client's generator: whatever the broadcaster puts on its queue."""
    q = b.subscribe()
    try:
        while True:
            yield await q.get()
    finally:
        b.unsubscribe(q)


async def idle_events() -> AsyncIterator[dict]:
    """A generator that never yields (only the response's pings go out)."""
    await asyncio.get_running_loop().create_future()
    yield {}  # pragma: no cover


# ---------------------------------------------------------------- dispatch
def _num(q: dict[str, list[str]], name: str, default: Any, typ=float):
    if name not in q:
        return default
    raw = q[name][0]
    if raw in ("", "none", "None"):
        return None
    try:
        return typ(raw)
    except ValueError:
        raise ValueError(f"query parameter {name} must be a number, got {raw!r}") from None


async def _plain(send, status: int, text: str) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(text)).encode())]})
    await send({"type": "http.response.body", "body": text.encode()})


async def app(scope, receive, send) -> None:
    """The benchmark ASGI app (see the module docstring for the endpoints)."""
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    path = scope["path"]
    q = parse_qs(scope.get("query_string", b"").decode())
    impl = q.get("impl", ["sse_fast"])[0]
    try:
        if path == "/health":
            await _plain(send, 200, f"ok {os.getpid()}")
            return
        ping = _num(q, "ping", 15.0)
        send_timeout = _num(q, "send_timeout", None)
        if path == "/stream":
            n = _num(q, "n", 1000, int)
            data = payload(_num(q, "size", len(SMALL_DATA), int))
            if impl == "raw":
                await raw_ceiling(send, n, data)
                return
            if impl == "fastapi":  # FastAPI routes /stream itself and reads n, size and kind
                resp = fastapi_app()
            else:
                kind = q.get("kind", ["dict"])[0]
                if kind not in _KINDS:
                    raise ValueError(f"kind must be one of {', '.join(_KINDS)}, got {kind!r}")
                if impl == "hand":
                    if kind == "bytes":
                        raise ValueError("impl=hand takes kind=dict or sleep0")
                    await hand_loop(send, _KINDS[kind](n, data))
                    return
                resp = _response_class(impl)(_KINDS[kind](n, data), ping=ping, send_timeout=send_timeout)
        elif path == "/idle":
            if impl == "raw":
                await raw_idle(send, receive)
                return
            resp = _response_class(impl)(idle_events(), ping=ping, send_timeout=send_timeout)
        elif path == "/fanout":
            interval = _num(q, "interval", 0.1)
            size = _num(q, "size", 100, int)
            b = _broadcasters.get((interval, size))
            if b is None:
                b = _broadcasters[(interval, size)] = Broadcaster(interval, size)
            resp = _response_class(impl)(fanout_events(b), ping=ping, send_timeout=send_timeout)
        else:
            await _plain(send, 404, f"no such endpoint {path!r}")
            return
    except (ValueError, ImportError) as exc:
        await _plain(send, 400, f"{type(exc).__name__}: {exc}")
        return
    if _metrics is not None and q.get("metrics") == ["off"]:
        # the disabled path in this metrics-enabled process: the response reads ACTIVE when it starts
        enabled, _metrics.ACTIVE = _metrics.ACTIVE, None
        try:
            await resp(scope, receive, send)
        finally:
            _metrics.ACTIVE = enabled
        return
    await resp(scope, receive, send)
