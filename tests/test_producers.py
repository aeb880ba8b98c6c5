"""Producer patterns: what a content iterator may await, raise or do when stopped.

Every pattern runs in process (hand-written ASGI ``receive``/``send``, a guard
timeout) on both encoder twins, and where it is sse-starlette's contract as
well, side by side with ``sse_starlette.EventSourceResponse`` 3.7 (fixture
``resp_cls``: "cython", "python", "sse_starlette"); and on a real uvicorn server
(uvloop + httptools, both twins, ``tests/producer_app.py``, ``server`` mark).
The producers themselves live in ``tests/producer_app.py``, shared by both.

1. ``await asyncio.sleep(0)`` / ``anyio.lowlevel.checkpoint()`` between events:
   other tasks get turns, a disconnect ends the stream (``finally`` runs), the
   server answers ``/health`` while the client reads and after it left.
2. ``asyncio.timeout`` / ``anyio.fail_after`` expiring in the generator, which
   catches ``TimeoutError`` and returns: a clean end, no error.
3. ``__anext__`` returning an ``asyncio.Future`` (resolved, or resolved later)
   or a custom awaitable; the end delivered through the awaitable.
4. a plain ``def __anext__`` returning awaitables and raising
   ``StopAsyncIteration`` itself: a clean end.
5. the producer raising ``OSError`` subclasses: raised out of the response as
   themselves, after the events produced before; the server logs them.
6. a deadline around ``await asyncio.gather(child)`` / ``await task``: the
   children are cancelled before the generator handles ``TimeoutError``.
7. ``data_sender_callable`` runs while ``send(http.response.start)`` is still
   pending, and its ``finally`` runs when that send fails.
8. a producer that never awaits: stopped on disconnect, the server stays idle
   and responsive.

Regressions: anyio/asyncio task groups, ``to_thread``, ``asyncio.shield`` /
shielded ``CancelScope``, a farewell event after ``CancelledError``,
contextvars set by middleware (pure ASGI, ``BaseHTTPMiddleware``), relaying an
httpx upstream stream, a FastAPI ``yield`` dependency with a ``BackgroundTask``.
A disconnect seen in the same loop turn as the generator's await completes is
pinned down deterministically (it still reaches the generator as
``CancelledError`` at its next await, as in sse-starlette); the other
disconnect tests let the client leave while the generator surely waits.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import anyio
import httpx
import psutil
import pytest
from sse_starlette import EventSourceResponse as RefResponse

from sse_fast import EventSourceResponse, _encoder

from . import producer_app as P
from . import rawhttp
from .conftest import _NAMES, Server, load_twin, twin_params

GUARD = 5.0


# -- in process ----------------------------------------------------------------------


@pytest.fixture(params=twin_params() + ["sse_starlette"])
def resp_cls(request, monkeypatch):
    """The response class under test: sse_fast on either twin (as ``impl``), or sse-starlette."""
    if request.param == "sse_starlette":
        return RefResponse
    twin = load_twin(request.param)
    for name in _NAMES:
        monkeypatch.setattr(_encoder, name, getattr(twin, name))
    return EventSourceResponse


class Starved(Exception):
    """The response kept the event loop from turning (the guard's timer could not fire)."""


class Peer:
    """The client of one in-process request.

    ``receive`` gives the request, then waits for ``disconnect()``; ``send``
    records the messages. A ``send`` after ``starve_after`` seconds raises
    ``Starved``, so a response that never lets the loop turn fails instead of hanging.
    """

    def __init__(self, starve_after: float = GUARD, on_send=None) -> None:
        self.messages: list[dict] = []
        self._gone = asyncio.Event()
        self._requested = False
        self._deadline = time.monotonic() + starve_after
        self.on_send = on_send

    async def receive(self):
        if not self._requested:
            self._requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self._gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message):
        if time.monotonic() > self._deadline:
            raise Starved("the event loop got no turn: still sending past the guard time")
        if self.on_send is not None:
            await self.on_send(message)
        self.messages.append(message)

    def disconnect(self) -> None:
        self._gone.set()

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.messages if m["type"] == "http.response.body")

    @property
    def ended(self) -> bool:
        """The last message ends the body (``more_body=False``)."""
        last = self.messages[-1] if self.messages else {}
        return last.get("type") == "http.response.body" and not last.get("more_body", False)


def scope(path="/", query=b"", headers=()):
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
            "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
            "query_string": query, "headers": [(b"host", b"test"), *headers],
            "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 80)}


async def run(app, peer=None, sc=None, disconnect_after=None, guard=GUARD):
    """Drive ``app`` (a response or an ASGI app) to its end within ``guard`` seconds."""
    peer = peer or Peer(guard)
    if disconnect_after is not None:
        asyncio.get_running_loop().call_later(disconnect_after, peer.disconnect)
    try:
        with anyio.fail_after(guard) as guard_scope:
            await app(sc or scope(), peer.receive, peer.send)
    except TimeoutError:
        if guard_scope.cancel_called:
            raise AssertionError(f"the response did not end within {guard} s") from None
        raise
    return peer


class Turns:
    """Another task, doing ``await asyncio.sleep(0)`` in a loop: how many turns it gets."""

    def __init__(self) -> None:
        self.n = 0
        self._task = asyncio.create_task(self._spin())

    async def _spin(self) -> None:
        while True:
            await asyncio.sleep(0)
            self.n += 1

    async def stop(self) -> int:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        return self.n


def datas(body: bytes) -> list[str]:
    """The ``data`` of each event (comment-only blocks, i.e. pings, left out)."""
    out = []
    for block in body.split(b"\r\n\r\n")[:-1]:
        lines = [line[6:].decode() for line in block.split(b"\r\n") if line.startswith(b"data: ")]
        if lines:
            out.append("\n".join(lines))
    return out


def events(*data: object) -> bytes:
    return b"".join(f"data: {d}\r\n\r\n".encode() for d in data)


def counting(body: bytes) -> bool:
    """The body is whole events ``data: 0``, ``data: 1``, ... (at least one)."""
    got = datas(body)
    return bool(got) and got == [str(i) for i in range(len(got))] and body.endswith(b"\r\n\r\n")


# 1. sleep(0) / checkpoint between events ----------------------------------------------


@pytest.mark.parametrize("pause", ["sleep0", "checkpoint"])
def test_bare_yield_producer_stops_on_disconnect(resp_cls, pause):
    rec = P.new_rec()
    peer = asyncio.run(run(resp_cls(P.spin(rec, pause)), disconnect_after=0.1, guard=3))
    assert rec["log"] == ["finally"]
    assert counting(peer.body)
    assert not peer.ended  # the client is gone: no end of body (as sse-starlette)


@pytest.mark.parametrize("pause", ["sleep0", "checkpoint"])
def test_bare_yield_producer_lets_other_tasks_run(resp_cls, pause):
    """20,000 events with a bare yield between each: another task gets many turns meanwhile."""

    async def main():
        turns = Turns()
        peer = await run(resp_cls(P.spin(P.new_rec(), pause, n=20_000)))
        return peer, await turns.stop()

    peer, turns = asyncio.run(main())
    assert datas(peer.body) == [str(i) for i in range(20_000)] and peer.ended
    assert turns >= 1000, f"the other task got {turns} turns while 20,000 events were streamed"


# 2. a deadline expiring in the generator ---------------------------------------------


@pytest.mark.parametrize("ending", ["return", "yield"])
@pytest.mark.parametrize("timer", ["asyncio", "anyio"])
def test_deadline_handled_in_generator_ends_cleanly(resp_cls, timer, ending):
    rec = P.new_rec()
    t0 = time.monotonic()
    peer = asyncio.run(run(resp_cls(P.deadline(rec, timer, ending))))
    assert peer.body == events("before", *(["timed out"] if ending == "yield" else []))
    assert peer.ended
    assert rec["log"] == ["timeout", "finally"]
    assert 0.04 < time.monotonic() - t0 < 2


# 3. and 4. hand-written __anext__ -----------------------------------------------------


def feed_body(kind: str, n: int) -> bytes:
    return b"".join(f"id: {i}\r\ndata: {kind} {i}\r\n\r\n".encode() for i in range(n))


@pytest.mark.parametrize("kind", ["future-now", "future-later", "awaitable"])
def test_anext_returning_future_or_awaitable(resp_cls, kind):
    rec = P.new_rec()
    peer = asyncio.run(run(resp_cls(P.AwaitableFeed(rec, 20, kind, end="awaitable"))))
    assert peer.body == feed_body(kind, 20)
    assert peer.ended and rec["log"] == ["end"]


@pytest.mark.parametrize("n", [0, 20])
@pytest.mark.parametrize("kind", ["coroutine", "future-now", "awaitable"])
def test_plain_anext_raising_stop_async_iteration(resp_cls, kind, n):
    rec = P.new_rec()
    peer = asyncio.run(run(resp_cls(P.AwaitableFeed(rec, n, kind, end="raise"))))
    assert peer.body == feed_body(kind, n)
    assert peer.ended and rec["log"] == ["end"]


# 5. OSError from the producer --------------------------------------------------------


@pytest.mark.parametrize("wait", [True, False], ids=["after-sleep", "at-once"])
@pytest.mark.parametrize("error", ["TimeoutError", "FileNotFoundError", "ConnectionError"])
def test_producer_oserror_propagates_as_itself(resp_cls, error, wait):
    rec = P.new_rec()
    peer = Peer()
    with pytest.raises(P.ERRORS[error], match="producer failed") as info:
        asyncio.run(run(resp_cls(P.failing(rec, error, wait)), peer=peer))
    assert type(info.value) is P.ERRORS[error]  # itself, not a subclass, not a group
    assert peer.body == events("one", "two")  # what came before the error was sent
    assert not peer.ended
    assert rec["log"] == ["finally"]


# 6. a deadline around gather / a task ---------------------------------------------------


@pytest.mark.parametrize("timer", ["asyncio", "anyio"])
@pytest.mark.parametrize("awaited", ["gather", "task"])
def test_deadline_around_children_cancels_them(resp_cls, awaited, timer):
    rec = P.new_rec()

    async def main():
        peer = await run(resp_cls(P.timed_children(rec, awaited, timer)))
        rec["log"].append("returned")
        return peer

    peer = asyncio.run(main())
    assert rec["log"] == ["child cancelled", "timeout", "finally", "returned"]
    assert peer.body == events("before", "after") and peer.ended


# 7. data_sender_callable and the start message -------------------------------------------


def test_data_sender_runs_while_start_is_pending(resp_cls):
    """The start send waits until the data sender has pushed an event: no deadlock."""
    rec = P.new_rec()

    async def main():
        send_stream, receive_stream = anyio.create_memory_object_stream(1)

        async def on_send(message):
            if message["type"] == "http.response.start":
                while not rec["events"]:  # pushed into the stream's buffer
                    await asyncio.sleep(0.001)

        peer = Peer(on_send=on_send)
        resp = resp_cls(receive_stream, data_sender_callable=lambda: P.pusher(rec, send_stream, 3))
        with send_stream, receive_stream:  # sse-starlette leaves the content open
            return await run(resp, peer=peer, guard=2)

    peer = asyncio.run(main())
    assert peer.messages[0]["type"] == "http.response.start"
    assert peer.body == b"".join(f"id: {i}\r\ndata: pushed {i}\r\n\r\n".encode() for i in range(3))
    assert peer.ended
    assert rec["log"] == ["sender started", "sender finally"]


class StartFailed(Exception):
    pass


def test_data_sender_cleanup_runs_when_start_send_fails(resp_cls):
    rec = P.new_rec()

    async def main():
        send_stream, receive_stream = anyio.create_memory_object_stream(0)

        async def on_send(message):
            if message["type"] == "http.response.start":
                while "sender started" not in rec["log"]:
                    await asyncio.sleep(0.001)
                raise StartFailed("start send failed")

        resp = resp_cls(receive_stream, data_sender_callable=lambda: P.pusher(rec, send_stream, None))
        with send_stream, receive_stream:
            await run(resp, peer=Peer(on_send=on_send), guard=2)

    with pytest.raises(StartFailed):
        asyncio.run(main())
    assert rec["log"] == ["sender started", "sender finally"]


# 8. a producer that never awaits ---------------------------------------------------------


def test_never_awaiting_producer_stops_on_disconnect(impl):
    """sse_fast only: sse-starlette would starve the loop here (no send ever suspends in process)."""
    rec = P.new_rec()

    async def main():
        turns = Turns()
        peer = await run(EventSourceResponse(P.spin(rec, "none")), disconnect_after=0.2)
        return peer, await turns.stop()

    peer, turns = asyncio.run(main())
    assert rec["log"] == ["finally"]
    assert counting(peer.body) and not peer.ended
    assert turns >= 5


# regressions: patterns that work -------------------------------------------------------------


@pytest.mark.parametrize("kind", ["anyio", "asyncio"])
def test_task_group_in_generator(resp_cls, kind):
    rec = P.new_rec()
    peer = asyncio.run(run(resp_cls(P.task_group(rec, kind, 20))))
    assert peer.body == events(*(f"{kind} {i}" for i in range(20))) and peer.ended
    assert rec["log"] == ["finally"]


@pytest.mark.parametrize("kind", ["anyio", "asyncio"])
def test_task_group_in_generator_on_disconnect(resp_cls, kind):
    """The client leaves while the generator and its worker wait."""
    rec = P.new_rec()
    peer = asyncio.run(run(resp_cls(P.task_group(rec, kind, 5, hang=True)), disconnect_after=0.1))
    assert rec["log"] == ["worker cancelled", "finally"]
    assert peer.body == events(*(f"{kind} {i}" for i in range(5))) and not peer.ended


@pytest.mark.parametrize("kind", ["anyio", "asyncio"])
def test_task_group_in_generator_on_disconnect_as_an_item_arrives(resp_cls, kind):
    """The disconnect is seen in the same loop turn as the worker hands the generator an
    item: as sse-starlette, the generator is cancelled at its next await inside the group
    (not closed at its ``yield``, which asyncio's TaskGroup would turn into a
    ``BaseExceptionGroup(GeneratorExit)`` leaving the response)."""
    rec = P.new_rec()

    async def main():
        peer = Peer()
        gen = P.task_group(rec, kind, None, before_put=lambda i: i == 3 and peer.disconnect())
        return await run(resp_cls(gen), peer=peer)

    peer = asyncio.run(main())
    assert rec["log"] == ["worker cancelled", "finally"]
    assert datas(peer.body)[:3] == [f"{kind} {i}" for i in range(3)] and not peer.ended


@pytest.mark.parametrize("kind", ["anyio", "asyncio"])
def test_to_thread_in_generator(resp_cls, kind):
    rec = P.new_rec()
    peer = asyncio.run(run(resp_cls(P.threads(rec, kind, 10))))
    assert peer.body == events(*(i * i for i in range(10))) and peer.ended
    rec = P.new_rec()
    peer = asyncio.run(run(resp_cls(P.threads(rec, kind, None)), disconnect_after=0.1))
    assert rec["log"] == ["finally"] and rec["events"] >= 3 and not peer.ended


@pytest.mark.parametrize("kind", ["asyncio", "anyio"])
def test_shield_in_generator(resp_cls, kind):
    rec = P.new_rec()
    peer = asyncio.run(run(resp_cls(P.shielded(rec, kind, 10))))
    assert peer.body == events(*range(10)) and peer.ended
    assert rec["log"] == ["finally 10/10"]


def disconnect_in_third_shield(peer):
    def on_shield(rec):
        if rec["started"] == 3:
            peer.disconnect()

    return on_shield


def test_shielded_cancel_scope_finishes_before_disconnect_cancels(resp_cls):
    """A disconnect while the producer is in ``anyio.CancelScope(shield=True)``: the
    shielded work completes, the generator is cancelled after it."""
    rec = P.new_rec()

    async def main():
        peer = Peer()
        await run(resp_cls(P.shielded(rec, "anyio", None, disconnect_in_third_shield(peer))), peer=peer)

    asyncio.run(main())
    assert rec["log"] == ["finally 3/3"]


def test_asyncio_shield_work_completes_after_disconnect(resp_cls):
    """A disconnect while the producer awaits ``asyncio.shield(work)``: the generator is
    cancelled (its ``finally`` runs first), the shielded work goes on and completes."""
    rec = P.new_rec()

    async def main():
        peer = Peer()
        await run(resp_cls(P.shielded(rec, "asyncio", None, disconnect_in_third_shield(peer))), peer=peer)
        with anyio.fail_after(1):
            while rec["done"] < 3:
                await asyncio.sleep(0.001)

    asyncio.run(main())
    assert rec["log"] == ["finally 3/2"] and rec["started"] == rec["done"] == 3


def test_farewell_after_cancelled_error(resp_cls):
    """The client leaves while the generator awaits: it catches ``CancelledError``,
    yields a farewell, re-raises.

    The response ends without error or hang, and the ``finally`` runs. On the wire
    (in process, where ``send`` still works after the disconnect): sse-starlette
    sends the farewell to the departed client, sse_fast drops it; either way
    nothing comes after it and the body is not ended.
    """
    rec = P.new_rec()

    async def main():
        peer = Peer()
        gen = P.farewell(rec, on_wait=lambda i: i == 5 and peer.disconnect())
        return await run(resp_cls(gen), peer=peer)

    peer = asyncio.run(main())
    assert rec["log"][0] == "cancelled" and rec["log"][-1] == "finally"
    assert set(rec["log"][1:-1]) <= {"after farewell"}
    body = peer.body
    farewell = b"event: farewell\r\ndata: bye\r\n\r\n"
    if body.endswith(farewell):
        body = body[: -len(farewell)]
    assert datas(body) == [str(i) for i in range(6)] and farewell not in body
    assert not peer.ended


def test_disconnect_reaches_generator_as_cancelled_error_when_its_await_just_completed(resp_cls):
    """The disconnect is seen in the same loop turn as the generator's await completes:
    sse-starlette still delivers ``CancelledError`` at the generator's next await (its
    ``except CancelledError`` runs), rather than closing it at the ``yield``
    (``GeneratorExit``, only ``finally`` runs)."""
    rec = P.new_rec()

    async def main():
        loop = asyncio.get_running_loop()
        peer = Peer()

        def both(fut):
            peer.disconnect()  # the disconnect listener wakes first ...
            fut.set_result(None)  # ... then the generator

        async def gen():
            try:
                for i in range(1000):
                    yield {"data": i}
                    if i == 3:
                        fut = loop.create_future()
                        loop.call_soon(both, fut)
                        await fut
                    else:
                        await asyncio.sleep(0.001)
            except asyncio.CancelledError:
                rec["log"].append("cancelled")
                raise
            finally:
                rec["log"].append("finally")

        return await run(resp_cls(gen()), peer=peer)

    peer = asyncio.run(main())
    assert rec["log"] == ["cancelled", "finally"]
    assert datas(peer.body)[:4] == ["0", "1", "2", "3"] and not peer.ended


@pytest.mark.parametrize("kind", ["pure", "base"])
def test_contextvar_from_middleware_seen_by_generator(resp_cls, kind):
    app = P.context_app(resp_cls, kind, lambda key: P.new_rec())
    peer = asyncio.run(run(app, sc=scope("/ctx", b"n=3", [(b"x-request-id", b"req-42")])))
    assert peer.body == events("req-42", "req-42", "req-42") and peer.ended


def test_httpx_upstream_relay(resp_cls):
    up = P.new_rec()

    def handler(request):
        return httpx.Response(200, content=P.upstream_lines(up, 10))

    rec = P.new_rec()

    async def main():
        client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        return await run(resp_cls(P.relay(rec, client, "http://upstream/lines")))

    peer = asyncio.run(main())
    assert peer.body == events(*(f"line {i}" for i in range(10))) and peer.ended
    assert rec["log"] == ["finally"] and up["log"] == ["upstream finally"]


FASTAPI_ORDER = ["dependency setup", "event 0", "event 1", "event 2", "stream finally",
                 "body end", "background task", "dependency teardown", "app returned"]


def test_fastapi_yield_dependency_and_background_task(resp_cls):
    """FastAPI + sse-starlette: the stream ends, then the background task runs, then
    the ``yield`` dependency's teardown."""
    rec = P.new_rec()
    app = P.fastapi_app(resp_cls, lambda key: rec)

    async def on_send(message):
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            rec["log"].append("body end")

    async def main():
        peer = await run(app, peer=Peer(on_send=on_send), sc=scope("/feed", b"n=3"))
        rec["log"].append("app returned")
        return peer

    peer = asyncio.run(main())
    assert peer.body == events("resource 0", "resource 1", "resource 2")
    assert rec["log"] == FASTAPI_ORDER


# -- on a real server ------------------------------------------------------------------


APP = "tests.producer_app:app"


def responsive(srv, limit: float = 1.0) -> bool:
    try:
        return srv.proc.poll() is None and httpx.get(f"{srv.url}/health", timeout=limit).text == "ok"
    except httpx.HTTPError:
        return False


def discard(srv) -> None:
    if srv is None:
        return
    if not responsive(srv):
        srv.proc.kill()  # a starved server would not act on SIGTERM
    srv.stop()


@pytest.fixture(scope="module", params=twin_params())
def _server_slot(request):
    slot = {"impl": request.param, "srv": None}
    yield slot
    discard(slot["srv"])


@pytest.fixture
def server(_server_slot):
    """The module's server for this twin; replaced when a test left it unresponsive."""
    srv = _server_slot["srv"]
    if srv is None or not responsive(srv):
        discard(srv)
        srv = _server_slot["srv"] = Server(_server_slot["impl"], app=APP)
    return srv


def status(srv, key: str) -> dict:
    """What the producer app recorded for ``key`` (``{}`` before anything)."""
    return rawhttp.status(srv, key)["state"] or {}


def wait_for(pred, timeout: float = 5.0):
    return rawhttp.wait_for(pred, timeout, every=0.02)


def final_state(srv, key: str) -> dict:
    """``key``'s state once its response has returned or raised (or after 5 s)."""

    def ended():
        st = status(srv, key)
        return st if st.get("error") or "response returned" in st.get("log", []) else None

    return wait_for(ended) or status(srv, key)


def assert_responsive(srv, limit: float = 1.0) -> None:
    t0 = time.monotonic()
    try:
        r = httpx.get(f"{srv.url}/health", timeout=limit)
    except httpx.TimeoutException:
        r = None
    if r is None:
        pytest.fail(f"GET /health: no answer within {limit} s (the server's event loop is starved)", pytrace=False)
    assert r.text == "ok" and time.monotonic() - t0 < limit


def request_bytes(path: str, extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: test\r\nAccept: text/event-stream\r\n{extra}\r\n".encode()


def fetch(srv, path: str, headers: str = "", limit: float = 5.0) -> tuple[bytes, bool]:
    """GET ``path`` with ``Connection: close``; returns (decoded body, complete), where
    ``complete`` means the chunked body ended properly (else the server closed it mid-body)."""
    with socket.create_connection(("127.0.0.1", srv.port), timeout=limit) as s:
        s.sendall(request_bytes(path, headers + "Connection: close\r\n"))
        raw = b""
        deadline = time.monotonic() + limit
        while chunk := s.recv(65536):
            raw += chunk
            assert time.monotonic() < deadline, "the response did not end"
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    body = b""
    while rest:
        size_line, sep, rest = rest.partition(b"\r\n")
        if not sep:
            break
        size = int(size_line, 16)
        if size == 0:
            return body, rest.startswith(b"\r\n")
        if len(rest) < size + 2:
            body += rest[:size]
            break
        body, rest = body + rest[:size], rest[size + 2:]
    return body, False


class Drain:
    """A streaming GET on a raw socket, read by a thread as fast as it comes."""

    def __init__(self, srv, path: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        self.sock.sendall(request_bytes(path))
        self.head = b""
        self.total = 0
        self.eof = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            while chunk := self.sock.recv(1 << 20):
                self.total += len(chunk)
                if len(self.head) < 65536:
                    self.head += chunk
        except OSError:
            pass
        self.eof = True

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def drains():
    opened: list[Drain] = []
    yield lambda srv, path: opened.append(Drain(srv, path)) or opened[-1]
    for d in opened:
        d.close()


@pytest.mark.server
def test_server_twin(server, _server_slot):
    assert httpx.get(f"{server.url}/status", params={"key": "x"}, timeout=5).json()["impl"] == _server_slot["impl"]


@pytest.mark.server
@pytest.mark.parametrize("pause", ["sleep0", "checkpoint", "none"])
def test_server_spinning_producer_stays_responsive(server, drains, pause):
    """Patterns 1 and 8: /health answers while the client reads and after it left;
    the disconnect stops the producer and the CPU goes idle."""
    key = f"spin-{pause}"
    d = drains(server, f"/spin?key={key}&pause={pause}")
    assert wait_for(lambda: d.total > 100_000 or d.eof), "no events arrived"
    assert b"data: 0\r\n\r\n" in d.head
    assert_responsive(server)
    d.close()
    assert_responsive(server)
    assert wait_for(lambda: "finally" in status(server, key).get("log", []))
    n = status(server, key)["events"]
    time.sleep(0.2)
    assert status(server, key)["events"] == n
    proc = psutil.Process(httpx.get(f"{server.url}/status", params={"key": key}, timeout=5).json()["pid"])
    assert proc.cpu_percent(interval=0.3) < 50


@pytest.mark.server
@pytest.mark.parametrize("ending", ["return", "yield"])
@pytest.mark.parametrize("timer", ["asyncio", "anyio"])
def test_server_deadline_handled_in_generator(server, timer, ending):
    key = f"deadline-{timer}-{ending}"
    body, complete = fetch(server, f"/deadline?key={key}&timer={timer}&ending={ending}")
    assert body == events("before", *(["timed out"] if ending == "yield" else []))
    assert complete
    st = final_state(server, key)
    assert st["log"] == ["timeout", "finally", "response returned"] and st["error"] is None, st


@pytest.mark.server
@pytest.mark.parametrize("kind, end", [("future-now", "awaitable"), ("future-later", "awaitable"),
                                       ("awaitable", "awaitable"), ("coroutine", "raise"), ("future-now", "raise")])
def test_server_hand_written_anext(server, kind, end):
    key = f"anext-{kind}-{end}"
    body, complete = fetch(server, f"/anext?key={key}&kind={kind}&end={end}&n=20")
    assert body == feed_body(kind, 20) and complete
    assert final_state(server, key)["log"] == ["end", "response returned"]


@pytest.mark.server
@pytest.mark.parametrize("impl", twin_params())
def test_server_producer_oserror_is_logged(impl):
    """Pattern 5 on its own server (its log is read at the end): the body ends (the
    server closes the connection mid-body), the exception leaves the response as
    itself and uvicorn logs its traceback."""
    srv = Server(impl, app=APP)
    try:
        for error in ["TimeoutError", "FileNotFoundError", "ConnectionError"]:
            key = f"oserror-{error}"
            body, complete = fetch(srv, f"/failing?key={key}&error={error}")
            assert body == events("one", "two") and not complete, (error, body)
            st = final_state(srv, key)
            assert st["error"] == error and st["log"] == ["finally"], st
    finally:
        out = srv.stop()
    assert out.count("Exception in ASGI application") == 3, out
    for error in ["TimeoutError", "FileNotFoundError", "ConnectionError"]:
        assert f"{error}: producer failed" in out, out


@pytest.mark.server
@pytest.mark.parametrize("timer", ["asyncio", "anyio"])
@pytest.mark.parametrize("awaited", ["gather", "task"])
def test_server_deadline_around_children(server, awaited, timer):
    key = f"children-{awaited}-{timer}"
    body, complete = fetch(server, f"/children?key={key}&awaited={awaited}&timer={timer}")
    assert body == events("before", "after") and complete
    assert final_state(server, key)["log"] == ["child cancelled", "timeout", "finally", "response returned"]


@pytest.mark.server
def test_server_data_sender(server, drains):
    """Pattern 7 on a server: an unbuffered memory stream filled by the data sender;
    its ``finally`` runs at the end and on a disconnect."""
    body, complete = fetch(server, "/push?key=push-n&n=20&buffer=0")
    assert body == b"".join(f"id: {i}\r\ndata: pushed {i}\r\n\r\n".encode() for i in range(20)) and complete
    assert final_state(server, "push-n")["log"] == ["sender started", "sender finally", "response returned"]
    d = drains(server, "/push?key=push-d&n=-1&buffer=0")
    assert wait_for(lambda: status(server, "push-d").get("events", 0) >= 5)
    d.close()
    assert final_state(server, "push-d")["log"] == ["sender started", "sender finally", "response returned"]
    assert_responsive(server)


@pytest.mark.server
@pytest.mark.parametrize("kind", ["anyio", "asyncio"])
def test_server_task_group_in_generator(server, drains, kind):
    body, complete = fetch(server, f"/taskgroup?key=tg-{kind}&kind={kind}&n=20")
    assert body == events(*(f"{kind} {i}" for i in range(20))) and complete
    # the client leaves while the generator and its worker wait
    d = drains(server, f"/taskgroup?key=tgd-{kind}&kind={kind}&n=5&hang=1")
    assert wait_for(lambda: f"data: {kind} 4\r\n".encode() in d.head)
    d.close()
    assert final_state(server, f"tgd-{kind}")["log"] == ["worker cancelled", "finally", "response returned"]


@pytest.mark.server
@pytest.mark.parametrize("kind", ["anyio", "asyncio"])
def test_server_to_thread_in_generator(server, drains, kind):
    body, complete = fetch(server, f"/threads?key=th-{kind}&kind={kind}&n=10")
    assert body == events(*(i * i for i in range(10))) and complete
    d = drains(server, f"/threads?key=thd-{kind}&kind={kind}&n=-1")
    assert wait_for(lambda: status(server, f"thd-{kind}").get("events", 0) >= 5)
    d.close()
    assert final_state(server, f"thd-{kind}")["log"] == ["finally", "response returned"]


@pytest.mark.server
@pytest.mark.parametrize("kind", ["asyncio", "anyio"])
def test_server_shield_in_generator(server, drains, kind):
    body, complete = fetch(server, f"/shielded?key=sh-{kind}&kind={kind}&n=10")
    assert body == events(*range(10)) and complete
    # the client leaves while the producer is in its third shielded section (1 s long; with 300 ms
    # a CI run on 2 loaded cores once logged "finally 4/4": the leave was seen after the section)
    key = f"shd-{kind}"
    d = drains(server, f"/shielded?key={key}&kind={kind}&n=-1")
    assert wait_for(lambda: b"data: 2\r\n" in d.head)
    d.close()
    log = final_state(server, key)["log"]
    assert log[1:] == ["response returned"], log
    if kind == "anyio":  # the shielded work finished before the cancellation reached the generator
        assert log[0] == "finally 3/3"
    else:  # the generator ended at once; the shielded work goes on, and completes
        assert log[0] == "finally 3/2"
        assert wait_for(lambda: status(server, key)["done"] == 3), status(server, key)


@pytest.mark.server
def test_server_farewell_after_cancelled_error(server, drains):
    """The client leaves during the generator's 100 ms wait after event 1."""
    d = drains(server, "/farewell?key=fw")
    assert wait_for(lambda: b"data: 1\r\n" in d.head)
    d.close()
    log = final_state(server, "fw")["log"]
    assert log[0] == "cancelled" and log[-2:] == ["finally", "response returned"], log
    assert set(log[1:-2]) <= {"after farewell"}, log
    assert_responsive(server)


@pytest.mark.server
@pytest.mark.parametrize("kind", ["pure", "base"])
def test_server_contextvar_from_middleware(server, kind):
    body, complete = fetch(server, f"/{kind}/ctx?key=ctx-{kind}&n=3", headers="X-Request-ID: req-7\r\n")
    assert body == events("req-7", "req-7", "req-7") and complete


@pytest.mark.server
def test_server_httpx_upstream_relay(server, drains):
    """The generator relays another endpoint of the same server through httpx.AsyncClient."""
    body, complete = fetch(server, "/relay?key=relay-n&n=10")
    assert body == events(*(f"line {i}" for i in range(10))) and complete
    assert final_state(server, "relay-n")["log"] == ["upstream finally", "finally", "response returned"]
    d = drains(server, "/relay?key=relay-d&n=-1")
    assert wait_for(lambda: status(server, "relay-d").get("events", 0) >= 5)
    d.close()
    # the relay's cancellation closes the upstream request: its generator ends too
    log = wait_for(lambda: len(status(server, "relay-d").get("log", [])) >= 3 and status(server, "relay-d")["log"])
    assert log and sorted(log) == ["finally", "response returned", "upstream finally"], log


@pytest.mark.server
def test_server_fastapi_yield_dependency_and_background_task(server):
    body, complete = fetch(server, "/fastapi/feed?key=fapi&n=3")
    assert body == events("resource 0", "resource 1", "resource 2") and complete
    want = [e for e in FASTAPI_ORDER if e not in ("body end", "app returned")]
    assert wait_for(lambda: status(server, "fapi").get("log") == want and want) == want, status(server, "fapi")
