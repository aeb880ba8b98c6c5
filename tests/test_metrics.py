"""Prometheus metrics (``sse_fast.metrics``): exact counts, in process and on a real server.

In process, every stream test runs on both encoder twins (``impl``) and on
both writers: asyncio's ``StreamWriter`` and the generic path under trio
(``GenericStream``); the counters are compared with what the hand-written
client received, exactly. On a real server: the demo (``python -m sse_fast
demo``) under uvicorn, a load of streams read to their end and streams the
client leaves early, ``/metrics`` scraped over HTTP while they are open and
after, parsed with prometheus_client's own parser.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import weakref
from concurrent.futures import ThreadPoolExecutor

import anyio
import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from sse_fast import AppStatus, EventSourceResponse, SendTimeoutError, metrics
from sse_fast._writer import STOP_DISCONNECT, STOP_ERROR, STOP_SHUTDOWN, end_reason
from sse_fast.metrics import END_REASONS

from .asgi_client import Client, numbers, scope
from .conftest import DEMO_COMMAND, ROOT, Server, twin_params

GUARD = 10.0
BACKENDS = ["asyncio", "trio"]


@pytest.fixture
def reg():
    """A fresh registry with sse_fast's metrics enabled in it; disabled afterwards."""
    metrics.disable_metrics()  # enabled by another test module (the demo enables them)
    registry = CollectorRegistry()
    metrics.enable_metrics(registry)
    yield registry
    metrics.disable_metrics()


def counts(registry, route: str = "") -> dict[str, float | None]:
    """Every stream metric of ``route`` (``None``: no such sample)."""
    def get(name, **labels):
        return registry.get_sample_value(name, {"route": route, **labels})

    out = {
        "open": get("sse_fast_streams_open"),
        "opened": get("sse_fast_streams_opened_total"),
        "events": get("sse_fast_events_sent_total"),
        "bytes": get("sse_fast_sent_bytes_total"),
        "sends": get("sse_fast_sends_total"),
        "timeouts": get("sse_fast_send_timeouts_total"),
        "pings": get("sse_fast_pings_sent_total"),
    }
    for reason in END_REASONS:
        out[reason] = get("sse_fast_streams_ended_total", reason=reason)
    return out


def expected(**changes) -> dict[str, float]:
    """One stream, ended; zero everywhere but ``changes``."""
    out = {"open": 0.0, "opened": 1.0, "events": 0.0, "bytes": 0.0, "sends": 0.0, "timeouts": 0.0, "pings": 0.0}
    out.update({reason: 0.0 for reason in END_REASONS})
    out.update({k: float(v) for k, v in changes.items()})
    return out


async def drive(resp, client: Client, *, sc=None, disconnect_after=None, exit_after=None):
    """Run ``resp`` to its end within GUARD s; the client leaves after ``disconnect_after`` s,
    ``AppStatus.should_exit`` is set after ``exit_after`` s."""
    failure: Exception | None = None
    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as tg:
            if disconnect_after is not None:
                async def leave():
                    await anyio.sleep(disconnect_after)
                    client.disconnect()
                tg.start_soon(leave)
            if exit_after is not None:
                async def exit_later():
                    await anyio.sleep(exit_after)
                    AppStatus.should_exit = True
                tg.start_soon(exit_later)
            try:
                await resp(sc or scope(), client.receive, client.send)
            except Exception as exc:
                failure = exc  # raised as itself, not in an ExceptionGroup
            finally:
                tg.cancel_scope.cancel()
    if failure is not None:
        raise failure


def run(backend, fn):
    try:
        return anyio.run(fn, backend=backend)
    finally:
        AppStatus.should_exit = False


async def forever():
    await anyio.sleep_forever()
    yield {}  # never reached


# -- the stream metrics, in process ---------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_complete_stream_counts_events_bytes_sends(impl, reg, backend):
    c = Client()

    async def main():
        await drive(EventSourceResponse(numbers(1000)), c)   # ready together: batched
        await drive(EventSourceResponse(numbers(5, delay=0.02)), c)  # a slow producer: one send each

    run(backend, main)
    events, pings = c.tally()
    assert events == 1005 and pings == 0
    assert counts(reg) == expected(opened=2, complete=2, events=1005, bytes=len(c.body), sends=len(c.bodies))
    assert len(c.bodies) >= 6  # at least one send for the batch, then one per slow event


@pytest.mark.parametrize("backend", BACKENDS)
def test_disconnect(impl, reg, backend):
    c = Client()
    run(backend, lambda: drive(EventSourceResponse(numbers(10_000, delay=0.01)), c, disconnect_after=0.2))
    events, _ = c.tally()
    assert 3 <= events < 10_000
    assert c.messages[-1][1]["more_body"] is True  # cut: no end of body
    assert counts(reg) == expected(disconnect=1, events=events, bytes=len(c.body), sends=len(c.bodies))


@pytest.mark.parametrize("backend", BACKENDS)
def test_send_timeout(impl, reg, backend):
    c = Client(block_send=True)

    async def main():
        with pytest.raises(SendTimeoutError):
            await drive(EventSourceResponse(numbers(3), send_timeout=0.1), c)

    run(backend, main)
    # the blocked send never completed: nothing was sent
    assert c.body == b""
    assert counts(reg) == expected(send_timeout=1, timeouts=1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_shutdown(impl, reg, backend):
    c = Client()
    run(backend, lambda: drive(EventSourceResponse(numbers(10_000, delay=0.01)), c, exit_after=0.2))
    events, _ = c.tally()
    assert 3 <= events < 10_000
    assert c.messages[-1][1] == {"type": "http.response.body", "body": b"", "more_body": False}
    assert counts(reg) == expected(shutdown=1, events=events, bytes=len(c.body), sends=len(c.bodies))


def test_shutdown_whose_flush_the_client_does_not_take_is_still_shutdown(impl, reg):
    c = Client(block_send=True)
    run("asyncio", lambda: drive(EventSourceResponse(numbers(3)), c, exit_after=0.1))
    assert c.body == b""
    assert counts(reg) == expected(shutdown=1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_error(impl, reg, backend):
    async def broken():
        for i in range(3):
            yield {"data": i}
        raise RuntimeError("boom")

    c = Client()

    async def main():
        with pytest.raises(RuntimeError, match="boom"):
            await drive(EventSourceResponse(broken()), c)

    run(backend, main)
    assert c.tally() == (3, 0)  # what came before the error is sent first
    assert counts(reg) == expected(error=1, events=3, bytes=len(c.body), sends=len(c.bodies))


def test_data_sender_failure_is_an_error(impl, reg):
    async def sender():
        await anyio.sleep(0.05)
        raise ValueError("sender broke")

    c = Client()

    async def main():
        with pytest.raises(ValueError, match="sender broke"):
            await drive(EventSourceResponse(forever(), data_sender_callable=sender), c)

    run("asyncio", main)
    assert counts(reg) == expected(error=1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_pings_counted_apart_from_events(impl, reg, backend):
    c = Client()
    run(backend, lambda: drive(EventSourceResponse(forever(), ping=0.05), c, disconnect_after=0.33))
    events, pings = c.tally()
    assert events == 0 and 3 <= pings <= 7
    assert counts(reg) == expected(disconnect=1, pings=pings, bytes=len(c.body), sends=len(c.bodies))


@pytest.mark.parametrize("backend", BACKENDS)
def test_pings_and_events_in_one_stream(impl, reg, backend):
    c = Client()
    run(backend, lambda: drive(EventSourceResponse(numbers(10_000, delay=0.01), ping=0.03), c,
                               disconnect_after=0.3))
    events, pings = c.tally()
    assert events >= 3 and pings >= 3
    assert counts(reg) == expected(disconnect=1, events=events, pings=pings, bytes=len(c.body),
                                   sends=len(c.bodies))


@pytest.mark.parametrize("backend", BACKENDS)
def test_route_label_only_where_the_app_gives_one(impl, reg, backend):
    async def main():
        await drive(EventSourceResponse(numbers(2), metrics_route="news"), Client())
        await drive(EventSourceResponse(numbers(3), metrics_route="news"), Client())
        await drive(EventSourceResponse(numbers(1)), Client())

    run(backend, main)
    news = counts(reg, "news")
    assert (news["opened"], news["complete"], news["events"]) == (2, 2, 5)
    plain = counts(reg, "")
    assert (plain["opened"], plain["complete"], plain["events"]) == (1, 1, 1)
    routes = {s.labels["route"] for fam in reg.collect() for s in fam.samples if "route" in s.labels}
    assert routes == {"news", ""}


@pytest.mark.parametrize("backend", BACKENDS)
def test_head_is_not_a_stream(impl, reg, backend):
    c = Client()
    run(backend, lambda: drive(EventSourceResponse(numbers(3), metrics_route="h"), c, sc=scope("HEAD")))
    assert [m["type"] for _, m in c.messages] == ["http.response.start", "http.response.body"]
    assert counts(reg, "h") == dict.fromkeys(counts(reg, "h"))  # never bound: no sample at all


def test_open_gauge_while_streams_run(impl, reg):
    seen = []

    async def main():
        clients = [Client() for _ in range(3)]
        async with anyio.create_task_group() as tg:
            for c in clients:
                tg.start_soon(drive, EventSourceResponse(forever(), metrics_route="live"), c)
            await anyio.sleep(0.1)
            seen.append(counts(reg, "live")["open"])
            clients[0].disconnect()
            await anyio.sleep(0.05)
            seen.append(counts(reg, "live")["open"])
            for c in clients[1:]:
                c.disconnect()

    run("asyncio", main)
    assert seen == [3, 2]
    assert counts(reg, "live") == expected(opened=3, disconnect=3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_running_stream_counts_reach_the_metrics_within_the_flush_interval(impl, reg, backend, monkeypatch):
    from sse_fast import _writer

    monkeypatch.setattr(_writer, "STATS_FLUSH_SECONDS", 0.05)  # asyncio's writer gathers counts that long
    seen = []

    async def five_then_wait():
        for i in range(5):
            yield {"data": i}
            await anyio.sleep(0.01)
        await anyio.sleep_forever()

    c = Client()

    async def main():
        async with anyio.create_task_group() as tg:
            tg.start_soon(drive, EventSourceResponse(five_then_wait(), ping=0), c)
            await anyio.sleep(0.3)
            seen.append(counts(reg))
            c.disconnect()

    run(backend, main)
    assert c.tally() == (5, 0)
    assert seen == [expected(open=1, events=5, bytes=len(c.body), sends=len(c.bodies))]
    assert counts(reg) == expected(disconnect=1, events=5, bytes=len(c.body), sends=len(c.bodies))


def test_broadcast_events_are_counted(impl, reg):
    from sse_fast.broadcast import Broadcast

    c = Client()

    async def main():
        b = Broadcast()

        async def publisher():
            while b.subscribers("t") < 1:
                await anyio.sleep(0.005)
            for i in range(20):
                b.publish({"data": i}, "t")
                await anyio.sleep(0.005)  # the stream's writer is idle again: the fan-out sends
            await anyio.sleep(0.05)
            c.disconnect()

        async with anyio.create_task_group() as tg:
            tg.start_soon(publisher)
            await drive(EventSourceResponse(b.subscribe("t"), ping=0, metrics_route="b"), c)

    run("asyncio", main)
    assert c.tally() == (20, 0)
    assert counts(reg, "b") == expected(disconnect=1, events=20, bytes=len(c.body), sends=len(c.bodies))


def test_buffer_counts_events_and_pings_per_batch(impl):
    sb = impl.StreamBuffer("\r\n", 1 << 16, None)
    sb.append({"data": 1})
    sb.append_bytes(b"data: 2\r\n\r\n")
    sb.append_ping(b": ping\r\n\r\n")
    assert (sb.count, sb.pings, sb.last_events, sb.last_pings, sb.sent_events, sb.sent_pings) == (2, 1, 0, 0, 0, 0)
    assert sb.take() == b"data: 1\r\n\r\ndata: 2\r\n\r\n: ping\r\n\r\n"
    assert (sb.count, sb.pings, sb.last_events, sb.last_pings) == (0, 0, 2, 1)
    sb.append("x")  # appended while the batch is in flight: not part of it
    sb.room_made()  # the batch's send completed
    assert (sb.count, sb.last_events, sb.last_pings, sb.sent_events, sb.sent_pings) == (1, 0, 0, 2, 1)
    sb.clear()  # drops what waits, keeps what was sent
    assert (sb.count, sb.pings, sb.sent_events, sb.sent_pings) == (0, 0, 2, 1)
    sb.take()
    sb.room_made()
    assert (sb.sent_events, sb.sent_pings) == (2, 1)


# -- end reasons, precedence ----------------------------------------------------------------------


def test_end_reason_precedence():
    import asyncio

    timeout = SendTimeoutError("late")
    assert end_reason(None, None) == "complete"
    assert end_reason(STOP_DISCONNECT, None) == "disconnect"
    assert end_reason(STOP_SHUTDOWN, None) == "shutdown"
    assert end_reason(None, RuntimeError()) == "error"
    assert end_reason(STOP_ERROR, RuntimeError()) == "error"
    assert end_reason(STOP_ERROR, timeout) == "send_timeout"
    assert end_reason(STOP_SHUTDOWN, timeout) == "send_timeout"
    assert end_reason(STOP_DISCONNECT, RuntimeError()) == "disconnect"  # raised while being stopped
    assert end_reason(STOP_SHUTDOWN, RuntimeError()) == "error"  # e.g. a failed data sender
    assert end_reason(STOP_SHUTDOWN, asyncio.CancelledError()) == "shutdown"
    assert end_reason(None, asyncio.CancelledError()) == "disconnect"  # the server gave up on the request


# -- enabling, disabling, bad input ---------------------------------------------------------------


def test_disabled_by_default_costs_nothing_and_registers_nothing(impl):
    metrics.disable_metrics()
    assert metrics.ACTIVE is None
    registry = CollectorRegistry()
    c = Client()
    run("asyncio", lambda: drive(EventSourceResponse(numbers(10), metrics_route="x"), c))
    assert c.tally() == (10, 0)
    assert list(registry.collect()) == []
    import prometheus_client

    assert not [fam.name for fam in prometheus_client.REGISTRY.collect() if fam.name.startswith("sse_fast")]
    # importing sse_fast (and its metrics module) does not import prometheus_client
    code = ("import sys, sse_fast, sse_fast.metrics, sse_fast.response; "
            "assert 'prometheus_client' not in sys.modules, 'imported'; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], cwd=str(ROOT), capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "ok", out.stderr


def test_enable_is_idempotent_per_registry_and_disable_unregisters():
    metrics.disable_metrics()
    registry = CollectorRegistry()
    try:
        m = metrics.enable_metrics(registry)
        assert metrics.ACTIVE is m and metrics.enable_metrics(registry) is m
        names = {fam.name for fam in registry.collect()}
        assert {"sse_fast_streams_open", "sse_fast_streams_opened", "sse_fast_streams_ended",
                "sse_fast_events_sent", "sse_fast_sent_bytes", "sse_fast_sends", "sse_fast_send_timeouts",
                "sse_fast_pings_sent", "sse_fast_broadcast_publishes", "sse_fast_broadcast_replayed_events",
                "sse_fast_broadcast_gaps", "sse_fast_broadcast_slow_subscribers",
                "sse_fast_broadcast_delivery_seconds", "sse_fast_redis_reconnects", "sse_fast_redis_lag_seconds",
                "sse_fast_broadcast_subscribers"} == names
        with pytest.raises(RuntimeError, match="disable_metrics"):
            metrics.enable_metrics(CollectorRegistry())
        with pytest.raises(RuntimeError, match="already enabled"):
            metrics.enable_metrics(registry, namespace="other")
    finally:
        metrics.disable_metrics()
    assert metrics.ACTIVE is None and list(registry.collect()) == []
    # enabled again in the same registry, with another namespace
    try:
        m = metrics.enable_metrics(registry, namespace="myapp_sse")
        assert "myapp_sse_streams_open" in {fam.name for fam in registry.collect()}
    finally:
        metrics.disable_metrics()


@pytest.mark.parametrize("namespace, exc", [("", ValueError), ("9lives", ValueError), ("a-b", ValueError),
                                            ("a:b", ValueError), ("a b", ValueError), (None, TypeError),
                                            (b"sse", TypeError)])
def test_bad_namespace(namespace, exc):
    metrics.disable_metrics()
    with pytest.raises(exc, match="namespace") as info:
        metrics.enable_metrics(CollectorRegistry(), namespace=namespace)
    assert repr(namespace) in str(info.value)
    assert metrics.ACTIVE is None


def test_name_clash_in_the_registry_leaves_nothing_behind():
    from prometheus_client import Counter

    metrics.disable_metrics()
    registry = CollectorRegistry()
    Counter("sse_fast_sends", "someone else's", registry=registry)
    with pytest.raises(ValueError):
        metrics.enable_metrics(registry)
    assert metrics.ACTIVE is None
    assert {fam.name for fam in registry.collect()} == {"sse_fast_sends"}


def test_missing_prometheus_client_names_the_extra(monkeypatch):
    metrics.disable_metrics()
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # import fails
    with pytest.raises(ImportError, match=r"sse_fast\[metrics\]"):
        metrics.enable_metrics()
    assert metrics.ACTIVE is None


@pytest.mark.parametrize("route", [1, b"news", ["news"], True])
def test_bad_metrics_route(route):
    with pytest.raises(TypeError, match="metrics_route") as info:
        EventSourceResponse(numbers(1), metrics_route=route)
    assert repr(route) in str(info.value)


def test_stream_counters_refuse_an_unknown_reason(reg):
    with pytest.raises(ValueError, match="'finished'"):
        metrics.ACTIVE.route("r").ended("finished")


# -- subscribers per topic, computed when scraped ---------------------------------------------------


class FakeBroadcast:
    def __init__(self, counts):
        self.counts = counts

    def topic_subscriber_counts(self):
        return dict(self.counts)


def test_subscribers_per_topic_at_scrape_time(reg):
    a = FakeBroadcast({"news": 2, "chat": 1})
    b = FakeBroadcast({"news": 3})
    metrics.register_broadcast(a)
    metrics.register_broadcast(a)  # once only
    metrics.register_broadcast(b)

    def scrape():
        return {t: reg.get_sample_value("sse_fast_broadcast_subscribers", {"topic": t}) for t in ("news", "chat")}

    assert scrape() == {"news": 5.0, "chat": 1.0}
    a.counts = {"news": 1}
    assert scrape() == {"news": 4.0, "chat": None}
    ref = weakref.ref(b)
    del b  # held weakly: gone with the broadcast
    assert ref() is None
    assert scrape() == {"news": 1.0, "chat": None}
    del a


def test_real_broadcast_subscribers(reg):
    from sse_fast.broadcast import Broadcast

    seen = []

    async def main():
        b = Broadcast()  # created while metrics are enabled: registered
        c1, c2 = Client(), Client()
        async with anyio.create_task_group() as tg:
            tg.start_soon(drive, EventSourceResponse(b.subscribe("room/1"), ping=0), c1)
            tg.start_soon(drive, EventSourceResponse(b.subscribe("room/1"), ping=0), c2)
            while b.subscribers("room/1") < 2:
                await anyio.sleep(0.005)
            seen.append(reg.get_sample_value("sse_fast_broadcast_subscribers", {"topic": "room/1"}))
            c1.disconnect()
            while b.subscribers("room/1") > 1:
                await anyio.sleep(0.005)
            seen.append(reg.get_sample_value("sse_fast_broadcast_subscribers", {"topic": "room/1"}))
            c2.disconnect()

    run("asyncio", main)
    assert seen == [2.0, 1.0]


def test_register_broadcast_refuses_other_objects():
    with pytest.raises(TypeError, match="topic_subscriber_counts"):
        metrics.register_broadcast(object())

    class Slotted:
        __slots__ = ()

        def topic_subscriber_counts(self):
            return {}

    with pytest.raises(TypeError, match="weakly referenced"):
        metrics.register_broadcast(Slotted())


# -- on a real server: the demo under uvicorn -----------------------------------------------------


def scrape(srv) -> dict[tuple[str, frozenset], float]:
    """``GET /metrics`` parsed by prometheus_client: ``{(sample name, labels): value}``."""
    r = httpx.get(f"{srv.url}/metrics", timeout=5)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    out = {}
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def sample(values, name, **labels) -> float:
    return values.get((name, frozenset(labels.items())), 0.0)


class ChunkedReader:
    """A raw HTTP/1.1 GET on a socket; de-chunks the body, counting bytes, chunks (sends) and events."""

    def __init__(self, srv, path: str, method: str = "GET") -> None:
        self.sock = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        self.sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n".encode())
        self.raw = b""
        self.head = b""
        self.body = b""
        self.chunks = 0
        self.ended = False

    def _more(self) -> bool:
        data = self.sock.recv(65536)
        self.raw += data
        return bool(data)

    def read_head(self) -> bytes:
        while b"\r\n\r\n" not in self.raw:
            assert self._more(), self.raw
        self.head, _, self.raw = self.raw.partition(b"\r\n\r\n")
        return self.head

    def read_chunk(self) -> bool:
        """Read one chunk; ``False`` at the last (empty) one."""
        while b"\r\n" not in self.raw:
            assert self._more(), "connection closed inside a chunk"
        line, _, rest = self.raw.partition(b"\r\n")
        size = int(line, 16)
        while len(rest) < size + 2:
            assert self._more(), "connection closed inside a chunk"
            line, _, rest = self.raw.partition(b"\r\n")
        self.raw = rest[size + 2:]
        if size == 0:
            self.ended = True
            return False
        self.body += rest[:size]
        self.chunks += 1
        return True

    @property
    def events(self) -> int:
        return self.body.count(b"\r\n\r\n")

    def close(self) -> None:
        self.sock.close()


@pytest.mark.server
@pytest.mark.parametrize("twin", twin_params())
def test_demo_metrics_match_what_clients_counted(twin):
    held_n, done_n, n, size = 8, 6, 2000, 40
    srv = Server(twin, command=DEMO_COMMAND)
    held: list[ChunkedReader] = []
    try:
        before = scrape(srv)
        assert sample(before, "sse_fast_streams_open", route="events") == 0

        # streams the clients will leave: one event each (the next comes after an hour; pings after 15 s)
        for _ in range(held_n):
            r = ChunkedReader(srv, "/events?interval=3600")
            assert r.read_head().startswith(b"HTTP/1.1 200")
            r.read_chunk()
            held.append(r)

        # meanwhile, streams read to their end, concurrently
        def complete(_):
            r = ChunkedReader(srv, f"/stream?n={n}&size={size}")
            r.read_head()
            while r.read_chunk():
                pass
            r.close()
            return r

        with ThreadPoolExecutor(done_n) as pool:
            done = list(pool.map(complete, range(done_n)))
        # a HEAD request is not a stream
        head = ChunkedReader(srv, "/stream?n=5", method="HEAD")
        assert head.read_head().startswith(b"HTTP/1.1 200")
        head.close()

        assert all(r.ended and r.events == n for r in done)
        # the held streams are open right now; the finished ones close just after their last chunk
        during = scrape(srv)
        assert sample(during, "sse_fast_streams_open", route="events") == held_n
        assert sample(during, "sse_fast_streams_opened_total", route="events") == held_n

        # the clients leave
        for r in held:
            r.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            after = scrape(srv)
            if (sample(after, "sse_fast_streams_ended_total", route="events", reason="disconnect") == held_n
                    and sample(after, "sse_fast_streams_ended_total", route="stream", reason="complete") == done_n):
                break
            time.sleep(0.05)

        def route_counts(route, readers):
            return {
                "open": sample(after, "sse_fast_streams_open", route=route),
                "opened": sample(after, "sse_fast_streams_opened_total", route=route),
                **{reason: sample(after, "sse_fast_streams_ended_total", route=route, reason=reason)
                   for reason in END_REASONS},
                "events": sample(after, "sse_fast_events_sent_total", route=route),
                "bytes": sample(after, "sse_fast_sent_bytes_total", route=route),
                "sends": sample(after, "sse_fast_sends_total", route=route),
                "timeouts": sample(after, "sse_fast_send_timeouts_total", route=route),
                "pings": sample(after, "sse_fast_pings_sent_total", route=route),
            }, {
                "events": sum(r.events for r in readers),
                "bytes": sum(len(r.body) for r in readers),
                "sends": sum(r.chunks for r in readers),
            }

        got, client = route_counts("events", held)
        assert client["events"] == held_n
        assert got == expected(opened=held_n, disconnect=held_n, **client)
        got, client = route_counts("stream", done)
        assert client["events"] == done_n * n
        assert got == expected(opened=done_n, complete=done_n, **client)
        # nothing else was counted: no unlabelled stream, no other route
        assert {dict(k[1]).get("route") for k, v in after.items()
                if k[0] == "sse_fast_streams_opened_total" and v} == {"events", "stream"}
    finally:
        for r in held:
            r.close()
        out = srv.stop()
    assert "Traceback" not in out, out
