"""Producer patterns for ``tests/test_producers.py``: the generators, and an app serving them.

The producers (async generators and hand-written async iterators) are used twice:
in process, wrapped by the response class under test, and here, behind uvicorn
(``Server(impl, app="tests.producer_app:app")``). Each takes ``rec``, a dict
where it records what happened to it: ``rec["log"]`` (ordered happenings, e.g.
``"finally"``), ``rec["events"]`` (events produced). On the server ``rec`` is
``STATE[key]``, read back with ``GET /status?key=...`` (keys starting with ``_``
are left out); ``GET /health`` answers at once (is the event loop turning?).

``PRODUCER_APP_BACKEND=sse_starlette`` in the server's environment serves the
same endpoints with sse-starlette's response (to check the tests' expectations
against it by hand).
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import time

import anyio
import anyio.lowlevel
import anyio.to_thread
import httpx
from fastapi import Depends, FastAPI
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Mount, Route

import sse_fast

if os.environ.get("PRODUCER_APP_BACKEND") == "sse_starlette":
    from sse_starlette import EventSourceResponse
else:
    from sse_fast import EventSourceResponse

STATE: dict[str, dict] = {}


def new_rec() -> dict:
    return {"log": [], "events": 0, "error": None}


# -- the producers ------------------------------------------------------------------


async def spin(rec: dict, pause: str, n: int | None = None):
    """Events as fast as possible; between two, ``pause``: ``"sleep0"``
    (``await asyncio.sleep(0)``), ``"checkpoint"`` (``anyio.lowlevel.checkpoint()``)
    or ``"none"`` (never awaits). Endless unless ``n``."""
    try:
        i = 0
        while n is None or i < n:
            rec["events"] = i + 1
            yield {"data": i}
            i += 1
            if pause == "sleep0":
                await asyncio.sleep(0)
            elif pause == "checkpoint":
                await anyio.lowlevel.checkpoint()
    finally:
        rec["log"].append("finally")


async def deadline(rec: dict, timer: str, ending: str, seconds: float = 0.05):
    """A deadline (``asyncio.timeout`` or ``anyio.fail_after``) expires in the generator,
    which catches ``TimeoutError`` and returns (``ending="yield"``: after one more event)."""
    try:
        yield {"data": "before"}
        try:
            if timer == "asyncio":
                async with asyncio.timeout(seconds):
                    await asyncio.Event().wait()
            else:
                with anyio.fail_after(seconds):
                    await asyncio.Event().wait()
        except TimeoutError:
            rec["log"].append("timeout")
            if ending == "yield":
                yield {"data": "timed out"}
            return
        yield {"data": "not reached"}
    finally:
        rec["log"].append("finally")


class Soon:
    """An awaitable that is neither a coroutine nor a future: ``value`` after a 1 ms
    sleep (raised if it is an exception)."""

    def __init__(self, value) -> None:
        self.value = value

    def __await__(self):
        yield from asyncio.sleep(0.001).__await__()
        if isinstance(self.value, BaseException):
            raise self.value
        return self.value


def _settle(fut: asyncio.Future, value) -> None:
    if isinstance(value, BaseException):
        fut.set_exception(value)
    else:
        fut.set_result(value)


class AwaitableFeed:
    """An async iterator whose ``__anext__`` is a plain ``def`` returning an awaitable.

    ``kind``: ``"future-now"`` (an ``asyncio.Future`` already resolved),
    ``"future-later"`` (resolved 1 ms later by ``loop.call_later``), ``"awaitable"``
    (a ``Soon``), ``"coroutine"`` (a coroutine object). ``end``: where the end comes
    from: ``"awaitable"`` (the awaitable raises ``StopAsyncIteration``) or ``"raise"``
    (``__anext__`` itself raises it).
    """

    def __init__(self, rec: dict, n: int, kind: str, end: str) -> None:
        self.rec, self.n, self.kind, self.end, self.i = rec, n, kind, end, 0

    def __aiter__(self):
        return self

    def __anext__(self):
        if self.i < self.n:
            value = {"data": f"{self.kind} {self.i}", "id": str(self.i)}
            self.i += 1
            self.rec["events"] = self.i
        elif self.end == "raise":
            self.rec["log"].append("end")
            raise StopAsyncIteration
        else:
            self.rec["log"].append("end")
            value = StopAsyncIteration()
        if self.kind == "awaitable":
            return Soon(value)
        if self.kind == "coroutine":
            return self._coro(value)
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        if self.kind == "future-now":
            _settle(fut, value)
        else:
            loop.call_later(0.001, _settle, fut, value)
        return fut

    async def _coro(self, value):
        return await Soon(value)


ERRORS = {"TimeoutError": TimeoutError, "FileNotFoundError": FileNotFoundError,
          "ConnectionError": ConnectionError, "LookupError": LookupError}


async def failing(rec: dict, error: str, wait: bool = True):
    """Two events, then ``ERRORS[error]("producer failed")`` (after a 10 ms sleep if ``wait``)."""
    try:
        yield {"data": "one"}
        yield {"data": "two"}
        if wait:
            await asyncio.sleep(0.01)
        raise ERRORS[error]("producer failed")
    finally:
        rec["log"].append("finally")


async def timed_children(rec: dict, awaited: str, timer: str, seconds: float = 0.05):
    """A deadline expires around ``await asyncio.gather(child())`` (``awaited="gather"``)
    or ``await task`` (``"task"``); the child records its cancellation, the generator
    handles ``TimeoutError`` and goes on."""

    async def child():
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            rec["log"].append("child cancelled")
            raise

    try:
        yield {"data": "before"}
        try:
            if timer == "asyncio":
                async with asyncio.timeout(seconds):
                    await (asyncio.gather(child()) if awaited == "gather" else asyncio.ensure_future(child()))
            else:
                with anyio.fail_after(seconds):
                    await (asyncio.gather(child()) if awaited == "gather" else asyncio.ensure_future(child()))
        except TimeoutError:
            rec["log"].append("timeout")
        yield {"data": "after"}
    finally:
        rec["log"].append("finally")


async def pusher(rec: dict, stream, n: int | None):
    """A ``data_sender_callable`` body: ``n`` events (endless if ``None``) into ``stream``."""
    rec["log"].append("sender started")
    try:
        async with stream:
            i = 0
            while n is None or i < n:
                await stream.send({"data": f"pushed {i}", "id": str(i)})
                rec["events"] = i = i + 1
                await asyncio.sleep(0.001)
    finally:
        rec["log"].append("sender finally")


async def task_group(rec: dict, kind: str, n: int | None, hang: bool = False, before_put=None):
    """A worker in an anyio or asyncio task group feeds the generator, which yields
    inside the group: ``n`` items 1 ms apart (endless if ``None``), then the end, or
    with ``hang`` a wait forever. ``before_put(i)`` is called before item ``i`` is put."""

    async def work(put):
        try:
            i = 0
            while n is None or i < n:
                if before_put is not None:
                    before_put(i)
                await put({"data": f"{kind} {i}"})
                i += 1
                await asyncio.sleep(0.001)
            if hang:
                await asyncio.Event().wait()
            await put(None)
        except asyncio.CancelledError:
            rec["log"].append("worker cancelled")
            raise

    try:
        if kind == "anyio":
            send, receive = anyio.create_memory_object_stream(1)
            with send, receive:  # closed after the group has ended
                async with anyio.create_task_group() as tg:
                    tg.start_soon(work, send.send)
                    while (item := await receive.receive()) is not None:
                        rec["events"] += 1
                        yield item
        else:
            queue: asyncio.Queue = asyncio.Queue(1)
            async with asyncio.TaskGroup() as tg:
                tg.create_task(work(queue.put))
                while (item := await queue.get()) is not None:
                    rec["events"] += 1
                    yield item
    finally:
        rec["log"].append("finally")


def _square(i: int) -> int:
    time.sleep(0.002)
    return i * i


async def threads(rec: dict, kind: str, n: int | None):
    """Each event computed in a worker thread (``anyio.to_thread.run_sync`` or
    ``asyncio.to_thread``, 2 ms each); endless unless ``n``."""
    try:
        i = 0
        while n is None or i < n:
            if kind == "anyio":
                value = await anyio.to_thread.run_sync(_square, i)
            else:
                value = await asyncio.to_thread(_square, i)
            rec["events"] += 1
            yield {"data": value}
            i += 1
    finally:
        rec["log"].append("finally")


async def _shielded_work(rec: dict, seconds: float, on_shield) -> None:
    rec["started"] += 1
    if on_shield is not None:
        on_shield(rec)
    await asyncio.sleep(seconds)
    rec["done"] += 1


async def shielded(rec: dict, kind: str, n: int | None, on_shield=None, long_at: int | None = None):
    """Between events, 10 ms of work (1 s for the ``long_at``-th) under ``asyncio.shield``
    or ``anyio.CancelScope(shield=True)`` (``rec["started"]``/``rec["done"]`` count it;
    ``on_shield(rec)`` is called as it starts), then a 1 ms unshielded sleep. Endless unless ``n``."""
    rec.update(started=0, done=0)
    try:
        i = 0
        while n is None or i < n:
            yield {"data": i}
            i += 1
            seconds = 1.0 if rec["started"] + 1 == long_at else 0.01
            if kind == "asyncio":
                await asyncio.shield(_shielded_work(rec, seconds, on_shield))
            else:
                with anyio.CancelScope(shield=True):
                    await _shielded_work(rec, seconds, on_shield)
            await asyncio.sleep(0.001)
    finally:
        rec["log"].append(f"finally {rec['started']}/{rec['done']}")


async def farewell(rec: dict, on_wait=None, interval: float = 0.01):
    """Endless (``interval`` s apart); on ``CancelledError`` one more event, then the error
    again. ``on_wait(i)`` is called after event ``i``, as the wait begins."""
    i = 0
    try:
        while True:
            yield {"data": i}
            if on_wait is not None:
                on_wait(i)
            i += 1
            await asyncio.sleep(interval)
    except asyncio.CancelledError:
        rec["log"].append("cancelled")
        yield {"event": "farewell", "data": "bye"}
        rec["log"].append("after farewell")
        raise
    finally:
        rec["log"].append("finally")


async def relay(rec: dict, client: httpx.AsyncClient, url: str):
    """Relays the non-empty lines of an upstream streaming response as events."""
    try:
        async with client, client.stream("GET", url) as upstream:
            async for line in upstream.aiter_lines():
                if line:
                    rec["events"] += 1
                    yield {"data": line}
    finally:
        rec["log"].append("finally")


async def upstream_lines(rec: dict, n: int | None):
    """``line <i>\\n`` every 2 ms (the upstream of ``relay``); endless unless ``n``."""
    try:
        i = 0
        while n is None or i < n:
            yield f"line {i}\n".encode()
            i += 1
            await asyncio.sleep(0.002)
    finally:
        rec["log"].append("upstream finally")


REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="unset")


async def context_echo(rec: dict, n: int):
    """``n`` events carrying ``REQUEST_ID``'s value where the generator runs."""
    try:
        for _ in range(n):
            await asyncio.sleep(0.001)
            yield {"data": REQUEST_ID.get()}
    finally:
        rec["log"].append("finally")


# -- apps built around a response class ------------------------------------------------


class PureContextMiddleware:
    """Pure ASGI middleware: ``REQUEST_ID`` from the ``x-request-id`` header."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        value = dict(scope.get("headers", [])).get(b"x-request-id", b"none").decode()
        token = REQUEST_ID.set(value)
        try:
            await self.app(scope, receive, send)
        finally:
            REQUEST_ID.reset(token)


class BaseContextMiddleware(BaseHTTPMiddleware):
    """Starlette ``BaseHTTPMiddleware``: ``REQUEST_ID`` from the ``x-request-id`` header."""

    async def dispatch(self, request, call_next):
        REQUEST_ID.set(request.headers.get("x-request-id", "none"))
        return await call_next(request)


def context_app(response_class, kind: str, rec_for) -> Starlette:
    """``GET /ctx?key=&n=`` streams ``context_echo`` behind ``kind`` ("pure"/"base") middleware."""

    async def ctx(request: Request):
        rec = rec_for(request.query_params.get("key", "ctx"))
        return response_class(context_echo(rec, int(request.query_params.get("n", "3"))))

    mw = PureContextMiddleware if kind == "pure" else BaseContextMiddleware
    return Starlette(routes=[Route("/ctx", ctx)], middleware=[Middleware(mw)])


def fastapi_app(response_class, rec_for) -> FastAPI:
    """``GET /feed?key=&n=``: a FastAPI endpoint with a ``yield`` dependency and a
    background task; ``rec["log"]`` gets the order of setup, events, ends and teardown."""
    api = FastAPI()

    def rec_of(key: str = "fastapi") -> dict:
        return rec_for(key)

    async def resource(rec: dict = Depends(rec_of)):  # noqa: B008 (FastAPI's idiom)
        rec["log"].append("dependency setup")
        try:
            yield "resource"
        finally:
            rec["log"].append("dependency teardown")

    @api.get("/feed")
    async def feed(n: int = 3, rec: dict = Depends(rec_of), res: str = Depends(resource)):  # noqa: B008
        async def gen():
            try:
                for i in range(n):
                    await asyncio.sleep(0.001)
                    rec["log"].append(f"event {i}")
                    yield {"data": f"{res} {i}"}
            finally:
                rec["log"].append("stream finally")

        return response_class(gen(), background=BackgroundTask(rec["log"].append, "background task"))

    return api


# -- the server app ---------------------------------------------------------------------


def _rec(key: str) -> dict:
    return STATE.setdefault(key, new_rec())


class Recording:
    """Wraps a response to record the exception that leaves it, if any."""

    def __init__(self, response, rec: dict) -> None:
        self.response = response
        self.rec = rec

    async def __call__(self, scope, receive, send):
        try:
            await self.response(scope, receive, send)
        except BaseException as exc:
            self.rec["error"] = type(exc).__name__
            raise
        else:
            self.rec["log"].append("response returned")


def _n(request: Request, default: str = "5") -> int | None:
    n = int(request.query_params.get("n", default))
    return None if n < 0 else n


def _stream(make):
    """A route whose response streams ``make(rec, request)``, ``rec`` = ``STATE[key]``."""

    async def endpoint(request: Request):
        rec = _rec(request.query_params["key"])
        return Recording(EventSourceResponse(make(rec, request)), rec)

    return endpoint


async def health(request: Request):
    return PlainTextResponse("ok")


async def status(request: Request):
    state = STATE.get(request.query_params["key"])
    if state is not None:
        state = {k: v for k, v in state.items() if not k.startswith("_")}
    return JSONResponse({"state": state, "pid": os.getpid(), "impl": sse_fast.IMPLEMENTATION})


async def push(request: Request):
    """``pusher`` as ``data_sender_callable``, a memory stream (``buffer`` items) as content."""
    rec = _rec(request.query_params["key"])
    send, receive = anyio.create_memory_object_stream(int(request.query_params.get("buffer", "0")))
    return Recording(EventSourceResponse(receive, data_sender_callable=lambda: pusher(rec, send, _n(request))), rec)


async def upstream(request: Request):
    rec = _rec(request.query_params["key"])
    return StreamingResponse(upstream_lines(rec, _n(request)), media_type="text/plain")


def _relay(rec, request):
    port = request.scope["server"][1]
    url = f"http://127.0.0.1:{port}/upstream?key={request.query_params['key']}&n={request.query_params.get('n', '5')}"
    return relay(rec, httpx.AsyncClient(timeout=5), url)


app = Starlette(routes=[
    Route("/health", health),
    Route("/status", status),
    Route("/spin", _stream(lambda rec, r: spin(rec, r.query_params["pause"]))),
    Route("/deadline", _stream(lambda rec, r: deadline(rec, r.query_params["timer"], r.query_params["ending"]))),
    Route("/anext", _stream(lambda rec, r: AwaitableFeed(rec, _n(r), r.query_params["kind"], r.query_params["end"]))),
    Route("/failing", _stream(lambda rec, r: failing(rec, r.query_params["error"]))),
    Route("/children", _stream(lambda rec, r: timed_children(rec, r.query_params["awaited"], r.query_params["timer"]))),
    Route("/push", push),
    Route("/taskgroup", _stream(lambda rec, r: task_group(rec, r.query_params["kind"], _n(r), "hang" in r.query_params))),
    Route("/threads", _stream(lambda rec, r: threads(rec, r.query_params["kind"], _n(r)))),
    Route("/shielded", _stream(lambda rec, r: shielded(rec, r.query_params["kind"], _n(r), long_at=3))),
    Route("/farewell", _stream(lambda rec, r: farewell(rec, interval=0.1))),
    Route("/upstream", upstream),
    Route("/relay", _stream(_relay)),
    Mount("/pure", context_app(EventSourceResponse, "pure", _rec)),
    Mount("/base", context_app(EventSourceResponse, "base", _rec)),
    Mount("/fastapi", fastapi_app(EventSourceResponse, _rec)),
])
