"""Demo endpoints for checking sse_fast against a real browser's ``EventSource``.

Mounted by ``sse_fast.demo`` (when this module is present) under
``/conformance/``:

- ``GET /conformance/``: an HTML page whose ``EventSource`` reads
  ``/conformance/stream`` (with the page's own query string) and records every
  event in ``window.received`` (``via``, ``type``, ``data``, ``lastEventId``),
  its ``open``/``error`` callbacks in ``window.log``, and sets
  ``window.done = true`` when the ``done`` event arrives.
- ``GET /conformance/stream?session=S&n=N&drop=K&retry=MS``: events ``0 ..
  N-1`` (see :func:`expected_event`: multi-line, non-ASCII, named, leading
  spaces, CR/CRLF line ends inside data), ``id`` = the event number, ``retry:
  MS`` on the first event of every connection. After ``K`` events the server
  ends the response (the browser reconnects after ``MS`` milliseconds and sends
  ``Last-Event-ID``, from which the stream resumes without a gap); after event
  ``N-1`` it sends an event named ``done`` and ends. A request whose
  ``Last-Event-ID`` is already ``N-1`` or more gets ``204 No Content``, which
  tells a browser to stop reconnecting.
- ``GET /conformance/log?session=S``: JSON list of the connections of session
  ``S``: ``last_event_id`` (the request header, or ``null``), ``start`` (first
  event number sent), ``sent`` (count), ``t_open``/``t_close`` (server
  ``time.time()``, seconds).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from sse_fast import EventSourceResponse, ServerSentEvent
from sse_fast.demo import query_number

__all__ = ["ROUTES", "expected_event", "wire_event", "PAGE"]

_MAX_SESSIONS = 200
_sessions: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()


def wire_event(i: int) -> tuple[str | None, str]:
    """The event type (``None``: unnamed) and the ``data`` the server sends as event ``i``."""
    kind = i % 5
    if kind == 0:
        return None, f"plain {i}"
    if kind == 1:
        # CRLF and CR inside data become separate data lines: a client reads LF
        return None, f"line one {i}\r\nline two\rline three\n\nline five"
    if kind == 2:
        return "greeting", f"héllo wörld ✓ 日本語 😀 {i}"
    if kind == 3:
        return None, f"  indented {i}\n"
    return "json", json.dumps(
        {"i": i, "s": "ü\u2028€", "q": 'say "hi"'}, ensure_ascii=False, separators=(",", ":")
    )


def expected_event(i: int) -> tuple[str, str, str]:
    """What a conforming client receives for event ``i``: ``(type, data, lastEventId)``."""
    etype, data = wire_event(i)
    return etype or "message", data.replace("\r\n", "\n").replace("\r", "\n"), str(i)


def _session(name: str) -> list[dict[str, Any]]:
    log = _sessions.get(name)
    if log is None:
        log = _sessions[name] = []
        while len(_sessions) > _MAX_SESSIONS:
            _sessions.popitem(last=False)
    return log


async def stream(request: Request) -> Response:
    """The event stream (see the module docstring)."""
    n = query_number(request, "n", 12, 1, 100_000)
    drop = query_number(request, "drop", 5, 1, 100_000)
    retry = query_number(request, "retry", 500, 0, 60_000)
    interval_ms = query_number(request, "interval_ms", 0, 0, 10_000)
    session = request.query_params.get("session", "default")
    header = request.headers.get("last-event-id")
    start = int(header) + 1 if header is not None and header.isdigit() else 0
    conn: dict[str, Any] = {
        "last_event_id": header,
        "start": start,
        "sent": 0,
        "t_open": time.time(),
        "t_close": None,
    }
    _session(session).append(conn)
    if start >= n:
        conn["t_close"] = time.time()
        return Response(status_code=204)

    async def gen():
        try:
            stop = min(start + drop, n)
            for i in range(start, stop):
                etype, data = wire_event(i)
                yield ServerSentEvent(
                    data, event=etype, id=str(i), retry=retry if i == start else None
                )
                conn["sent"] += 1
                if interval_ms:
                    await asyncio.sleep(interval_ms / 1000)
            if stop == n:
                yield ServerSentEvent(str(n), event="done", comment="all events sent")
        finally:
            conn["t_close"] = time.time()

    return EventSourceResponse(gen(), ping=0)


async def log(request: Request) -> Response:
    """The connection log of one session, as JSON."""
    return JSONResponse(_sessions.get(request.query_params.get("session", "default"), []))


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>sse_fast conformance</title>
<style>body{font:14px monospace} li{white-space:pre-wrap}</style></head>
<body><h1>sse_fast: EventSource conformance</h1>
<p id="state">connecting</p><ol id="events"></ol>
<script>
window.received = []; window.log = []; window.done = false;
const list = document.getElementById("events");
const state = document.getElementById("state");
const es = new EventSource("/conformance/stream" + location.search);
function record(via) {
  return (e) => {
    window.received.push({via: via, type: e.type, data: e.data, lastEventId: e.lastEventId, t: Date.now()});
    const li = document.createElement("li");
    li.textContent = `[${e.type} #${e.lastEventId}] ${e.data}`;
    list.appendChild(li);
  };
}
es.onmessage = record("onmessage");
es.addEventListener("greeting", record("greeting"));
es.addEventListener("json", record("json"));
es.addEventListener("done", (e) => {
  window.log.push({kind: "done", data: e.data, t: Date.now()});
  es.close();
  state.textContent = "done";
  window.done = true;
});
es.onopen = () => { window.log.push({kind: "open", t: Date.now()}); state.textContent = "open"; };
es.onerror = () => { window.log.push({kind: "error", readyState: es.readyState, t: Date.now()}); state.textContent = "reconnecting"; };
</script></body></html>
"""


async def page(request: Request) -> Response:
    """The HTML page with the ``EventSource``."""
    return HTMLResponse(PAGE)


#: routes the demo app includes
ROUTES = [
    Route("/conformance/", page),
    Route("/conformance/stream", stream),
    Route("/conformance/log", log),
]
