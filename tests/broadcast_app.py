"""The app that ``tests/test_broadcast.py``'s real-server test runs under uvicorn (uvloop + httptools).

Endpoints (topic ``t`` unless ``topic=`` is given):

- ``GET /events``: ``BROADCAST.response(request, topic)``, replay after ``Last-Event-ID``.
- ``GET /publish?n=N&size=B&burst=K&interval=S&mode=M``: starts a server-side
  task that publishes ``N`` events (data ``"<seq:07d>"`` padded with ``x`` to
  ``B`` bytes), ``K`` at a time (without yielding in between), one burst every
  ``S`` seconds; answers at once. ``mode``: ``task`` (publish from the task:
  idle streams are sent to inline, one send per event), ``callback`` (each
  burst from a loop callback, not a task: appended to the streams' buffers,
  one send per burst), ``mixed`` (alternating; the default).
- ``GET /stats``: pid, encoder twin, subscribers now, events published, done.

Run as a module (``python -m tests.broadcast_app --port P --sndbuf BYTES``) it
serves ``app`` with uvicorn (uvloop + httptools) on a listening socket whose
``SO_SNDBUF`` is set, which the accepted connections inherit. On loopback the
kernel otherwise autotunes each connection's send buffer to megabytes, so a
client that stops reading would swallow a whole test's worth of events before
the server saw any backpressure; a fixed, small send buffer makes
``max_subscriber_bytes`` the bound that a stalled subscriber reaches.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import sse_fast
from sse_fast.broadcast import Broadcast

#: a subscriber this many bytes behind (buffered plus in flight) is cut
MAX_SUBSCRIBER_BYTES = 32 * 1024

BROADCAST = Broadcast(history=1000, max_subscriber_bytes=MAX_SUBSCRIBER_BYTES, on_slow="disconnect")
STATE = {"published": 0, "done": False}
_TASKS: set[asyncio.Task] = set()


async def events(request: Request):
    return BROADCAST.response(request, request.query_params.get("topic", "t"))


def _burst(topic: str, first: int, k: int, pad: str) -> None:
    for i in range(first, first + k):
        BROADCAST.publish({"data": f"{i:07d}{pad}"}, topic)
        STATE["published"] = i


async def _publish(topic: str, n: int, size: int, burst: int, interval: float, mode: str) -> None:
    loop = asyncio.get_running_loop()
    pad = "x" * max(0, size - 7)
    start = loop.time()
    i = bursts = 0
    while i < n:
        k = min(burst, n - i)
        if mode == "callback" or (mode == "mixed" and bursts % 2):
            loop.call_soon(_burst, topic, i + 1, k, pad)
        else:
            _burst(topic, i + 1, k, pad)
        i += k
        bursts += 1
        # absolute schedule: a late burst does not push the later ones back
        await asyncio.sleep(max(0.0, start + bursts * interval - loop.time()))
    await asyncio.sleep(0)  # the last callback has run
    STATE["done"] = True


async def publish(request: Request):
    q = request.query_params
    if q.get("mode", "mixed") not in ("task", "callback", "mixed"):
        return JSONResponse({"error": "mode must be task, callback or mixed"}, status_code=400)
    STATE["published"], STATE["done"] = 0, False
    task = asyncio.get_running_loop().create_task(_publish(
        q.get("topic", "t"), int(q.get("n", "2000")), int(q.get("size", "150")),
        int(q.get("burst", "20")), float(q.get("interval", "0.02")), q.get("mode", "mixed")))
    _TASKS.add(task)
    task.add_done_callback(_TASKS.discard)
    return JSONResponse({"started": True})


async def stats(request: Request):
    topic = request.query_params.get("topic", "t")
    return JSONResponse({"pid": os.getpid(), "impl": sse_fast.IMPLEMENTATION,
                         "subscribers": BROADCAST.subscribers(topic), **STATE})


app = Starlette(routes=[Route("/events", events), Route("/publish", publish), Route("/stats", stats)])


def main(argv=None) -> None:
    import uvicorn

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--sndbuf", type=int, default=0, help="SO_SNDBUF of every connection (0: the kernel's)")
    ap.add_argument("--max-subscriber-bytes", type=int, default=MAX_SUBSCRIBER_BYTES)
    args = ap.parse_args(argv)
    BROADCAST.max_subscriber_bytes = args.max_subscriber_bytes
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if args.sndbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, args.sndbuf)
    sock.bind(("127.0.0.1", args.port))
    sock.listen(4096)
    config = uvicorn.Config(app, loop="uvloop", http="httptools", access_log=False, log_level="warning",
                            lifespan="off", backlog=4096)
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
