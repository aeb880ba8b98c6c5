"""The server app of ``benchmarks/redis_fanout.py``: one broadcast topic, memory or Redis backend.

Run by ``_harness.server(app="redis_app:app")`` (uvicorn, uvloop + httptools,
no access log, pinned). Configured by the environment:

- ``BENCH_BROADCAST_URL``: ``memory://`` (default) or a Redis URL
  (``redis://127.0.0.1:PORT/0``): the ``Broadcast(url=...)`` of this process;
- ``BENCH_KEY_PREFIX`` (default ``"bench:"``), ``BENCH_HISTORY`` (default 1000).

Endpoints:

- ``GET /health``: ``ok <pid>`` (the harness's readiness probe);
- ``GET /events?topic=T&ping=P``: ``BROADCAST.response(request, T, ping=P)``;
- ``GET /stats?topic=T``: JSON: pid, backend, subscribers of ``T`` here, and
  for Redis the reader's ``lag_seconds``, ``reconnects`` and ``connected``;
- ``GET /publish/start?topic=T&rate=R&count=N&start_at=W&seq=S&size=B``: a
  publisher task in this server (the in-process row): ``N`` events, event
  ``k`` due at wall time ``W + k / R`` (absolute schedule), data
  ``event_data(S + k, time.time(), ...)``; answers 202 at once;
- ``GET /publish/result``: JSON of the finished publisher (``publisher_summary``),
  or 409 while it runs.

The event data and the pacing are shared with the benchmark's publisher
process (``event_data``, ``pad_for``, ``paced``), so every row sends the
same ~100-byte JSON on the same schedule.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from urllib.parse import parse_qs

#: the data of an event with an empty pad, for sizing
_EMPTY = '{"seq":000000000,"t":1700000000.000000,"p":""}'


def pad_for(size: int) -> str:
    """The ``"p"`` padding that makes ``event_data`` about ``size`` bytes long."""
    return "x" * max(0, size - len(_EMPTY))


def event_data(seq: int, t: float, pad: str) -> str:
    """The data of event ``seq`` published at wall time ``t``: ``{"seq":N,"t":T,"p":"xx.."}``.

    ``seq`` has nine digits (fixed width: the client reads it without a regex).
    """
    return f'{{"seq":{seq:09d},"t":{t:.6f},"p":"{pad}"}}'


async def paced(rate: float, count: int, start_at: float, publish_one: Callable[[int], None],
                min_sleep: float = 0.001) -> dict:
    """Call ``publish_one(k)`` for ``k`` in ``range(count)``, event ``k`` due at wall time
    ``start_at + k / rate`` (an absolute schedule: a late wake-up publishes everything due).

    Between wake-ups it sleeps until the next due time, at least ``min_sleep``
    seconds, so a high rate publishes in bursts of ``rate * min_sleep`` events
    instead of spinning.

    Returns:
        ``{"late_max_ms", "started_at", "ended_at"}``: the worst lateness of a
        wake-up against its first due event, and the wall times of the first
        and last publish.
    """
    loop = asyncio.get_running_loop()
    t0 = loop.time() + (start_at - time.time())
    k = 0
    late = 0.0
    started = ended = None
    while k < count:
        now = loop.time()
        if now >= t0:
            due = min(count, int((now - t0) * rate) + 1)
            if due > k:
                late = max(late, now - (t0 + k / rate))
                if started is None:
                    started = time.time()
                while k < due:
                    publish_one(k)
                    k += 1
                ended = time.time()
        if k < count:
            await asyncio.sleep(max(min_sleep, t0 + k / rate - loop.time()))
    return {"late_max_ms": late * 1e3, "started_at": started, "ended_at": ended}


def publisher_summary(published: int, confirmed: int, errors: int, first_seq: int, last_seq: int,
                      timing: dict, last_confirm: float | None, cpu_seconds: float | None = None) -> dict:
    """The JSON a publisher reports (in-process task or publisher process alike)."""
    start = timing.get("started_at")
    ends = [x for x in (timing.get("ended_at"), last_confirm) if x is not None]
    end = max(ends) if ends else None
    span = end - start if start is not None and end is not None else 0.0
    return {"published": published, "confirmed": confirmed, "errors": errors, "first_seq": first_seq,
            "last_seq": last_seq, "late_max_ms": timing.get("late_max_ms"), "started_at": start,
            "ended_at": end, "seconds": span, "rate": max(confirmed - 1, 0) / span if span > 0 else 0.0,
            "cpu_seconds": cpu_seconds}


# ---------------------------------------------------------------- the app

_STATE: dict = {}


def _broadcast():
    b = _STATE.get("broadcast")
    if b is None:
        from sse_fast.broadcast import Broadcast

        url = os.environ.get("BENCH_BROADCAST_URL", "memory://")
        b = _STATE["broadcast"] = Broadcast(url=url, key_prefix=os.environ.get("BENCH_KEY_PREFIX", "bench:"),
                                            history=int(os.environ.get("BENCH_HISTORY", "1000")),
                                            publish_timeout=10.0)
    return b


async def _reply(send, status: int, body: str, ctype: bytes = b"text/plain") -> None:
    data = body.encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", ctype), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


async def _publisher(b, topic: str, rate: float, count: int, start_at: float, seq: int, size: int) -> dict:
    pad = pad_for(size)
    counts = {"confirmed": 0, "errors": 0, "last_confirm": None}

    def done(fut: asyncio.Future) -> None:
        if fut.cancelled() or fut.exception() is not None:
            counts["errors"] += 1
        else:
            counts["confirmed"] += 1
            counts["last_confirm"] = time.time()

    pending: list[asyncio.Future] = []

    def one(k: int) -> None:
        r = b.publish({"data": event_data(seq + k, time.time(), pad)}, topic)
        if isinstance(r, asyncio.Future):  # Redis: the id comes later
            r.add_done_callback(done)
            pending.append(r)
        else:
            counts["confirmed"] += 1
            counts["last_confirm"] = time.time()

    timing = await paced(rate, count, start_at, one)
    if pending:
        await asyncio.wait(pending, timeout=30)
    return publisher_summary(count, counts["confirmed"], counts["errors"], seq, seq + count - 1, timing,
                             counts["last_confirm"])


async def app(scope, receive, send) -> None:
    """The benchmark app (see the module docstring)."""
    if scope["type"] != "http":
        return
    path = scope["path"]
    q = {k: v[-1] for k, v in parse_qs(scope.get("query_string", b"").decode()).items()}
    topic = q.get("topic", "bench")
    if path == "/health":
        await _reply(send, 200, f"ok {os.getpid()}")
    elif path == "/events":
        from starlette.requests import Request

        b = _broadcast()
        await b.response(Request(scope, receive), topic, ping=float(q.get("ping", "15")))(scope, receive, send)
    elif path == "/stats":
        b = _broadcast()
        be = b.backend
        out = {"pid": os.getpid(), "backend": type(be).__name__, "subscribers": b.subscribers(topic)}
        for name in ("lag_seconds", "reconnects", "connected"):
            if hasattr(be, name):
                out[name] = getattr(be, name)
        await _reply(send, 200, json.dumps(out), b"application/json")
    elif path == "/publish/start":
        task = _STATE.get("publisher")
        if task is not None and not task.done():
            await _reply(send, 409, "a publisher is running")
            return
        _STATE["publisher"] = asyncio.get_running_loop().create_task(_publisher(
            _broadcast(), topic, float(q["rate"]), int(q["count"]), float(q["start_at"]), int(q.get("seq", "1")),
            int(q.get("size", "100"))))
        await _reply(send, 202, "started")
    elif path == "/publish/result":
        task = _STATE.get("publisher")
        if task is None or not task.done():
            await _reply(send, 409, "running" if task is not None else "no publisher")
        elif task.exception() is not None:
            await _reply(send, 500, repr(task.exception()))
        else:
            await _reply(send, 200, json.dumps(task.result()), b"application/json")
    else:
        await _reply(send, 404, "not found")
