"""The demo app: live event streams to look at in a browser or with ``curl -N``.

``create_app(backend)`` builds a Starlette app whose endpoints stream with
sse_fast's ``EventSourceResponse`` (``backend="sse_fast"``) or, for side by
side comparisons, sse-starlette's (``backend="sse_starlette"``).

Endpoints:
    ``/``: a page whose ``EventSource`` shows the ``/events`` stream live.
    ``/events?interval=SECONDS``: endless counter, one event per ``interval``
        (default 1.0 s); id = counter, data = JSON ``{"n", "t", "time"}``
        (``t``: server ``time.time()`` at send). A reconnecting client's
        ``Last-Event-ID`` resumes the count after that id.
    ``/stream?n=N&size=BYTES``: N events of ``size`` bytes of data as fast as
        possible, then the response ends (defaults 1000, 50).
    ``/fanout?interval=SECONDS&size=BYTES``: one broadcaster per
        (interval, size) sends the same event to every client; data JSON with
        ``seq`` and ``t`` (server send time), padded to about ``size`` bytes.
    ``/idle?ping=SECONDS``: no data, pings only (default 15 s).
    ``/firehose?size=BYTES``: endless events as fast as possible.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

__all__ = ["create_app", "query_number", "PAGE"]

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>sse_fast demo</title>
<style>body{font:15px system-ui,sans-serif;margin:2em}#log{font-family:monospace;white-space:pre}</style>
</head><body>
<h1>sse_fast demo</h1>
<p>Live events from <code>/events</code>: <span id="state">connecting</span>, last event ID <span id="lastid">-</span></p>
<div id="log"></div>
<script>
const log = document.getElementById("log");
const es = new EventSource("/events");
es.onopen = () => { document.getElementById("state").textContent = "open"; };
es.onerror = () => { document.getElementById("state").textContent = "reconnecting"; };
es.onmessage = (e) => {
  document.getElementById("lastid").textContent = e.lastEventId;
  const line = document.createElement("div");
  line.textContent = e.lastEventId + "  " + e.data;
  log.prepend(line);
  while (log.childNodes.length > 20) log.removeChild(log.lastChild);
};
</script>
</body></html>
"""


def query_number(request: Request, name: str, default: Any, low: Any, high: Any, kind: type = int) -> Any:
    """The query parameter ``name`` as ``kind`` (``int`` or ``float``), ``default`` when absent.

    Raises:
        ValueError: not a number of that kind, or outside ``[low, high]`` (the app
            answers 400 with the message).
    """
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = kind(raw)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise ValueError(f"query parameter {name} must be {what}, got {raw!r}") from None
    if not low <= value <= high:
        raise ValueError(f"query parameter {name} must be in [{low}, {high}], got {value}")
    return value


class _Broadcaster:
    """One ticking task per (interval, size) feeding one queue per client."""

    def __init__(self, interval: float, size: int) -> None:
        self.interval = interval
        self.size = size
        self.clients: set[asyncio.Queue[Any]] = set()
        self.task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        seq = 0
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while self.clients:
            seq += 1
            body = {"seq": seq, "t": time.time()}
            pad = self.size - len(json.dumps(body)) - 10
            if pad > 0:
                body["pad"] = "x" * pad
            item = {"data": json.dumps(body, separators=(",", ":")), "id": str(seq)}
            for q in self.clients:
                q.put_nowait(item)
            next_at += self.interval
            await asyncio.sleep(max(0.0, next_at - loop.time()))
        self.task = None

    def subscribe(self) -> asyncio.Queue[Any]:
        q: asyncio.Queue[Any] = asyncio.Queue(maxsize=0)
        self.clients.add(q)
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._run())
        return q


def create_app(backend: str = "sse_fast") -> Starlette:
    """Build the demo app.

    Args:
        backend: ``"sse_fast"`` or ``"sse_starlette"``: whose
            ``EventSourceResponse`` the endpoints use.

    Returns:
        A Starlette app.

    Raises:
        ValueError: unknown ``backend``.
        ImportError: ``backend="sse_starlette"`` and sse-starlette is not installed.
    """
    if backend == "sse_fast":
        from sse_fast import EventSourceResponse
    elif backend in ("sse_starlette", "sse-starlette"):
        from sse_starlette import EventSourceResponse  # type: ignore[no-redef]
    else:
        raise ValueError(f"backend must be 'sse_fast' or 'sse_starlette', got {backend!r}")

    broadcasters: dict[tuple[float, int], _Broadcaster] = {}

    async def page(request: Request) -> Response:
        return HTMLResponse(PAGE)

    async def events(request: Request) -> Response:
        interval = query_number(request, "interval", 1.0, 0.0, 3600.0, float)
        last = request.headers.get("last-event-id", "")
        start = int(last) + 1 if last.isdigit() else 0

        async def gen():
            n = start
            while True:
                now = time.time()
                data = {"n": n, "t": now, "time": datetime.fromtimestamp(now, UTC).isoformat()}
                yield {"data": json.dumps(data, separators=(",", ":")), "id": str(n)}
                n += 1
                await asyncio.sleep(interval)

        return EventSourceResponse(gen())

    async def stream(request: Request) -> Response:
        n = query_number(request, "n", 1000, 0, 100_000_000)
        size = query_number(request, "size", 50, 0, 16 * 1024 * 1024)
        payload = "x" * size

        async def gen():
            for i in range(n):
                yield {"data": payload, "id": str(i)}

        return EventSourceResponse(gen())

    async def fanout(request: Request) -> Response:
        interval = query_number(request, "interval", 0.1, 0.001, 3600.0, float)
        size = query_number(request, "size", 100, 0, 1024 * 1024)
        key = (interval, size)
        b = broadcasters.get(key)
        if b is None:
            b = broadcasters[key] = _Broadcaster(interval, size)
        queue = b.subscribe()

        async def gen():
            try:
                while True:
                    yield await queue.get()
            finally:
                b.clients.discard(queue)

        return EventSourceResponse(gen())

    async def idle(request: Request) -> Response:
        ping = query_number(request, "ping", 15.0, 0.0, 3600.0, float)

        async def gen():
            await asyncio.Event().wait()
            yield {}  # never reached

        return EventSourceResponse(gen(), ping=ping)

    async def firehose(request: Request) -> Response:
        size = query_number(request, "size", 50, 0, 1024 * 1024)
        payload = "x" * size

        async def gen():
            i = 0
            while True:
                yield {"data": payload, "id": str(i)}
                i += 1

        return EventSourceResponse(gen())

    routes = [
        Route("/", page),
        Route("/events", events),
        Route("/stream", stream),
        Route("/fanout", fanout),
        Route("/idle", idle),
        Route("/firehose", firehose),
    ]
    try:
        from ._demo_conformance import ROUTES as extra
    except ImportError:
        extra = []
    routes.extend(extra)

    async def bad_request(request: Request, exc: Exception) -> Response:
        return Response(str(exc), status_code=400, media_type="text/plain")

    return Starlette(routes=routes, exception_handlers={ValueError: bad_request})
