"""The app that ``test_shutdown_servers.py`` runs under each ASGI server.

Environment (read at import, so it reaches spawned workers too):

- ``SSE_BACKEND``: ``sse_fast`` (default) or ``sse_starlette`` (3.7), the
  library whose ``EventSourceResponse`` and ``AppStatus`` are used.
- ``SHUTDOWN_LOG``: a file; one line per event is appended to it
  (``start <id> <pid>``, ``farewell <id> <pid>``, ``finally <id> <pid>``,
  ``lifespan-shutdown <pid>``), since the server process is gone when the
  test looks.
- ``SHUTDOWN_DISABLE_DRAIN=1``: call ``AppStatus.disable_automatic_graceful_drain()``.
- ``SHUTDOWN_TRIGGER``: a file path; when it appears, the app itself sets
  ``AppStatus.should_exit = True`` (a stand-in for "the app's own handler").
  One poller thread per process, started by the first stream.
- ``SHUTDOWN_WIRE=handle_exit``: the app wires shutdown itself, the
  sse-starlette way, in its lifespan startup (after the server installed its
  own handler): ``AppStatus.original_handler = signal.getsignal(SIGTERM);
  signal.signal(SIGTERM, AppStatus.handle_exit)``.

Endpoints: ``/ready`` (plain text), ``/stream?id=<id>`` (an endless stream:
``tick <n>`` every ``interval`` s, default 0.25; with ``farewell=1`` a
``shutdown_event`` and ``grace`` s of ``shutdown_grace_period``, and the
generator answers the event with ``event: farewell`` then returns; with
``stubborn=1`` as well, the generator ignores the event and only the grace
period ends it).

Runs on asyncio and on trio (anyio only: no asyncio call in the stream path).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

BACKEND = os.environ.get("SSE_BACKEND", "sse_fast")
if BACKEND == "sse_starlette":
    from sse_starlette.sse import AppStatus, EventSourceResponse
else:
    from sse_fast import EventSourceResponse
    from sse_fast.sse import AppStatus

LOG = os.environ.get("SHUTDOWN_LOG")
TRIGGER = os.environ.get("SHUTDOWN_TRIGGER")

if os.environ.get("SHUTDOWN_DISABLE_DRAIN") == "1":
    AppStatus.disable_automatic_graceful_drain()


def log(line: str) -> None:
    """Append one line to ``SHUTDOWN_LOG`` (O_APPEND: safe across worker processes)."""
    if not LOG:
        return
    fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{line} {os.getpid()}\n".encode())
    finally:
        os.close(fd)


_trigger_started: set[int] = set()
_trigger_lock = threading.Lock()


def _start_trigger_watch() -> None:
    """One poller per process for ``SHUTDOWN_TRIGGER`` (the app's own shutdown wiring)."""
    if not TRIGGER:
        return
    with _trigger_lock:
        if os.getpid() in _trigger_started:
            return
        _trigger_started.add(os.getpid())
    # a daemon thread, so that it works the same on asyncio and trio and under
    # servers that stop running the app's event loop
    def run() -> None:
        import time

        while not os.path.exists(TRIGGER):
            time.sleep(0.05)
        log("trigger")
        AppStatus.should_exit = True

    threading.Thread(target=run, daemon=True).start()


async def ready(request: Request):
    return PlainTextResponse(f"ok {os.getpid()} {BACKEND}")


async def stream(request: Request):
    sid = request.query_params.get("id", "0")
    interval = float(request.query_params.get("interval", "0.25"))
    farewell = request.query_params.get("farewell") == "1"
    grace = float(request.query_params.get("grace", "0"))
    stubborn = request.query_params.get("stubborn") == "1"
    event = anyio.Event() if farewell else None
    _start_trigger_watch()

    async def gen():
        log(f"start {sid}")
        try:
            n = 0
            while True:
                yield {"data": f"tick {n}", "id": str(n)}
                n += 1
                if event is not None and not stubborn:
                    with anyio.move_on_after(interval):
                        await event.wait()
                    if event.is_set():
                        log(f"farewell {sid}")
                        yield {"event": "farewell", "data": f"bye {sid}"}
                        return
                else:
                    await anyio.sleep(interval)
        finally:
            log(f"finally {sid}")

    kwargs: dict = {"ping": 600}
    if event is not None:
        kwargs.update(shutdown_event=event, shutdown_grace_period=grace)
    return EventSourceResponse(gen(), **kwargs)


@contextlib.asynccontextmanager
async def lifespan(app):
    if os.environ.get("SHUTDOWN_WIRE") == "handle_exit" and threading.current_thread() is threading.main_thread():
        AppStatus.original_handler = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, AppStatus.handle_exit)
        log("wired")
    yield
    log("lifespan-shutdown")


app = Starlette(routes=[Route("/ready", ready), Route("/stream", stream)], lifespan=lifespan)
