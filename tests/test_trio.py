"""EventSourceResponse under trio: sse_fast's generic anyio writer (``_writer_anyio``).

In process: ``anyio.run(..., backend="trio")`` drives the response through
hand-written ASGI receive/send, on both encoder twins (``impl``); no asyncio
loop runs, so the response takes its generic path. On a real server:
``hypercorn --worker-class trio`` serving ``tests/trio_app.py`` (``--workers 0``:
the app runs in the process ``Server`` starts, so stopping it leaves nothing
behind), once per twin.
"""

from __future__ import annotations

import re
import time

import anyio
import httpx
import pytest

from sse_fast import AppStatus, EventSourceResponse, SendTimeoutError, ServerSentEvent
from sse_fast._writer import SHUTDOWN_FLUSH_SECONDS

from .asgi_client import Client, expected_numbers, numbers, scope
from .conftest import Server, twin_params
from .rawhttp import close_all, open_raw, read_until, status, wait_for

PING_RE = re.compile(rb"^: ping - \d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d+)?\+00:00\r\n\r\n$")
GUARD = 10.0


def run_trio(fn, *args):
    return anyio.run(fn, *args, backend="trio")


async def drive(resp, client=None, sc=None, disconnect_after=None):
    """Run the response to its end (within GUARD s); ``disconnect_after`` s: the client leaves."""
    client = client or Client()
    with anyio.fail_after(GUARD):
        if disconnect_after is None:
            await resp(sc or scope(), client.receive, client.send)
        else:
            async with anyio.create_task_group() as tg:
                async def leave():
                    await anyio.sleep(disconnect_after)
                    client.disconnect()

                tg.start_soon(leave)
                await resp(sc or scope(), client.receive, client.send)
    return client


# -- in process, anyio on trio ---------------------------------------------------------


def test_runs_on_trio_without_asyncio_loop(impl):
    async def main():
        import asyncio

        import sniffio

        with pytest.raises(RuntimeError):
            asyncio.get_running_loop()
        return sniffio.current_async_library(), await drive(EventSourceResponse(numbers(1)))

    lib, c = run_trio(main)
    assert lib == "trio"
    assert c.body == expected_numbers(1)


def test_exact_bytes_and_end(impl):
    c = run_trio(drive, EventSourceResponse(numbers(3)))
    start = c.messages[0][1]
    assert start["type"] == "http.response.start" and start["status"] == 200
    assert (b"content-type", b"text/event-stream; charset=utf-8") in start["headers"]
    assert c.body == b"id: 0\r\ndata: 0\r\n\r\nid: 1\r\ndata: 1\r\n\r\nid: 2\r\ndata: 2\r\n\r\n"
    assert c.messages[-1][1] == {"type": "http.response.body", "body": b"", "more_body": False}
    assert [m.get("more_body") for _, m in c.messages[1:-1]] == [True] * (len(c.messages) - 2)


def _mixed_items():
    yield ServerSentEvent("a\nb", event="e", id="1", retry=5, sep="\n")
    yield ServerSentEvent("own sep")  # an event object keeps its own separator (\r\n)
    yield {"comment": "c", "data": "d"}
    yield b"data: raw\n\n"


async def _mixed():
    for item in _mixed_items():
        yield item


def test_exact_bytes_with_sep_and_event_objects(impl):
    c = run_trio(drive, EventSourceResponse(_mixed(), sep="\n"))
    assert c.body == (b"id: 1\nevent: e\ndata: a\ndata: b\nretry: 5\n\n" b"data: own sep\r\n\r\n"
                      b": c\ndata: d\n\n" b"data: raw\n\n")
    assert c.messages[-1][1]["more_body"] is False


def test_same_bytes_as_the_asyncio_path(impl):
    async def on_asyncio():
        return await drive(EventSourceResponse(_mixed(), sep="\n"))

    trio_client = run_trio(drive, EventSourceResponse(_mixed(), sep="\n"))
    asyncio_client = anyio.run(on_asyncio, backend="asyncio")
    assert trio_client.body == asyncio_client.body
    assert trio_client.messages[0][1] == asyncio_client.messages[0][1]
    assert trio_client.messages[-1][1] == asyncio_client.messages[-1][1]


def blocks(body: bytes, sep: bytes = b"\r\n") -> list[bytes]:
    """The event blocks of ``body``, each with its closing empty line (batching-proof)."""
    return [blk + sep + sep for blk in body.split(sep + sep)[:-1]]


def test_ping_at_interval(impl):
    # the event at 0.52 s (not a multiple of the 0.05 s ping interval)
    c = run_trio(drive, EventSourceResponse(numbers(1, delay=0.52), ping=0.05))
    got = blocks(c.body)
    pings = [b for b in got if b.startswith(b":")]
    assert 4 <= len(pings) <= 12, pings  # ~10 expected
    assert all(PING_RE.match(p) for p in pings), pings
    assert got[-1] == b"id: 0\r\ndata: 0\r\n\r\n" and len(got) == len(pings) + 1
    assert c.messages[-1][1]["more_body"] is False


def test_ping_zero_sends_none(impl):
    c = run_trio(drive, EventSourceResponse(numbers(2, delay=0.2), ping=0))
    assert c.bodies == [b"id: 0\r\ndata: 0\r\n\r\n", b"id: 1\r\ndata: 1\r\n\r\n"]


def test_ping_message_factory(impl):
    resp = EventSourceResponse(numbers(1, delay=0.32), ping=0.05, sep="\n",
                               ping_message_factory=lambda: ServerSentEvent(comment="hb", sep="\n"))
    c = run_trio(drive, resp)
    got = blocks(c.body, b"\n")
    assert len(got) >= 3
    assert set(got[:-1]) == {b": hb\n\n"} and got[-1] == b"id: 0\ndata: 0\n\n"


def test_disconnect_runs_finally_and_awaits_close_handler(impl):
    record, closed = [], []

    async def handler(message):
        await anyio.sleep(0.05)  # awaited to its end, not cancelled with the stream
        closed.append(message)

    resp = EventSourceResponse(numbers(1000, delay=0.01, record=record), client_close_handler_callable=handler)
    t0 = time.perf_counter()
    c = run_trio(drive, resp, None, None, 0.1)
    assert record == ["finally"]
    assert closed == [{"type": "http.disconnect"}]
    assert 0.1 <= time.perf_counter() - t0 < 5
    n = c.body.count(b"id: ")
    assert 1 <= n <= 30, n  # ~10 events in 0.1 s
    assert c.body == expected_numbers(n)


def test_disconnect_stops_a_producer_that_never_awaits(impl):
    record = []

    async def gen():
        try:
            while True:
                yield b"data: x\r\n\r\n"
        finally:
            record.append("finally")

    run_trio(drive, EventSourceResponse(gen()), None, None, 0.1)
    assert record == ["finally"]


def test_send_timeout_raises_and_closes_iterator(impl):
    record = []
    c = Client(block_send=True)
    t0 = time.perf_counter()
    with pytest.raises(SendTimeoutError) as info:
        run_trio(drive, EventSourceResponse(numbers(10, delay=0.01, record=record), send_timeout=0.2), c)
    assert type(info.value) is SendTimeoutError
    assert 0.15 < time.perf_counter() - t0 < 5
    assert record == ["finally"]
    assert [m["type"] for _, m in c.messages] == ["http.response.start"]


def test_send_timeout_on_ping(impl):
    record = []
    c = Client(block_send=True)
    with pytest.raises(SendTimeoutError):
        run_trio(drive, EventSourceResponse(numbers(1, delay=5, record=record), ping=0.05, send_timeout=0.1), c)
    assert record == ["finally"]


def test_send_timeout_when_a_late_send_completes(impl):
    """A send that cannot be cancelled (hypercorn's trio worker shields ``send_all``)
    and completes after ``send_timeout`` still ends the stream with SendTimeoutError,
    as sse-starlette does (it checks ``cancel_called`` after the send)."""
    record = []

    class ShieldedClient(Client):
        async def send(self, message):
            if message["type"] == "http.response.body" and message["body"]:
                with anyio.CancelScope(shield=True):
                    await anyio.sleep(0.4)
            await super().send(message)

    c = ShieldedClient()
    with pytest.raises(SendTimeoutError):
        run_trio(drive, EventSourceResponse(numbers(3, delay=0.01, record=record), send_timeout=0.1), c)
    assert record == ["finally"]
    assert c.body == b"id: 0\r\ndata: 0\r\n\r\n"  # the late send went out; nothing after it
    assert c.messages[-1][1]["more_body"] is True


@pytest.mark.parametrize("method", ["HEAD", "head"])
def test_head_sends_headers_only(impl, method):
    started = []

    async def gen():
        started.append(1)
        yield "x"

    c = run_trio(drive, EventSourceResponse(gen()), None, scope(method))
    assert [m["type"] for _, m in c.messages] == ["http.response.start", "http.response.body"]
    assert c.messages[0][1]["status"] == 200
    assert c.messages[1][1] == {"type": "http.response.body", "body": b"", "more_body": False}
    assert started == []


def test_iterator_exception_is_itself_after_earlier_events(impl):
    async def gen():
        yield "one"
        yield "two"
        raise LookupError("boom")

    c = Client()
    with pytest.raises(LookupError, match="boom") as info:
        run_trio(drive, EventSourceResponse(gen()), c)
    assert type(info.value) is LookupError  # not an ExceptionGroup
    assert c.body == b"data: one\r\n\r\ndata: two\r\n\r\n"
    assert all(m.get("more_body") is not False for _, m in c.messages)  # the body was not ended


def test_memory_stream_with_data_sender(impl):
    async def main():
        send_stream, recv_stream = anyio.create_memory_object_stream(2)

        async def push():
            async with send_stream:
                for i in range(20):
                    await send_stream.send({"data": f"pushed {i}", "id": str(i)})
                    if i % 5 == 0:
                        await anyio.sleep(0.001)

        return await drive(EventSourceResponse(recv_stream, data_sender_callable=push))

    c = run_trio(main)
    assert c.body == b"".join(f"id: {i}\r\ndata: pushed {i}\r\n\r\n".encode() for i in range(20))
    assert c.messages[-1][1]["more_body"] is False


def test_sync_iterator(impl):
    def gen():
        for i in range(4):
            time.sleep(0.001)
            yield ServerSentEvent(str(i), event="n")

    c = run_trio(drive, EventSourceResponse(gen()))
    assert c.body == b"".join(f"event: n\r\ndata: {i}\r\n\r\n".encode() for i in range(4))
    assert c.messages[-1][1]["more_body"] is False


def test_ready_events_are_batched(impl):
    c = run_trio(drive, EventSourceResponse(numbers(1000)))
    assert c.body == expected_numbers(1000)
    assert len(c.bodies) <= 10, len(c.bodies)  # far fewer sends than the 1000 events


def test_batch_bound_splits_sends(impl):
    c = run_trio(drive, EventSourceResponse(numbers(1000), max_buffer_bytes=1000))
    assert c.body == expected_numbers(1000)
    assert len(c.bodies) > 10
    assert all(len(b) < 1000 + 30 for b in c.bodies)


# -- a real server: hypercorn --worker-class trio -----------------------------------------

HYPERCORN_TRIO = ["-m", "hypercorn", "--worker-class", "trio", "--workers", "0",
                  "--bind", "127.0.0.1:{port}", "tests.trio_app:app"]


@pytest.fixture(scope="module", params=twin_params())
def trio_server(request):
    srv = Server(request.param, command=HYPERCORN_TRIO)
    srv.impl = request.param
    yield srv
    out = srv.stop()
    assert srv.proc.returncode is not None, out


@pytest.fixture(autouse=True)
def _close_sockets():
    yield
    close_all()


@pytest.mark.server
def test_server_is_trio_with_the_twin(trio_server):
    st = status(trio_server, "none")
    assert st["library"] == "trio"
    assert st["impl"] == trio_server.impl
    assert st["pid"] == trio_server.proc.pid  # --workers 0: no child process to leave behind


@pytest.mark.server
def test_server_streams_exact_bytes(trio_server):
    r = httpx.get(f"{trio_server.url}/numbers", params={"key": "exact", "n": 5}, timeout=5)
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert r.headers["cache-control"] == "no-store" and r.headers["x-accel-buffering"] == "no"
    assert r.content == expected_numbers(5)
    st = wait_for(lambda: status(trio_server, "exact")["state"].get("returned") and status(trio_server, "exact")["state"])
    # (closed_by is not checked: hypercorn delivers http.disconnect during the final send)
    assert st["finally"] is True and st["error"] is None


@pytest.mark.server
def test_server_slow_stream_exact_bytes_and_end(trio_server):
    s = open_raw(trio_server, "/numbers?key=slow&n=4&interval=0.05")
    raw = read_until(s, b"\r\n0\r\n\r\n")
    head, body = raw.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200") and b"transfer-encoding: chunked" in head.lower()
    assert body.endswith(b"\r\n0\r\n\r\n")  # the chunked body ended properly
    # de-chunk
    payload, rest = b"", body
    while True:
        size_line, rest = rest.split(b"\r\n", 1)
        size = int(size_line, 16)
        if size == 0:
            break
        payload, rest = payload + rest[:size], rest[size + 2:]
    assert payload == expected_numbers(4)


@pytest.mark.server
def test_server_disconnect_runs_finally_and_close_handler(trio_server):
    s = open_raw(trio_server, "/numbers?key=disc&n=100000&interval=0.02")
    assert b"data: " in read_until(s, b"id: 2\r\n")
    s.close()
    st = wait_for(lambda: (status(trio_server, "disc")["state"] or {}).get("closed_by")
                  and status(trio_server, "disc")["state"])
    assert st, status(trio_server, "disc")
    assert st["finally"] is True
    assert st["closed_by"] == "http.disconnect"
    assert st["error"] is None
    # the producer really stopped
    n1 = status(trio_server, "disc")["state"]["events"]
    time.sleep(0.2)
    assert status(trio_server, "disc")["state"]["events"] == n1


@pytest.mark.server
def test_server_pings_at_interval_and_none_with_zero(trio_server):
    params = {"key": "p1", "n": 1, "interval": 5, "ping": 0.2}
    with httpx.stream("GET", f"{trio_server.url}/numbers", params=params, timeout=5) as r:
        got, t0 = b"", time.monotonic()
        for chunk in r.iter_raw():
            got += chunk
            if got.count(b": ping - ") >= 3:
                break
        elapsed = time.monotonic() - t0
    assert 0.4 < elapsed < 2.5, elapsed
    pings = [b + b"\r\n\r\n" for b in got.split(b"\r\n\r\n") if b.startswith(b":")]
    assert len(pings) >= 3 and all(PING_RE.match(p) for p in pings), got
    params = {"key": "p0", "n": 2, "interval": 0.6, "ping": 0}
    r = httpx.get(f"{trio_server.url}/numbers", params=params, timeout=5)
    assert r.content == expected_numbers(2)


@pytest.mark.server
def test_server_send_timeout_with_a_client_that_stops_reading(trio_server):
    """A client stops reading (tiny receive buffer, 4 KiB events), then reads again.

    Hypercorn's trio worker shields its ``send_all``: a blocked send cannot be
    cancelled. ``send_timeout`` (0.5 s) still ends the response at the deadline
    (issue 16; before, only once that send completed, late): SendTimeoutError,
    the iterator closed, the body not ended, far from the 20 MB offered.
    """
    s = open_raw(trio_server, "/flood?key=stall&mb=20&send_timeout=0.5", rcvbuf=4096)
    time.sleep(1.5)  # not reading: the pending send is past its deadline
    stalled = status(trio_server, "stall")["state"]
    assert stalled["events"] * 4096 < 4 * 2**20 and stalled["error"] == "SendTimeoutError", stalled
    s.settimeout(5)
    data = bytearray()
    while not data.endswith(b"\r\n0\r\n\r\n"):  # read again: to the close, or the body's end
        try:
            chunk = s.recv(1 << 20)
        except TimeoutError:
            break
        if not chunk:
            break
        data += chunk
    st = wait_for(lambda: (status(trio_server, "stall")["state"] or {}).get("error"))
    state = status(trio_server, "stall")["state"]
    assert st == "SendTimeoutError", state
    assert state["finally"] is True
    assert state["events"] * 4096 < 10 * 2**20, state  # far from the 20 MB offered
    assert not bytes(data).endswith(b"\r\n0\r\n\r\n")  # the body was not ended
    s.close()


@pytest.mark.server
def test_server_send_timeout_with_a_client_that_never_reads_again(trio_server):
    """Issue 16: the client stops reading for good. The send hypercorn shields never completes,
    yet ``send_timeout`` (0.5 s) ends the stream: SendTimeoutError, the generator's ``finally``
    runs, and the server closes the connection (the stuck send ends with it)."""
    s = open_raw(trio_server, "/flood?key=stuck&mb=20&send_timeout=0.5", rcvbuf=4096)
    t0 = time.monotonic()
    st = wait_for(lambda: (status(trio_server, "stuck")["state"] or {}).get("finally"), timeout=8)
    took = time.monotonic() - t0
    state = status(trio_server, "stuck")["state"]
    assert st is True and state["error"] == "SendTimeoutError", state
    assert took < 5, took
    assert state["events"] * 4096 < 4 * 2**20, state
    # the server closed the connection: reading now drains what was buffered, then EOF
    s.settimeout(5)
    data = bytearray()
    while True:
        chunk = s.recv(1 << 20)
        if not chunk:
            break
        data += chunk
    assert not bytes(data).endswith(b"\r\n0\r\n\r\n")  # the body was not ended
    s.close()


@pytest.mark.server
def test_server_head(trio_server):
    r = httpx.head(f"{trio_server.url}/head", params={"key": "hd"}, timeout=5)
    assert r.status_code == 200 and r.content == b""
    assert r.headers["content-type"] == "text/event-stream; charset=utf-8"
    st = wait_for(lambda: (status(trio_server, "hd")["state"] or {}).get("returned") and status(trio_server, "hd")["state"])
    assert st["started"] == 0 and st["error"] is None
    r = httpx.get(f"{trio_server.url}/head", params={"key": "hd"}, timeout=5)
    assert r.content == b"data: a\r\n\r\ndata: b\r\n\r\n"
    assert status(trio_server, "hd")["state"]["started"] == 1


class _EndBlocker(Client):
    """A client that takes every event but never the end of the body (the final empty send blocks)."""

    async def send(self, message):
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            await anyio.sleep_forever()
        await super().send(message)


@pytest.mark.parametrize("stall", ["events", "end"])
def test_shutdown_cuts_a_client_that_stopped_reading(impl, stall):
    """Under trio the final sends are shielded (hypercorn's trio worker needs it), so a shutdown must
    bound them itself: a client that takes neither the flushed events nor the end of the body
    (``events``), or only the end (``end``, the generator already finished), is cut within
    SHUTDOWN_FLUSH_SECONDS instead of holding the server forever (it did, with no send_timeout)."""

    async def main():
        if stall == "events":
            client, content = Client(block_send=True), numbers(1000, delay=0.01)
        else:
            client, content = _EndBlocker(), numbers(3)
        resp = EventSourceResponse(content)

        async def stop():
            await anyio.sleep(0.3)
            AppStatus.should_exit = True

        t0 = time.monotonic()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(stop)
                with anyio.fail_after(GUARD):
                    await resp(scope(), client.receive, client.send)
        finally:
            AppStatus.should_exit = False
        return time.monotonic() - t0, client

    took, client = run_trio(main)
    assert 0.3 + SHUTDOWN_FLUSH_SECONDS - 0.1 < took < 0.3 + SHUTDOWN_FLUSH_SECONDS + 1.0, took
    if stall == "end":
        assert client.body == expected_numbers(3)
