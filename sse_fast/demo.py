"""The demo app: live event streams to look at in a browser or with ``curl -N``.

``create_app(backend)`` builds a Starlette app whose endpoints stream with
sse_fast's ``EventSourceResponse`` (``backend="sse_fast"``) or, for side by
side comparisons, sse-starlette's (``backend="sse_starlette"``). One in-memory
``sse_fast.broadcast.Broadcast`` per app (``app.state.broadcast``) carries the
fan-out topics; the chat has its own (``app.state.chat_broadcast``), in memory
or, with ``broadcast_url``, on Redis, shared by every worker and machine.

Endpoints:
    ``/``: a page whose ``EventSource`` shows the ``/events`` stream live.
    ``/events?interval=SECONDS``: endless counter, one event per ``interval``
        (default 1.0 s); id = counter, data = JSON ``{"n", "t", "time"}``
        (``t``: server ``time.time()`` at send). A reconnecting client's
        ``Last-Event-ID`` resumes the count after that id.
    ``/stream?n=N&size=BYTES``: N events of ``size`` bytes of data as fast as
        possible, then the response ends (defaults 1000, 50).
    ``/fanout?interval=SECONDS&size=BYTES``: broadcast topic per
        (interval, size), fed by one publisher task started by the first
        client and stopped when none is left; every client gets the same
        event; id = ``seq``, data JSON with ``seq`` and ``t`` (server publish
        time), padded to about ``size`` bytes. ``Last-Event-ID`` replays what
        was missed (from the last 1,000 events, 2 MiB). At most 64 distinct
        (interval, size) pairs per app (400 beyond).
    ``/idle?ping=SECONDS``: no data, pings only (default 15 s).
    ``/firehose?size=BYTES``: endless events as fast as possible.
    ``/metrics``: sse_fast's Prometheus metrics (``sse_fast.metrics``), when
        prometheus_client is installed; the streams above carry the ``route``
        label ``events``, ``stream``, ``fanout``, ``idle``, ``firehose``, ``chat``.
    ``/chat``: a chat page: a message sent in one tab appears in every open tab.
    ``POST /chat/send``: form (``application/x-www-form-urlencoded``) or JSON
        body ``{"name", "text"}``; publishes ``event: chat``, id = the topic's
        next number (memory) or the Redis stream entry id, data JSON
        ``{"name", "text", "t"}``; answers JSON ``{"id", "t"}``, 400 with the
        reason in plain text, or 503 when Redis did not take the message.
    ``/chat/events?client=ID``: the chat stream: ``retry: 200`` first, then
        the messages after the request's ``Last-Event-ID`` (replay, or an
        ``sse_fast.gap`` event when they are no longer kept), then live ones.
        ``client`` (optional, 1-64 of ``A-Z a-z 0-9 _ -``) names the
        connection for the debug routes below.
    ``POST /chat/_drop?client=ID&retry=MS`` (debug): end that client's stream
        from the server side, cleanly (after ``retry: MS`` when given); its
        ``EventSource`` reconnects with ``Last-Event-ID`` and replays what it
        missed. 404 when no such client is connected.
    ``GET /chat/_clients`` (debug): JSON ``{"subscribers", "live", "pid"}``: the
        chat topic's subscriber count in this worker, the named clients
        receiving now, and the worker's process id.

With ``backend="sse_starlette"`` every endpoint works: ``/fanout`` and the
chat stream hand the broadcast subscription (an async iterator of encoded
``bytes``) to sse-starlette's ``EventSourceResponse``. With sse_fast,
``/fanout`` is ``broadcast.response(...)``: the subscription attaches to the
stream's writer (no queue, no task per event). The chat stream is an async
generator around the subscription under both backends: the attached path has
no way to send a ``retry`` first or to be ended by the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from .broadcast import Broadcast, PublishError, Subscription

__all__ = ["create_app", "app_from_env", "query_number", "PAGE", "CHAT_PAGE"]

#: the chat topic of the app's broadcast
CHAT_TOPIC = "chat"
#: the reconnection time (ms) the chat stream sends first
CHAT_RETRY_MS = 200
#: limits of a chat message (characters, after stripping blanks) and of the request body (bytes)
CHAT_NAME_MAX = 40
CHAT_TEXT_MAX = 500
CHAT_BODY_MAX = 8192
#: seconds a fan-out publisher keeps going without subscribers after the last request
#: (a new client's subscription registers only once its response has started)
FANOUT_GRACE = 1.0
#: distinct (interval, size) fan-out topics one app serves: each keeps its history
#: (up to the broadcast's history_bytes) for as long as the app runs
FANOUT_TOPICS_MAX = 64

_CLIENT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_NAME_BAD = re.compile(r"[\x00-\x1f\x7f]")
_TEXT_BAD = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # tab and line feed allowed

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>sse_fast demo</title>
<style>body{font:15px system-ui,sans-serif;margin:2em}#log{font-family:monospace;white-space:pre}</style>
</head><body>
<h1>sse_fast demo</h1>
<p>Live events from <code>/events</code>: <span id="state">connecting</span>, last event ID <span id="lastid">-</span>
&middot; <a href="/chat">chat</a> (open it in two tabs)</p>
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

CHAT_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>sse_fast chat</title>
<style>
body{font:15px system-ui,sans-serif;margin:2em;max-width:52em}
#messages{list-style:none;padding:0;font-family:monospace}
#messages li{margin:.25em 0;white-space:pre-wrap}
.meta{color:#888}.who{font-weight:bold}#error{color:#b00;margin-left:1em}
#notice{color:#8a5a00;background:#fff6dd;padding:.4em .6em}
</style></head><body>
<h1>sse_fast chat</h1>
<p>Open this page in several tabs: a message sent in one appears in all of them.
<code>/chat/events</code>: <span id="state">connecting</span>, last event ID <span id="lastid">-</span>
&middot; <a href="/">home</a></p>
<form id="form" method="post" action="/chat/send">
<input id="name" name="name" placeholder="name" maxlength="@NAME_MAX@" size="12" required>
<input id="text" name="text" placeholder="message" maxlength="@TEXT_MAX@" size="48" autocomplete="off" required autofocus>
<button id="send" type="submit">Send</button><span id="error"></span>
</form>
<p id="notice" hidden></p>
<ol id="messages"></ol>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
// for tests and curious readers: every chat event as it arrived (duplicates
// included), this tab's sends, and the connection's open/error/gap moments
window.received = [];
window.sent = [];
window.log = [];
const shown = new Set();
$("name").value = "guest-" + Math.floor(Math.random() * 10000);
const client = new URLSearchParams(location.search).get("client");
const es = new EventSource("/chat/events" + (client ? "?client=" + encodeURIComponent(client) : ""));
es.onopen = () => {
  $("state").textContent = "open";
  window.log.push({kind: "open", at: Date.now()});
};
es.onerror = () => {
  $("state").textContent = es.readyState === EventSource.CLOSED ? "closed" : "reconnecting";
  window.log.push({kind: "error", at: Date.now()});
};
function span(cls, text) {
  const el = document.createElement("span");
  el.className = cls;
  el.textContent = text;
  return el;
}
es.addEventListener("chat", (e) => {
  const m = JSON.parse(e.data);
  window.received.push({id: e.lastEventId, name: m.name, text: m.text, t: m.t, at: Date.now()});
  $("lastid").textContent = e.lastEventId;
  if (shown.has(e.lastEventId)) return;  // each message once, even if it came twice
  shown.add(e.lastEventId);
  const li = document.createElement("li");
  li.dataset.id = e.lastEventId;
  const when = new Date(m.t * 1000).toLocaleTimeString();
  li.append(span("meta", "#" + e.lastEventId + " " + when + " "), span("who", m.name + ": "), span("text", m.text));
  $("messages").append(li);
  li.scrollIntoView({block: "nearest"});
});
es.addEventListener("sse_fast.gap", (e) => {
  const g = JSON.parse(e.data);
  window.log.push({kind: "gap", at: Date.now(), data: g});
  const n = $("notice");
  n.hidden = false;
  n.textContent = (g.last_event_id === null
      ? "Some messages were skipped (this tab fell behind)."
      : "Messages after #" + g.last_event_id + " are no longer kept by the server: some were missed.")
    + (g.oldest === null ? "" : " Shown from #" + g.oldest + " on.");
});
$("form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const box = $("text");
  const text = box.value;
  $("error").textContent = "";
  try {
    const r = await fetch("/chat/send", {
      method: "POST",
      headers: {"content-type": "application/json"},
      body: JSON.stringify({name: $("name").value, text}),
    });
    if (!r.ok) {
      $("error").textContent = await r.text();
      return;
    }
    const res = await r.json();
    window.sent.push({id: res.id, text, at: Date.now()});
    if (box.value === text) box.value = "";
    box.focus();
  } catch (err) {
    $("error").textContent = String(err);
  }
});
</script>
</body></html>
""".replace("@NAME_MAX@", str(CHAT_NAME_MAX)).replace("@TEXT_MAX@", str(CHAT_TEXT_MAX))


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


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (``ValueError``) beyond ``limit`` bytes without reading it all."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise ValueError(f"request body too large: {length} bytes, at most {limit}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ValueError(f"request body too large: more than {limit} bytes")
    return bytes(body)


async def chat_message(request: Request) -> tuple[str, str]:
    """``(name, text)`` of a ``POST /chat/send``, validated.

    Raises:
        ValueError: the reason the message is refused (the app answers 400 with it).
    """
    ctype = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if ctype not in ("application/json", "application/x-www-form-urlencoded"):
        raise ValueError("send the message as JSON {\"name\": ..., \"text\": ...} (content-type "
                         f"application/json) or as a form (application/x-www-form-urlencoded), got {ctype or 'no content-type'!r}")
    raw = await _read_body(request, CHAT_BODY_MAX)
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("the request body is not valid UTF-8") from None
    fields: dict[str, Any]
    if ctype == "application/json":
        try:
            parsed = json.loads(decoded)
        except json.JSONDecodeError as exc:
            raise ValueError(f"the request body is not valid JSON: {exc}") from None
        if not isinstance(parsed, dict):
            raise ValueError("the JSON body must be an object {\"name\": ..., \"text\": ...}")
        fields = parsed
    else:
        fields = {k: v[-1] for k, v in parse_qs(decoded, keep_blank_values=True).items()}
    out = []
    for field, limit, bad in (("name", CHAT_NAME_MAX, _NAME_BAD), ("text", CHAT_TEXT_MAX, _TEXT_BAD)):
        value = fields.get(field)
        if value is None:
            raise ValueError(f"{field} is missing")
        if not isinstance(value, str):
            raise ValueError(f"{field} must be a string, got {type(value).__name__}")
        value = value.replace("\r\n", "\n").replace("\r", "\n").strip()
        if not value:
            raise ValueError(f"{field} is empty")
        if len(value) > limit:
            raise ValueError(f"{field} is too long: {len(value)} characters, at most {limit}")
        if bad.search(value):
            raise ValueError(f"{field} contains a control character")
        out.append(value)
    return out[0], out[1]


def enable_demo_metrics() -> bool:
    """Enable sse_fast's metrics in prometheus_client's default registry; ``False`` without prometheus_client."""
    from . import metrics

    try:
        metrics.enable_metrics()
    except ImportError:
        return False
    return True


async def metrics_page(request: Request) -> Response:
    """``GET /metrics``: prometheus_client's text exposition of its default registry."""
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


class _ChatConnection:
    """One chat stream: its subscription, and the way the debug route ends it."""

    __slots__ = ("subscription", "live", "dropped", "farewell_retry")

    def __init__(self, subscription: Subscription) -> None:
        self.subscription = subscription
        self.live = False
        self.dropped = False
        self.farewell_retry: int | None = None

    async def drop(self, retry: int | None) -> None:
        # ends the iteration of the subscription (queued events are dropped:
        # the client replays them after its Last-Event-ID); the stream then
        # ends normally, so EventSource reconnects
        self.dropped = True
        self.farewell_retry = retry
        await self.subscription.aclose()


def create_app(backend: str = "sse_fast", broadcast_url: str | None = None) -> Starlette:
    """Build the demo app.

    Args:
        backend: ``"sse_fast"`` or ``"sse_starlette"``: whose
            ``EventSourceResponse`` the endpoints use.
        broadcast_url: the chat's broadcast backend: ``None`` (memory, this
            process) or a Redis URL (``redis://127.0.0.1:6379/0``): then every
            worker and machine on that Redis serves one chat, and a tab that
            reconnects to another worker replays what it missed.

    Returns:
        A Starlette app; ``app.state.broadcast`` is the fan-out's ``Broadcast``
        (always in memory: each worker runs its own tick publishers),
        ``app.state.chat_broadcast`` the chat's.

    Raises:
        ValueError: unknown ``backend`` or a bad ``broadcast_url``.
        ImportError: ``backend="sse_starlette"`` and sse-starlette is not
            installed, or a Redis URL without redis-py.
    """
    if backend == "sse_fast":
        from sse_fast import EventSourceResponse
    elif backend in ("sse_starlette", "sse-starlette"):
        from sse_starlette import EventSourceResponse  # type: ignore[no-redef]
    else:
        raise ValueError(f"backend must be 'sse_fast' or 'sse_starlette', got {backend!r}")
    attached = backend == "sse_fast"
    # before any Broadcast exists: each one registers its subscriber counts with the metrics
    metrics_on = enable_demo_metrics()

    def named(route: str) -> dict[str, Any]:
        # the metrics' route label (sse-starlette's response has no such argument)
        return {"metrics_route": route} if attached else {}

    # a subscriber may fall 4 MiB behind: room for the largest /fanout event (1 MiB) and a backlog
    broadcast = Broadcast(history=1000, history_bytes=2 << 20, max_subscriber_bytes=4 << 20)
    chat_broadcast = Broadcast(history=1000, history_bytes=2 << 20, max_subscriber_bytes=4 << 20,
                               url=broadcast_url, publish_timeout=2.0)
    fanout_tasks: dict[str, asyncio.Task[None]] = {}
    fanout_asked: dict[str, float] = {}  # topic -> loop time of its last request
    fanout_seq: dict[str, int] = {}  # topic -> last seq published (ids go on after a restart)
    chat_clients: dict[str, _ChatConnection] = {}

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

        return EventSourceResponse(gen(), **named("events"))

    async def stream(request: Request) -> Response:
        n = query_number(request, "n", 1000, 0, 100_000_000)
        size = query_number(request, "size", 50, 0, 16 * 1024 * 1024)
        payload = "x" * size

        async def gen():
            for i in range(n):
                yield {"data": payload, "id": str(i)}

        return EventSourceResponse(gen(), **named("stream"))

    async def publish_ticks(topic: str, interval: float, size: int) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        try:
            while broadcast.subscribers(topic) or loop.time() - fanout_asked[topic] < FANOUT_GRACE:
                seq = fanout_seq[topic] = fanout_seq[topic] + 1
                body: dict[str, Any] = {"seq": seq, "t": time.time()}
                pad = size - len(json.dumps(body)) - 10
                if pad > 0:
                    body["pad"] = "x" * pad
                broadcast.publish({"data": json.dumps(body, separators=(",", ":")), "id": str(seq)}, topic)
                next_at += interval
                await asyncio.sleep(max(0.0, next_at - loop.time()))
        finally:
            # the check above and this are one step of the loop: a request that
            # comes after it finds no task and starts a new one
            if fanout_tasks.get(topic) is asyncio.current_task():
                del fanout_tasks[topic]

    async def fanout(request: Request) -> Response:
        interval = query_number(request, "interval", 0.1, 0.001, 3600.0, float)
        size = query_number(request, "size", 100, 0, 1024 * 1024)
        topic = f"fanout/{interval!r}/{size}"
        if topic not in fanout_seq and len(fanout_seq) >= FANOUT_TOPICS_MAX:
            raise ValueError(f"this server already serves {FANOUT_TOPICS_MAX} distinct (interval, size) "
                             "fan-out streams, the most it keeps: use one of those")
        fanout_seq.setdefault(topic, 0)
        loop = asyncio.get_running_loop()
        fanout_asked[topic] = loop.time()
        if topic not in fanout_tasks:
            fanout_tasks[topic] = loop.create_task(publish_ticks(topic, interval, size))
        if attached:
            return broadcast.response(request, topic, **named("fanout"))
        return EventSourceResponse(broadcast.subscribe(topic, request.headers.get("last-event-id")))

    async def idle(request: Request) -> Response:
        ping = query_number(request, "ping", 15.0, 0.0, 3600.0, float)

        async def gen():
            await asyncio.Event().wait()
            yield {}  # never reached

        return EventSourceResponse(gen(), ping=ping, **named("idle"))

    async def firehose(request: Request) -> Response:
        size = query_number(request, "size", 50, 0, 1024 * 1024)
        payload = "x" * size

        async def gen():
            i = 0
            while True:
                yield {"data": payload, "id": str(i)}
                i += 1

        return EventSourceResponse(gen(), **named("firehose"))

    async def chat_page(request: Request) -> Response:
        return HTMLResponse(CHAT_PAGE)

    async def chat_send(request: Request) -> Response:
        name, text = await chat_message(request)
        t = time.time()
        data = json.dumps({"name": name, "text": text, "t": t}, ensure_ascii=False, separators=(",", ":"))
        try:
            eid = await chat_broadcast.apublish({"event": "chat", "data": data}, CHAT_TOPIC)
        except PublishError as exc:
            return Response(f"not published: {exc}", status_code=503, media_type="text/plain")
        return JSONResponse({"id": eid, "t": t})

    def client_param(request: Request, required: bool) -> str | None:
        client = request.query_params.get("client")
        if client is None and not required:
            return None
        if client is None or not _CLIENT_ID.fullmatch(client):
            raise ValueError(f"query parameter client must be 1-64 of A-Z a-z 0-9 _ -, got {client!r}")
        return client

    async def chat_events(request: Request) -> Response:
        client = client_param(request, required=False)
        sub = chat_broadcast.subscribe(CHAT_TOPIC, request.headers.get("last-event-id"))
        conn = _ChatConnection(sub)
        if client is not None:
            chat_clients[client] = conn  # a reconnection replaces the old entry

        async def gen():
            try:
                yield {"retry": CHAT_RETRY_MS}
                if not conn.dropped:
                    # the subscription registers (and replays) at its first __anext__,
                    # in this same step of the loop
                    conn.live = True
                    async for chunk in sub:
                        yield chunk
                if conn.farewell_retry is not None:
                    yield {"retry": conn.farewell_retry}
            finally:
                conn.live = False
                await sub.aclose()
                if client is not None and chat_clients.get(client) is conn:
                    del chat_clients[client]

        return EventSourceResponse(gen(), ping=15, **named("chat"))

    async def chat_drop(request: Request) -> Response:
        client = client_param(request, required=True)
        retry = query_number(request, "retry", None, 0, 3_600_000)
        conn = chat_clients.get(client)  # type: ignore[arg-type]
        if conn is None:
            return JSONResponse({"error": f"no chat client {client!r} is connected"}, status_code=404)
        del chat_clients[client]  # type: ignore[arg-type]
        await conn.drop(retry)
        return JSONResponse({"dropped": client})

    async def chat_clients_route(request: Request) -> Response:
        live = sorted(c for c, conn in chat_clients.items() if conn.live)
        return JSONResponse({"subscribers": chat_broadcast.subscribers(CHAT_TOPIC), "live": live,
                             "pid": os.getpid()})

    routes = [
        Route("/", page),
        Route("/events", events),
        Route("/stream", stream),
        Route("/fanout", fanout),
        Route("/idle", idle),
        Route("/firehose", firehose),
        Route("/chat", chat_page),
        Route("/chat/send", chat_send, methods=["POST"]),
        Route("/chat/events", chat_events),
        Route("/chat/_drop", chat_drop, methods=["POST"]),
        Route("/chat/_clients", chat_clients_route),
    ]
    try:
        from ._demo_conformance import ROUTES as extra
    except ImportError:
        extra = []
    routes.extend(extra)
    if metrics_on:
        routes.append(Route("/metrics", metrics_page))

    async def bad_request(request: Request, exc: Exception) -> Response:
        return Response(str(exc), status_code=400, media_type="text/plain")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        yield
        await chat_broadcast.aclose()  # the Redis reader and connections, if any

    app = Starlette(routes=routes, exception_handlers={ValueError: bad_request}, lifespan=lifespan)
    app.state.broadcast = broadcast
    app.state.chat_broadcast = chat_broadcast
    app.state.fanout_tasks = fanout_tasks
    return app


def app_from_env() -> Starlette:
    """``create_app`` configured by the environment: for ``uvicorn --workers N`` (an app factory).

    ``SSE_FAST_DEMO_BACKEND`` (default ``sse_fast``) and ``SSE_FAST_BROADCAST_URL``
    (default: none, memory) are ``create_app``'s arguments.
    """
    return create_app(os.environ.get("SSE_FAST_DEMO_BACKEND", "sse_fast"),
                      os.environ.get("SSE_FAST_BROADCAST_URL") or None)
