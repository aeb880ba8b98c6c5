"""The app that ``tests/test_redis.py`` runs under uvicorn: a Redis-backed broadcast.

Configured by the environment: ``REDIS_URL`` (required), ``KEY_PREFIX``
(default ``"sse_fast:"``), ``HISTORY`` (default 1000), ``PING`` (seconds,
default 1).

Endpoints:

- ``GET /events?topic=T``: ``BROADCAST.response(request, T)`` (replay after
  ``Last-Event-ID``, pings every ``PING`` s); the response header
  ``x-pid`` names the worker process.
- ``GET /publish?topic=T&n=N&prefix=P``: publishes ``N`` events from this
  worker (data ``P<i>``), awaiting each; JSON ``{"ids": [...]}``, or 503 with
  the ``PublishError`` text.
- ``GET /stats``: JSON: pid, subscribers of topic ``t``, the backend's reconnects and state.
"""

from __future__ import annotations

import contextlib
import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

import sse_fast
from sse_fast.broadcast import Broadcast, PublishError

BROADCAST = Broadcast(url=os.environ["REDIS_URL"], key_prefix=os.environ.get("KEY_PREFIX", "sse_fast:"),
                      history=int(os.environ.get("HISTORY", "1000")), publish_timeout=1.0)
PING = float(os.environ.get("PING", "1"))


async def events(request: Request):
    topic = request.query_params.get("topic", "t")
    return BROADCAST.response(request, topic, ping=PING, headers={"x-pid": str(os.getpid())})


async def publish(request: Request):
    q = request.query_params
    ids = []
    try:
        for i in range(int(q.get("n", "1"))):
            ids.append(await BROADCAST.apublish({"data": f"{q.get('prefix', 'w')}{i}"}, q.get("topic", "t")))
    except PublishError as exc:
        return PlainTextResponse(str(exc), status_code=503)
    return JSONResponse({"ids": ids})


async def stats(request: Request):
    backend = BROADCAST.backend
    return JSONResponse({"pid": os.getpid(), "impl": sse_fast.IMPLEMENTATION,
                         "subscribers": BROADCAST.subscribers(request.query_params.get("topic", "t")),
                         "reconnects": backend.reconnects, "connected": backend.connected})


@contextlib.asynccontextmanager
async def lifespan(app):
    yield
    await BROADCAST.aclose()


app = Starlette(routes=[Route("/events", events), Route("/publish", publish), Route("/stats", stats)],
                lifespan=lifespan)
