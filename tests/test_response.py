"""EventSourceResponse driven in process through hand-written ASGI receive/send.

Every test runs on both encoder twins (``impl``). A guard timeout ends each
drive; a test that needs it fails.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time

import anyio
import pytest
from sse_starlette import EventSourceResponse as RefResponse
from starlette.background import BackgroundTask

from sse_fast import AppStatus, EventSourceResponse, SendTimeoutError, ServerSentEvent

from .asgi_client import Client, expected_numbers, numbers, scope

PING_RE = re.compile(rb"^: ping - \d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d+)?\+00:00\r\n\r\n$")
GUARD = 10.0


async def drive(resp, client=None, sc=None, disconnect_after=None):
    client = client or Client()
    if disconnect_after is not None:
        asyncio.get_running_loop().call_later(disconnect_after, client.disconnect)
    with anyio.fail_after(GUARD):
        await resp(sc or scope(), client.receive, client.send)
    return client


def test_body_and_end(impl):
    c = asyncio.run(drive(EventSourceResponse(numbers(3))))
    assert c.messages[0][1]["type"] == "http.response.start"
    assert c.messages[0][1]["status"] == 200
    assert c.body == expected_numbers(3)
    assert c.messages[-1][1] == {"type": "http.response.body", "body": b"", "more_body": False}


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"headers": {"Cache-Control": "public", "X-Extra": "1"}}, {"headers": {"x-a": "b"}, "status_code": 201}],
)
def test_headers_match_sse_starlette(impl, kwargs):
    ours = EventSourceResponse(numbers(0), **kwargs)
    ref = RefResponse(numbers(0), **kwargs)
    assert ours.raw_headers == ref.raw_headers
    assert ours.status_code == ref.status_code


def test_http2_has_no_connection_header(impl):
    c = asyncio.run(drive(EventSourceResponse(numbers(1)), sc=scope(http_version="2")))
    names = [k for k, _ in c.messages[0][1]["headers"]]
    assert b"connection" not in names and b"cache-control" in names
    c = asyncio.run(drive(EventSourceResponse(numbers(1))))
    assert (b"connection", b"keep-alive") in c.messages[0][1]["headers"]
    # a header set after the response was made goes out on HTTP/2 too (the list is built per stream)
    resp = EventSourceResponse(numbers(1))
    resp.headers["x-late"] = "1"
    c = asyncio.run(drive(resp, sc=scope(http_version="2")))
    headers = c.messages[0][1]["headers"]
    assert (b"x-late", b"1") in headers and b"connection" not in [k for k, _ in headers]


def test_head_sends_headers_only_and_runs_background(impl):
    started, bg = [], []

    async def gen():
        started.append(1)
        yield "x"

    resp = EventSourceResponse(gen(), background=BackgroundTask(bg.append, "ran"))
    c = asyncio.run(drive(resp, sc=scope("HEAD")))
    assert [m["type"] for _, m in c.messages] == ["http.response.start", "http.response.body"]
    assert c.messages[1][1] == {"type": "http.response.body", "body": b"", "more_body": False}
    assert started == [] and bg == ["ran"]


def test_background_runs_after_stream(impl):
    bg = []
    resp = EventSourceResponse(numbers(2), background=BackgroundTask(bg.append, "done"))
    asyncio.run(drive(resp))
    assert bg == ["done"]


def test_websocket_scope_sends_denial_response(impl):
    c = asyncio.run(drive(EventSourceResponse(numbers(1)), sc={"type": "websocket", "path": "/", "headers": []}))
    kinds = [m["type"] for _, m in c.messages]
    assert kinds[0] == "websocket.http.response.start"
    assert set(kinds[1:]) == {"websocket.http.response.body"}


def test_ready_events_are_batched(impl):
    c = asyncio.run(drive(EventSourceResponse(numbers(1000))))
    assert c.body == expected_numbers(1000)
    assert len(c.bodies) <= 2  # 1000 small events fit under the 64 KiB bound


def test_batch_bound_splits_sends(impl):
    c = asyncio.run(drive(EventSourceResponse(numbers(1000), max_buffer_bytes=1000)))
    assert c.body == expected_numbers(1000)
    assert all(len(b) < 1000 + 30 for b in c.bodies)
    assert len(c.bodies) > 10


def test_slow_producer_events_leave_at_once(impl):
    produced = []

    async def gen():
        for i in range(5):
            await asyncio.sleep(0.03)
            produced.append(time.perf_counter())
            yield {"data": i}

    c = Client()
    asyncio.run(drive(EventSourceResponse(gen()), client=c))
    sent = [c.t0 + t for t, m in c.messages if m["type"] == "http.response.body" and m["body"]]
    assert len(sent) == 5  # one send per event: nothing waits for a batch
    for p, s in zip(produced, sent, strict=True):
        assert 0 <= s - p < 0.005


def test_pings_fixed_cadence_and_disabled(impl):
    c = asyncio.run(drive(EventSourceResponse(numbers(1, delay=0.5), ping=0.1)))
    pings = [b for b in c.bodies if b.startswith(b":")]
    assert 3 <= len(pings) <= 6, pings
    assert all(PING_RE.match(p) for p in pings)
    c = asyncio.run(drive(EventSourceResponse(numbers(1, delay=0.4), ping=0)))
    assert c.bodies == [b"id: 0\r\ndata: 0\r\n\r\n"]


def test_ping_message_factory_and_sep(impl):
    resp = EventSourceResponse(numbers(1, delay=0.25), ping=0.1, sep="\n",
                               ping_message_factory=lambda: ServerSentEvent(comment="hb", sep="\n"))
    c = asyncio.run(drive(resp))
    assert c.bodies[0] == b": hb\n\n" and c.bodies[-1] == b"id: 0\ndata: 0\n\n"
    assert set(c.bodies[:-1]) == {b": hb\n\n"}


def test_ping_when_idle(impl):
    # data every 40 ms, ping interval 100 ms: idle pings never fire
    c = asyncio.run(drive(EventSourceResponse(numbers(8, delay=0.04), ping=0.1, ping_when_idle=True)))
    assert not [b for b in c.bodies if b.startswith(b":")]
    c = asyncio.run(drive(EventSourceResponse(numbers(8, delay=0.04), ping=0.1)))
    assert len([b for b in c.bodies if b.startswith(b":")]) >= 2


def test_pings_never_inside_an_event(impl):
    async def gen():
        for i in range(300):
            if i % 50 == 0:
                await asyncio.sleep(0.02)
            yield {"data": "a\nb\nc", "id": str(i)}

    c = asyncio.run(drive(EventSourceResponse(gen(), ping=0.01)))
    blocks = c.body.split(b"\r\n\r\n")[:-1]
    data_blocks = [b for b in blocks if not b.startswith(b":")]
    assert data_blocks == [f"id: {i}\r\ndata: a\r\ndata: b\r\ndata: c".encode() for i in range(300)]
    assert all(PING_RE.match(b + b"\r\n\r\n") for b in blocks if b.startswith(b":"))


def test_sync_iterator(impl):
    def gen():
        for i in range(4):
            time.sleep(0.001)
            yield ServerSentEvent(str(i), event="n")

    c = asyncio.run(drive(EventSourceResponse(gen())))
    assert c.body == b"".join(f"event: n\r\ndata: {i}\r\n\r\n".encode() for i in range(4))


def test_memory_stream_with_data_sender(impl):
    async def main():
        send_stream, recv_stream = anyio.create_memory_object_stream(10)

        async def push():
            async with send_stream:
                for i in range(5):
                    await send_stream.send({"data": f"pushed {i}"})

        return await drive(EventSourceResponse(recv_stream, data_sender_callable=push))

    c = asyncio.run(main())
    assert c.body == b"".join(f"data: pushed {i}\r\n\r\n".encode() for i in range(5))


def test_iterator_exception_is_not_wrapped(impl):
    async def gen():
        yield "one"
        raise LookupError("boom")

    c = Client()
    with pytest.raises(LookupError, match="boom"):
        asyncio.run(drive(EventSourceResponse(gen()), client=c))
    assert c.body == b"data: one\r\n\r\n"


def test_encoding_error_is_raised_not_dropped(impl):
    async def gen():
        yield "ok"
        yield {"data": 1, "retry": "soon"}

    c = Client()
    with pytest.raises(TypeError, match="retry"):
        asyncio.run(drive(EventSourceResponse(gen()), client=c))
    assert c.body == b"data: ok\r\n\r\n"


def test_disconnect_cancels_iterator_and_calls_handler(impl):
    record, closed = [], []

    async def handler(message):
        closed.append(message)

    resp = EventSourceResponse(numbers(1000, delay=0.01, record=record), client_close_handler_callable=handler)
    c = asyncio.run(drive(resp, disconnect_after=0.1))
    assert record == ["finally"]
    assert closed == [{"type": "http.disconnect"}]
    assert 3 <= len(c.bodies) <= 15


def test_disconnect_stops_a_producer_that_never_awaits(impl):
    record = []

    async def gen():
        try:
            while True:
                yield b"data: x\r\n\r\n"
        finally:
            record.append("finally")

    asyncio.run(drive(EventSourceResponse(gen()), disconnect_after=0.1))
    assert record == ["finally"]


def test_send_timeout(impl):
    record = []
    c = Client(block_send=True)
    t0 = time.perf_counter()
    with pytest.raises(SendTimeoutError):
        asyncio.run(drive(EventSourceResponse(numbers(10, record=record), send_timeout=0.2), client=c))
    assert 0.15 < time.perf_counter() - t0 < 2.0
    assert record == ["finally"]


def test_send_timeout_on_ping(impl):
    c = Client(block_send=True)
    with pytest.raises(SendTimeoutError):
        asyncio.run(drive(EventSourceResponse(numbers(1, delay=5), ping=0.05, send_timeout=0.1), client=c))


def test_backpressure_stops_the_producer(impl):
    produced = []

    async def gen():
        for i in range(100_000):
            produced.append(i)
            yield "x" * 100

    async def main():
        c = Client(block_send=True)
        resp = EventSourceResponse(gen(), max_buffer_bytes=10_000)
        task = asyncio.ensure_future(resp(scope(), c.receive, c.send))
        await asyncio.sleep(0.2)
        n = len(produced)
        c.disconnect()
        await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return n

    n = asyncio.run(main())
    assert 50 <= n <= 250  # one 10 KB batch in flight, one filling: ~200 events


def test_producer_timeout_inside_stream_is_its_own(impl):
    """A producer's asyncio.timeout / anyio deadline fires in the producer, not the writer."""

    async def gen():
        q: asyncio.Queue = asyncio.Queue()
        for i in range(3):
            try:
                with anyio.fail_after(0.03):
                    await q.get()
            except TimeoutError:
                yield {"data": f"timeout {i}"}

    c = asyncio.run(drive(EventSourceResponse(gen(), ping=0.01)))
    data = [b for b in c.bodies if not b.startswith(b":")]
    assert data == [f"data: timeout {i}\r\n\r\n".encode() for i in range(3)]


def test_outer_cancellation_propagates(impl):
    record = []

    async def main():
        c = Client()
        task = asyncio.ensure_future(EventSourceResponse(numbers(100, delay=0.05, record=record))(scope(), c.receive, c.send))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert record == ["finally"]


def test_three_tasks_per_connection(impl):
    async def main():
        before = set(asyncio.all_tasks())
        clients = [Client() for _ in range(5)]
        tasks = [asyncio.ensure_future(EventSourceResponse(numbers(10, delay=1), ping=0.05)(scope(), c.receive, c.send))
                 for c in clients]
        await asyncio.sleep(0.12)  # past two pings
        during = set(asyncio.all_tasks()) - before
        for c in clients:
            c.disconnect()
        await asyncio.gather(*tasks)
        return len(during)

    # 5 response tasks (created here, standing for the server's, running the producers)
    # + 5 writer tasks + 5 disconnect listeners: at most three per connection
    assert asyncio.run(main()) == 15


def test_app_status_should_exit_ends_streams(impl):
    record = []

    async def main():
        c = Client()
        loop = asyncio.get_running_loop()
        loop.call_later(0.1, setattr, AppStatus, "should_exit", True)
        await drive(EventSourceResponse(numbers(1000, delay=0.02, record=record)), client=c)
        return c

    try:
        c = asyncio.run(main())
    finally:
        AppStatus.should_exit = False
    assert record == ["finally"]
    assert c.messages[-1][1]["more_body"] is False
    # a new event loop is not affected: no reset fixture needed
    c = asyncio.run(drive(EventSourceResponse(numbers(2))))
    assert c.body == expected_numbers(2)


def test_shutdown_event_and_grace_period(impl):
    async def main():
        event = anyio.Event()

        async def gen():
            i = 0
            while not event.is_set():
                yield {"data": i}
                i += 1
                with anyio.move_on_after(0.02):
                    await event.wait()
            await asyncio.sleep(0.05)  # finishing work within the grace period
            yield {"event": "farewell", "data": "bye"}

        c = Client()
        asyncio.get_running_loop().call_later(0.1, setattr, AppStatus, "should_exit", True)
        await drive(EventSourceResponse(gen(), shutdown_event=event, shutdown_grace_period=1), client=c)
        return c

    try:
        c = asyncio.run(main())
    finally:
        AppStatus.should_exit = False
    assert c.bodies[-1] == b"event: farewell\r\ndata: bye\r\n\r\n"


def test_grace_period_expires(impl):
    record = []

    async def main():
        event = anyio.Event()

        async def gen():
            try:
                yield "first"
                await asyncio.sleep(30)  # ignores the shutdown event
                yield "never"
            finally:
                record.append("finally")

        asyncio.get_running_loop().call_later(0.05, setattr, AppStatus, "should_exit", True)
        t0 = time.perf_counter()
        await drive(EventSourceResponse(gen(), shutdown_event=event, shutdown_grace_period=0.2))
        return time.perf_counter() - t0, event.is_set()

    try:
        elapsed, was_set = asyncio.run(main())
    finally:
        AppStatus.should_exit = False
    assert was_set and record == ["finally"]
    assert 0.2 < elapsed < 2


def test_many_loops_in_many_threads(impl):
    results, errors = [], []

    def worker(k):
        try:
            c = asyncio.run(drive(EventSourceResponse(numbers(50, delay=0.001), ping=0.01)))
            results.append(re.sub(rb": ping - [^\r]*\r\n\r\n", b"", c.body))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert results == [expected_numbers(50)] * 8


@pytest.mark.parametrize(
    "kwargs, exc, words",
    [
        ({"sep": "\t"}, ValueError, "sep"),
        ({"ping": -1}, ValueError, "ping"),
        ({"ping": "15"}, TypeError, "ping"),
        ({"ping": True}, TypeError, "ping"),
        ({"send_timeout": 0}, ValueError, "send_timeout"),
        ({"send_timeout": "5"}, TypeError, "send_timeout"),
        ({"shutdown_grace_period": -1}, ValueError, "shutdown_grace_period"),
        # the defaults skip the checks: values near them must not
        ({"shutdown_grace_period": None}, TypeError, "shutdown_grace_period"),
        ({"shutdown_grace_period": "0"}, TypeError, "shutdown_grace_period"),
        ({"shutdown_grace_period": False}, TypeError, "shutdown_grace_period"),
        ({"shutdown_grace_period": float("nan")}, ValueError, "shutdown_grace_period"),
        ({"cleanup_timeout": -1}, ValueError, "cleanup_timeout"),
        ({"cleanup_timeout": "30.0"}, TypeError, "cleanup_timeout"),
        ({"cleanup_timeout": float("nan")}, ValueError, "cleanup_timeout"),
        ({"send_timeout": float("nan")}, ValueError, "send_timeout"),
        ({"ping_message_factory": "ping"}, TypeError, "ping_message_factory"),
        ({"data_sender_callable": 3}, TypeError, "data_sender_callable"),
        ({"client_close_handler_callable": 3}, TypeError, "client_close_handler_callable"),
        ({"shutdown_event": True}, TypeError, "shutdown_event"),
        ({"max_buffer_bytes": 0}, ValueError, "max_buffer_bytes"),
        ({"status_code": "200"}, TypeError, "status_code"),
    ],
)
def test_bad_arguments_fail_in_constructor(kwargs, exc, words):
    with pytest.raises(exc, match=words):
        EventSourceResponse(numbers(1), **kwargs)


@pytest.mark.parametrize("kwargs", [{"shutdown_grace_period": 0.0}, {"shutdown_grace_period": 2},
                                    {"cleanup_timeout": None}, {"cleanup_timeout": 30}, {"cleanup_timeout": 0}])
def test_durations_near_the_defaults_are_accepted(kwargs):
    resp = EventSourceResponse(numbers(1), **kwargs)
    name, value = next(iter(kwargs.items()))
    assert getattr(resp, "_" + name) == value


@pytest.mark.parametrize("content", ["a string", b"bytes", 42, None])
def test_bad_content(content):
    with pytest.raises(TypeError, match="content"):
        EventSourceResponse(content)


def test_ping_interval_property():
    resp = EventSourceResponse(numbers(1))
    assert resp.ping_interval == 15
    resp.ping_interval = 2.5
    assert resp.ping_interval == 2.5
    with pytest.raises(ValueError, match="ping"):
        resp.ping_interval = -3


def test_enable_compression_is_not_implemented():
    with pytest.raises(NotImplementedError):
        EventSourceResponse(numbers(1)).enable_compression()


def test_shutdown_completes_a_pending_send_and_flushes(impl):
    """A send in flight when shutdown comes is finished, not dropped."""

    class SlowClient(Client):
        async def send(self, message):
            if message["type"] == "http.response.body" and message["body"]:
                await asyncio.sleep(0.1)  # a slow reader: every body send waits
            await super().send(message)

    async def gen():
        for i in range(3):
            yield {"data": i}
            await asyncio.sleep(0.01)
        # shutdown once the three events exist, while the first one's 0.1 s send is still in
        # flight (a fixed 50 ms timer raced the producer: a stall of the machine could fire it
        # before events 1 and 2 were made, seen once in a clean-clone CI run)
        asyncio.get_running_loop().call_soon(setattr, AppStatus, "should_exit", True)
        await asyncio.sleep(30)

    async def main():
        c = SlowClient()
        await drive(EventSourceResponse(gen()), client=c)
        return c

    try:
        c = asyncio.run(main())
    finally:
        AppStatus.should_exit = False
    assert c.body == b"data: 0\r\n\r\ndata: 1\r\n\r\ndata: 2\r\n\r\n"
    assert c.messages[-1][1]["more_body"] is False


class StallingClient(Client):
    """A client whose send of ``stall_on`` (a predicate on the message) never completes."""

    def __init__(self, stall_on):
        super().__init__()
        self.stall_on = stall_on
        self.stalled = asyncio.Event()

    async def send(self, message):
        if self.stall_on(message):
            self.stalled.set()
            await asyncio.Event().wait()
        await super().send(message)


def test_stalled_final_send_ends_on_disconnect(impl):
    """The closing ``more_body=False`` send hangs and the client leaves: the response ends."""

    async def main():
        client = StallingClient(lambda m: m["type"] == "http.response.body" and not m.get("more_body", False))
        resp = EventSourceResponse(numbers(3))
        task = asyncio.ensure_future(drive(resp, client))
        await asyncio.wait_for(client.stalled.wait(), 2)
        client.disconnect()
        await asyncio.wait_for(task, 2)
        return client

    client = asyncio.run(main())
    assert client.body == expected_numbers(3)


def test_stalled_start_send_ends_on_disconnect(impl):
    """The start message's send hangs and the client leaves: the iterator is never started."""
    started = []

    async def gen():
        started.append(True)
        yield "x"

    async def main():
        client = StallingClient(lambda m: m["type"] == "http.response.start")
        task = asyncio.ensure_future(drive(EventSourceResponse(gen()), client))
        await asyncio.wait_for(client.stalled.wait(), 2)
        client.disconnect()
        await asyncio.wait_for(task, 2)

    asyncio.run(main())
    assert started == []


@pytest.mark.parametrize("method", ["HEAD", "head", "Head"])
def test_head_is_matched_case_insensitively(impl, method):
    started = []

    async def gen():
        started.append(True)
        yield "x"

    client = asyncio.run(drive(EventSourceResponse(gen()), sc=scope(method)))
    assert started == [] and client.body == b""
    assert client.messages[-1][1] == {"type": "http.response.body", "body": b"", "more_body": False}


def test_send_timeout_bounds_head_sends(impl):
    async def main():
        client = StallingClient(lambda m: m["type"] == "http.response.start")
        with pytest.raises(SendTimeoutError):
            await drive(EventSourceResponse(numbers(1), send_timeout=0.1), client, sc=scope("HEAD"))

    asyncio.run(main())


def test_default_cleanup_timeout_is_the_class_constant():
    assert EventSourceResponse.DEFAULT_CLEANUP_TIMEOUT == 30.0
    assert EventSourceResponse(numbers(1))._cleanup_timeout == EventSourceResponse.DEFAULT_CLEANUP_TIMEOUT


@pytest.mark.parametrize(
    "kwargs, exc, words",
    [
        ({"ping": "5"}, TypeError, "ping interval must be int"),
        ({"ping": -1}, ValueError, "ping interval must be >= 0"),
        ({"cleanup_timeout": -1}, ValueError, "cleanup_timeout must be >= 0"),
    ],
)
def test_error_messages_keep_sse_starlettes_words(kwargs, exc, words):
    """Our messages name the argument and value, and contain the words sse-starlette's users match on."""
    with pytest.raises(exc, match=words):
        EventSourceResponse(numbers(1), **kwargs)
    with pytest.raises(exc, match=words):
        RefResponse(numbers(1), **kwargs)


def test_retry_error_keeps_sse_starlettes_words(impl):
    """sse-starlette's own test compares the message with ``==``; the value rides in a note."""
    for make in (lambda: ServerSentEvent("x", retry="5"), lambda: impl.encode_fields("x", retry="5"),
                 lambda: impl.encode_item({"data": "x", "retry": 2.5})):
        with pytest.raises(TypeError) as info:
            make()
        assert str(info.value) == "retry argument must be int"
        assert any("milliseconds" in note and ("'5'" in note or "2.5" in note) for note in info.value.__notes__)


def test_imports_with_only_the_declared_dependencies():
    """sse_fast imports and streams without packages it does not declare (sniffio: a demo install
    once failed with ModuleNotFoundError, anyio 4 does not bring it)."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['sniffio'] = None\n"
            "import asyncio, sse_fast, sse_fast.broadcast\n"
            "from sse_fast import EventSourceResponse\n"
            "out = []\n"
            "async def gen():\n"
            "    yield 'a'\n"
            "async def recv():\n"
            "    await asyncio.sleep(3600)\n"
            "async def send(m):\n"
            "    out.append(m)\n"
            "asyncio.run(EventSourceResponse(gen())({'type': 'http', 'method': 'GET', 'path': '/', 'headers': []}, "
            "recv, send))\n"
            "print(b''.join(m.get('body', b'') for m in out))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.stdout.strip() == "b'data: a\\r\\n\\r\\n'", res.stderr[-2000:]
