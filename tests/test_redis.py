"""The Redis backend of ``sse_fast.broadcast`` against a real ``redis-server`` (Debian's, 7.x).

Every test starts from a ``redis-server`` the module starts on a free port in
a temporary folder (``.ci/run`` installs Debian's package) and uses its own key
prefix. In process, on both encoder twins (``impl``): the bytes equal the
memory backend's; two ``Broadcast`` objects (as two processes) see one order;
replay across them has no gap and no duplicate at the seam; a
``Last-Event-ID`` this process has not read yet is caught up, not a gap; bad
configuration fails early; a publish without Redis fails in bounded time.

On real servers (``pytest.mark.server``; ``tests/redis_app.py`` under uvicorn
with uvloop): two servers on two ports as two machines with a publisher in a
third process (``tests/redis_publisher.py``); ``uvicorn --workers 2`` on one
port; Redis restarted under 1,000 open streams; a worker killed with SIGKILL
whose clients reconnect to the other one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import anyio
import pytest

from sse_fast import JSONServerSentEvent, ServerSentEvent
from sse_fast.broadcast import Broadcast, PublishError, RedisPublisher

from .conftest import ROOT, Server, free_port, twin_params
from .rawhttp import SSEReader, http_json

redis = pytest.importorskip("redis")

REDIS_SERVER = shutil.which("redis-server")
if REDIS_SERVER is None:
    if os.environ.get("CI"):
        raise RuntimeError("redis-server is missing: install Debian's redis-server package (.ci/run does)")
    pytest.skip("redis-server not installed (apt-get install redis-server)", allow_module_level=True)

GAP = b"event: sse_fast.gap\r\n"


class RedisServer:
    """``redis-server`` on 127.0.0.1:``port`` with its files in ``folder``; RDB saved on SIGTERM."""

    def __init__(self, folder: Path, port: int | None = None) -> None:
        self.folder = folder
        self.port = free_port() if port is None else port
        self.proc: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
             "--save", "3600 1", "--appendonly", "no", "--protected-mode", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url, socket_timeout=0.5, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.exceptions.RedisError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        client.close()

    def stop(self) -> None:
        """SIGTERM: redis-server saves its RDB file and exits."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


@pytest.fixture(scope="module")
def redis_srv(tmp_path_factory):
    srv = RedisServer(tmp_path_factory.mktemp("redis"))
    yield srv
    srv.stop()


@pytest.fixture
def prefix():
    return f"test:{uuid.uuid4().hex[:10]}:"


def run(main, *args, guard=20.0):
    async def guarded():
        with anyio.fail_after(guard):
            return await main(*args)

    return asyncio.run(guarded())


async def take(sub, n: int, limit: float = 5.0) -> list[bytes]:
    out: list[bytes] = []
    with anyio.fail_after(limit):
        async for data in sub:
            out.append(data)
            if len(out) == n:
                break
    return out


async def wait_until(pred, limit: float = 5.0) -> None:
    """Poll ``pred()`` every 10 ms until it is true; fail after ``limit`` seconds."""
    with anyio.fail_after(limit):
        while not pred():
            await asyncio.sleep(0.01)


async def live_subscriber(b: Broadcast, topic: str = "t") -> tuple[list[bytes], asyncio.Task]:
    """A task iterating ``b.subscribe(topic)`` into the returned list, once it is live."""
    got: list[bytes] = []

    async def collect():
        async for data in b.subscribe(topic):
            got.append(data)

    task = asyncio.create_task(collect())
    await wait_until(lambda: b.subscribers(topic))
    return got, task


def sse_id(data: bytes) -> str | None:
    m = re.search(rb"(?:^|\n)id: ([^\r\n]*)\r\n", data)
    return m.group(1).decode() if m else None


# -- in process --------------------------------------------------------------------------


EVENTS = [
    {"data": "a\nb\r\nc", "event": "e", "id": "i1", "retry": 1500, "comment": "c1\nc2"},
    ServerSentEvent("x", id="i2", event="ev"),
    JSONServerSentEvent({"k": [1, "\u00e9"]}, id="i3"),
    {"data": 42, "id": "i4"},
    {"comment": "only a comment", "id": "i5"},
    {"data": "", "id": "i6"},
    {"data": "s", "id": "i7", "sep": "\n"},
    b": preformatted, sent as it is\r\n\r\n",
]


def test_bytes_on_the_wire_equal_the_memory_backends(impl, redis_srv, prefix):
    async def main():
        mem = Broadcast()
        red = Broadcast(url=redis_srv.url, key_prefix=prefix)
        sm, sr = mem.subscribe("x"), red.subscribe("x")
        tm = asyncio.create_task(take(sm, len(EVENTS) + 1))
        tr = asyncio.create_task(take(sr, len(EVENTS) + 1))
        await wait_until(lambda: mem.subscribers("x") and red.subscribers("x"))  # both live
        for ev in EVENTS:
            mem.publish(ev, "x")
            await red.apublish(ev, "x")
        mem.publish(3.5, "x")
        rid = await red.apublish(3.5, "x")
        got_m, got_r = await tm, await tr
        await red.aclose()
        return got_m, got_r, rid

    got_m, got_r, rid = run(main)
    assert got_r[:-1] == got_m[:-1]
    assert got_m[-1] == b"id: 9\r\ndata: 3.5\r\n\r\n"
    assert re.fullmatch(r"\d+-\d+", rid)
    assert got_r[-1] == f"id: {rid}\r\ndata: 3.5\r\n\r\n".encode()


def test_two_processes_see_one_order_and_replay_across_them(impl, redis_srv, prefix):
    """Two broadcasts (as two processes): publishes from both interleave in one order everywhere;
    a subscriber that moves from one to the other with Last-Event-ID, while events go on being
    published, gets every event once."""

    async def collect(sub, out: list[bytes], n: int) -> None:
        with anyio.fail_after(10):
            async for data in sub:
                out.append(data)
                if len(out) == n:
                    break

    async def main():
        a = Broadcast(url=redis_srv.url, key_prefix=prefix)
        b = Broadcast(url=redis_srv.url, key_prefix=prefix)
        got_a: list[bytes] = []
        got_b: list[bytes] = []
        got_m: list[bytes] = []
        ta = asyncio.create_task(collect(a.subscribe("t"), got_a, 60))
        tb = asyncio.create_task(collect(b.subscribe("t"), got_b, 60))
        await wait_until(lambda: a.subscribers("t") and b.subscribers("t"))
        ids = await asyncio.gather(*(x.apublish({"data": f"d{i}"}, "t") for i, x in enumerate([a, b] * 15)))
        await wait_until(lambda: len(got_a) >= 30)
        # the client saw 30 events on a, then reconnects to b while publishing goes on
        tm = asyncio.create_task(collect(b.subscribe("t", last_event_id=sse_id(got_a[29])), got_m, 30))
        more = [asyncio.create_task(x.apublish({"data": f"late{i}"}, "t")) for i, x in enumerate([b, a] * 15)]
        later = await asyncio.gather(*more)
        await asyncio.gather(ta, tb, tm)
        await a.aclose()
        await b.aclose()
        return ids, later, got_a, got_b, got_m

    ids, later, got_a, got_b, got_m = run(main)
    order_a = [sse_id(d) for d in got_a]
    assert order_a == [sse_id(d) for d in got_b]  # one order in every process
    assert sorted(order_a[:30]) == sorted(ids) and sorted(order_a[30:]) == sorted(later)
    assert order_a == sorted(order_a, key=lambda s: tuple(map(int, s.split("-"))))  # the stream's order
    assert [sse_id(d) for d in got_m] == order_a[30:]  # no gap, no duplicate at the seam
    assert not any(GAP in d for d in got_m)


def test_a_last_event_id_not_read_here_yet_is_caught_up_not_a_gap(impl, redis_srv, prefix):
    async def main():
        b = Broadcast(url=redis_srv.url, key_prefix=prefix)
        first = asyncio.create_task(take(b.subscribe("t"), 1))
        await wait_until(lambda: b.subscribers("t"))  # the topic is live here
        with RedisPublisher(redis_srv.url, key_prefix=prefix) as pub:
            x = pub.publish({"data": "x"}, "t")  # another process's publish, not read here yet
            sub = b.subscribe("t", last_event_id=x)
            t = asyncio.create_task(take(sub, 1))
            await wait_until(lambda: b.subscribers("t") == 2)
            y = pub.publish({"data": "y"}, "t")
        got = await t
        await first
        await b.aclose()
        return x, y, got

    x, y, got = run(main)
    assert got == [f"id: {y}\r\ndata: y\r\n\r\n".encode()]


def test_an_id_older_than_the_shared_history_is_the_visible_gap(impl, redis_srv, prefix):
    async def main():
        with RedisPublisher(redis_srv.url, key_prefix=prefix, history=5) as pub:
            ids = [pub.publish({"data": f"d{i}"}, "t") for i in range(10)]
        b = Broadcast(url=redis_srv.url, key_prefix=prefix, history=5)
        got = await take(b.subscribe("t", last_event_id=ids[1]), 6)
        await b.aclose()
        return ids, got

    ids, got = run(main)
    # MAXLEN ~ keeps at least 5; the mirror keeps exactly the newest 5
    assert got[0] == (b'event: sse_fast.gap\r\ndata: {"last_event_id":"' + ids[1].encode()
                      + b'","oldest":"' + ids[5].encode() + b'"}\r\n\r\n')
    assert [sse_id(d) for d in got[1:]] == ids[5:]


def test_an_app_given_id_resolves_in_another_process(impl, redis_srv, prefix):
    async def main():
        with RedisPublisher(redis_srv.url, key_prefix=prefix) as pub:
            for i in range(5):
                pub.publish({"data": f"d{i}", "id": f"app-{i}"}, "t")
        b = Broadcast(url=redis_srv.url, key_prefix=prefix)
        got = await take(b.subscribe("t", last_event_id="app-2"), 2)
        await b.aclose()
        return got

    assert run(main) == [b"id: app-3\r\ndata: d3\r\n\r\n", b"id: app-4\r\ndata: d4\r\n\r\n"]


@pytest.mark.parametrize("kwargs, exc, words", [
    ({"url": "ftp://h"}, ValueError, "url scheme"),
    ({"url": 5}, TypeError, "url must be a str"),
    ({"url": "redis://127.0.0.1:1/0", "history": 0}, ValueError, "history must be >= 1"),
    ({"url": "redis://127.0.0.1:1/0", "publish_timeout": 0}, ValueError, "publish_timeout"),
    ({"url": "redis://127.0.0.1:1/0", "key_prefix": 3}, TypeError, "key_prefix"),
    ({"url": "redis://127.0.0.1:notaport/0"}, ValueError, "ort"),
])
def test_bad_backend_configuration_fails_in_the_constructor(kwargs, exc, words):
    with pytest.raises(exc, match=words):
        Broadcast(**kwargs)


@pytest.mark.parametrize("kwargs, words", [
    ({"history": 0}, "history must be an int >= 1"),
    ({"timeout": -1}, "timeout must be"),
])
def test_bad_publisher_configuration_fails_in_the_constructor(kwargs, words):
    with pytest.raises(ValueError, match=words):
        RedisPublisher("redis://127.0.0.1:1/0", **kwargs)


def test_a_bad_event_raises_before_anything_reaches_redis(impl, redis_srv, prefix):
    async def main():
        b = Broadcast(url=redis_srv.url, key_prefix=prefix)
        for bad, exc in (({"data": "x", "retry": "5"}, TypeError), ({"data": "x", "id": 5}, TypeError),
                         ({"data": "x", "nope": 1}, TypeError), ({"retry": -1}, ValueError)):
            with pytest.raises(exc):
                b.publish(bad, "t")
            with pytest.raises(exc):
                await b.apublish(bad, "t")
            with pytest.raises(exc), RedisPublisher(redis_srv.url, key_prefix=prefix) as pub:
                pub.publish(bad, "t")
        await b.aclose()

    run(main)
    assert redis.Redis.from_url(redis_srv.url).xlen(prefix + "t") == 0


@pytest.fixture
def blackhole():
    """A port that accepts connections (kernel backlog) and never answers."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    yield f"redis://127.0.0.1:{s.getsockname()[1]}/0"
    s.close()


@pytest.mark.parametrize("where", ["refused", "silent"])
def test_a_publish_without_redis_fails_in_bounded_time(where, blackhole, caplog):
    url = blackhole if where == "silent" else f"redis://127.0.0.1:{free_port()}/0"

    async def main():
        b = Broadcast(url=url, publish_timeout=0.5)
        t0 = time.monotonic()
        with pytest.raises(PublishError, match="publish to topic 't' failed") as info:
            await b.apublish({"data": "x"}, "t")
        took = time.monotonic() - t0
        fut = b.publish({"data": "y"}, "t")  # not awaited by the app: logged
        await asyncio.wait([fut])
        await b.aclose()
        return took, info.value, fut

    with caplog.at_level(logging.ERROR, logger="sse_fast.broadcast"):
        took, err, fut = run(main)
    assert took < 1.5
    assert str(url.split("/")[2]) in str(err)
    assert isinstance(fut.exception(), PublishError)
    assert sum("publish to topic 't' failed" in r.getMessage() for r in caplog.records) == 2

    t0 = time.monotonic()
    with pytest.raises(PublishError), RedisPublisher(url, timeout=0.5) as pub:
        pub.publish({"data": "x"}, "t")
    assert time.monotonic() - t0 < 1.5


def test_the_redis_backend_under_trio_says_it_needs_asyncio(redis_srv):
    async def main():
        b = Broadcast(url=redis_srv.url)
        with pytest.raises(RuntimeError, match="asyncio"):
            await b.apublish({"data": "x"}, "t")
        with pytest.raises(RuntimeError, match="asyncio"):
            async for _ in b.subscribe("t"):
                pass

    anyio.run(main, backend="trio")


# -- real servers ------------------------------------------------------------------------

class Reader(SSEReader):
    keep_raw = True  # the demo test reads the event types too


def request(path: str, last_event_id: str | None = None) -> bytes:
    extra = f"Last-Event-ID: {last_event_id}\r\n" if last_event_id else ""
    return f"GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n{extra}\r\n".encode()


async def connect(port: int, topic: str = "t", last_event_id: str | None = None,
                  reader: Reader | None = None) -> Reader:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_connection(Reader, "127.0.0.1", port)
    if reader is not None:  # a reconnection: keep what was read
        proto.ids = reader.ids
    proto.transport.write(request(f"/events?topic={topic}", last_event_id))
    await proto.head
    assert proto.status == 200
    return proto


async def open_many(port: int, n: int, topic: str = "t") -> list[Reader]:
    sem = asyncio.Semaphore(100)

    async def one():
        async with sem:
            return await connect(port, topic)

    return list(await asyncio.gather(*(one() for _ in range(n))))


async def until(pred, what: str, limit: float = 15.0) -> None:
    deadline = time.monotonic() + limit
    while not await pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def app_server(twin: str, redis_srv: RedisServer, prefix: str, *, workers: int = 0, port: int | None = None,
               ping: float = 1.0) -> Server:
    command = ["-m", "uvicorn", "tests.redis_app:app", "--host", "127.0.0.1", "--port", "{port}",
               "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning"]
    if workers:
        command += ["--workers", str(workers)]
    return Server(twin, command=command, port=port,
                  env={"REDIS_URL": redis_srv.url, "KEY_PREFIX": prefix, "PING": str(ping)})


async def run_publisher(redis_srv: RedisServer, prefix: str, n: int, interval: float,
                        data_prefix: str = "p") -> list[dict]:
    """``tests/redis_publisher.py`` in a third process (no event loop there); its JSON lines."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.redis_publisher", "--url", redis_srv.url, "--key-prefix", prefix,
        "--n", str(n), "--interval", str(interval), "--prefix", data_prefix,
        cwd=str(ROOT), stdout=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    return [json.loads(line) for line in out.decode().splitlines()]


async def every_stream_live(port: int, n: int, polls: int = 10) -> bool:
    """Several workers behind one port: ``/stats`` answers from one of them at a time; true once
    the latest counts of the workers seen add up to ``n`` subscribers."""
    by_pid: dict[int, int] = {}
    for _ in range(polls):
        st = await http_json(port, "/stats")
        by_pid[st["pid"]] = st["subscribers"]
    return sum(by_pid.values()) == n


async def subscribed(port: int, n: int) -> bool:
    return (await http_json(port, "/stats"))["subscribers"] == n


@pytest.mark.server
@pytest.mark.parametrize("twin", twin_params())
def test_two_servers_and_a_publisher_process(twin, redis_srv, prefix):
    """Two uvicorn processes on two ports (two machines), 50 clients each, a publisher in a
    third process: every client gets every event, in the publisher's order."""
    a, b = app_server(twin, redis_srv, prefix), app_server(twin, redis_srv, prefix)

    async def main():
        ra, rb = await open_many(a.port, 50), await open_many(b.port, 50)
        await until(lambda: subscribed(a.port, 50), "a's subscribers")
        await until(lambda: subscribed(b.port, 50), "b's subscribers")
        lines = await run_publisher(redis_srv, prefix, 200, 0.002)
        ids = [line["id"] for line in lines]

        async def all_read():
            return all(len(r.ids) >= 200 for r in ra + rb)

        await until(all_read, "every client to read every event")
        for r in ra + rb:
            r.transport.close()
        return ids, ra, rb

    try:
        ids, ra, rb = run(main, guard=40)
    finally:
        out = a.stop() + b.stop()
    assert len(ids) == 200, out
    for r in ra + rb:
        assert r.ids == ids


@pytest.mark.server
def test_uvicorn_workers_2_on_one_port(redis_srv, prefix):
    """``uvicorn --workers 2``: clients on both workers; publishes from a worker (over HTTP) and
    from a third process reach every client, in one order."""
    srv = app_server("cython", redis_srv, prefix, workers=2)

    async def main():
        readers: list[Reader] = []
        while len({r.pid for r in readers}) < 2 or len(readers) < 40:
            readers += await open_many(srv.port, 10)
            assert len(readers) <= 400, "every connection went to one worker"
        await until(lambda: every_stream_live(srv.port, len(readers)), "every stream to be live")
        from_worker = (await http_json(srv.port, "/publish?n=20&prefix=w"))["ids"]
        lines = await run_publisher(redis_srv, prefix, 20, 0.0)
        ids = from_worker + [line["id"] for line in lines]

        async def all_read():
            return all(len(r.ids) >= 40 for r in readers)

        await until(all_read, "every client to read every event")
        for r in readers:
            r.transport.close()
        return ids, readers

    try:
        ids, readers = run(main, guard=40)
    finally:
        out = srv.stop()
    assert len({r.pid for r in readers}) == 2, out
    for r in readers:
        assert r.ids == ids


@pytest.mark.server
def test_redis_restart_under_1000_open_streams(redis_srv, prefix, tmp_path):
    """1,000 streams on two servers; Redis stops (a publish then fails in bounded time), the
    streams stay open and keep pinging; Redis comes back, events published at once are
    caught up by both servers' readers; every client gets every published event in order."""
    own = RedisServer(tmp_path)  # restarted here: not the module's
    a = app_server("cython", own, prefix, ping=0.5)
    b = app_server("cython", own, prefix, ping=0.5)

    async def main():
        readers = await open_many(a.port, 500) + await open_many(b.port, 500)
        await until(lambda: subscribed(a.port, 500), "a's subscribers")
        await until(lambda: subscribed(b.port, 500), "b's subscribers")
        before = await run_publisher(own, prefix, 20, 0.0, "before")

        async def read(n):
            return all(len(r.ids) >= n for r in readers)

        await until(lambda: read(20), "the events before the restart")
        own.stop()
        pings = [r.pings for r in readers]
        t0 = time.monotonic()
        failed = await run_publisher(own, prefix, 1, 0.0, "down")
        took = time.monotonic() - t0
        await asyncio.sleep(1.5)
        pinged = sum(r.pings > p for r, p in zip(readers, pings, strict=True))
        open_now = sum(not r.closed for r in readers)
        own.start()
        after = await run_publisher(own, prefix, 20, 0.0, "after")
        await until(lambda: read(40), "the events after the restart", 20)
        stats = [await http_json(s.port, "/stats") for s in (a, b)]
        for r in readers:
            r.transport.close()
        return before, failed, took, pinged, open_now, after, readers, stats

    try:
        before, failed, took, pinged, open_now, after, readers, stats = run(main, guard=90)
    finally:
        out = a.stop() + b.stop()
        own.stop()
    assert "publish to topic 't' failed" in failed[0].get("error", ""), failed
    assert took < 5.0  # the publisher process: start-up plus a refused connection
    assert open_now == 1000 and pinged == 1000, out
    ids = [x["id"] for x in before + after]
    assert all("id" in x for x in before + after)
    for r in readers:
        assert r.ids == ids
    assert all(s["reconnects"] >= 1 and s["connected"] for s in stats), stats


@pytest.mark.server
@pytest.mark.parametrize("twin", twin_params())
def test_a_worker_killed_with_sigkill_loses_nothing(twin, redis_srv, prefix):
    """Clients of a worker killed with SIGKILL reconnect to the other worker with
    Last-Event-ID and, while the publisher goes on, get every event exactly once in order."""
    a, b = app_server(twin, redis_srv, prefix), app_server(twin, redis_srv, prefix)

    async def main():
        readers = await open_many(a.port, 30)
        await until(lambda: subscribed(a.port, 30), "a's subscribers")
        await until(lambda: subscribed(b.port, 0), "b up")
        pub = asyncio.create_task(run_publisher(redis_srv, prefix, 150, 0.01))

        async def read(n):
            return all(len(r.ids) >= n for r in readers)

        await until(lambda: read(30), "30 events on a")
        os.kill(a.proc.pid, signal.SIGKILL)
        await asyncio.gather(*(r.gone for r in readers))
        # each EventSource reconnects, to the other machine, with the last id it saw
        moved = [await connect(b.port, last_event_id=r.ids[-1], reader=r) for r in readers]
        lines = await pub

        async def all_read():
            return all(len(r.ids) >= 150 for r in moved)

        await until(all_read, "every event on b")
        for r in moved:
            r.transport.close()
        return [x["id"] for x in lines], moved

    try:
        ids, moved = run(main, guard=40)
    finally:
        out = a.stop() + b.stop()
    assert len(ids) == 150, out
    for r in moved:
        assert r.ids == ids


@pytest.mark.server
def test_the_demo_chat_across_two_workers(redis_srv):
    """``python -m sse_fast demo --workers 2 --broadcast-url redis://...``: chat streams spread
    over both workers; messages posted to either reach every stream, in one order."""
    from .conftest import DEMO_COMMAND

    srv = Server("cython", command=DEMO_COMMAND + ["--workers", "2", "--broadcast-url", redis_srv.url])
    chat_id = re.compile(rb"\nid: ([^\r\n]+)\r\nevent: chat\r\n")

    async def main():
        loop = asyncio.get_running_loop()
        readers = []
        live_by_pid: dict[int, set[str]] = {}
        subscribed_by_pid: dict[int, int] = {}

        async def open_streams(n):
            for _ in range(n):
                _, proto = await loop.create_connection(Reader, "127.0.0.1", srv.port)
                proto.transport.write(request(f"/chat/events?client=c{len(readers)}"))
                await proto.head
                assert proto.status == 200
                readers.append(proto)

        async def every_stream_live():
            for _ in range(10):
                info = await http_json(srv.port, "/chat/_clients")
                live_by_pid[info["pid"]] = set(info["live"])
                subscribed_by_pid[info["pid"]] = info["subscribers"]
            n = len(readers)
            return len(set().union(*live_by_pid.values())) == n and sum(subscribed_by_pid.values()) == n

        # which worker accepts a connection is the kernel's choice (both wait on one listening
        # socket): on a loaded machine one worker can take every one of them, so open more,
        # a few at a time with pauses, until both workers hold streams (at most 60)
        await open_streams(12)
        while True:
            await until(every_stream_live, "every chat stream to be live (registered with the broadcast)")
            if sum(1 for live in live_by_pid.values() if live) >= 2 or len(readers) >= 60:
                break
            await asyncio.sleep(0.2)
            await open_streams(4)
        sent = []
        for i in range(6):
            r, w = await asyncio.open_connection("127.0.0.1", srv.port)
            body = json.dumps({"name": "t", "text": f"m{i}"}).encode()
            w.write(b"POST /chat/send HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            raw = await r.read()
            w.close()
            assert raw.startswith(b"HTTP/1.1 200"), raw
            sent.append(json.loads(raw.split(b"\r\n\r\n", 1)[1])["id"])

        async def all_read():
            return all(len(chat_id.findall(r.raw)) >= 6 for r in readers)

        await until(all_read, "every message on every stream")
        for r in readers:
            r.transport.close()
        return sent, readers, live_by_pid

    try:
        sent, readers, live_by_pid = run(main, guard=40)
    finally:
        out = srv.stop()
    assert sum(1 for live in live_by_pid.values() if live) == 2, (live_by_pid, out)
    for r in readers:
        assert [m.decode() for m in chat_id.findall(r.raw)] == sent


class Partition:
    """A TCP relay to Redis that the test can cut (a network partition) and heal."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.server: asyncio.AbstractServer | None = None
        self.writers: list[asyncio.StreamWriter] = []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def heal(self) -> None:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    async def cut(self) -> None:
        self.server.close()
        for w in self.writers:
            w.transport.abort()
        self.writers.clear()
        await self.server.wait_closed()

    async def _relay(self, r1: asyncio.StreamReader, w1: asyncio.StreamWriter) -> None:
        r2, w2 = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.writers += [w1, w2]

        async def pipe(r, w):
            try:
                while data := await r.read(65536):
                    w.write(data)
            except (ConnectionError, OSError):
                pass
            finally:
                w.transport.abort()

        await asyncio.gather(pipe(r1, w2), pipe(r2, w1))


@pytest.mark.parametrize("n", [3, 300])
def test_entries_trimmed_during_a_partition_are_a_gap_then_the_rest_arrives(impl, redis_srv, prefix, n):
    """The reader is cut off while ``n`` events are published with MAXLEN ~ 5. 300: those trimmed
    before it came back are signalled as a gap event; what the stream still holds follows, in
    order. 3: nothing was trimmed, no gap, all three follow."""

    async def main():
        net = Partition(redis_srv.port)
        await net.heal()
        b = Broadcast(url=net.url, key_prefix=prefix, history=5, publish_timeout=0.5)
        got, task = await live_subscriber(b)
        pub = RedisPublisher(redis_srv.url, key_prefix=prefix, history=5)
        first = pub.publish({"data": "before"}, "t")
        await wait_until(lambda: got)
        await net.cut()
        await wait_until(lambda: not b.backend.connected)
        ids = [pub.publish({"data": f"d{i}"}, "t") for i in range(n)]
        kept = [e[0].decode() for e in redis.Redis.from_url(redis_srv.url).xrange(prefix + "t", min=f"({first}")]
        await net.heal()
        await wait_until(lambda: len(got) >= (2 if n == 300 else 1) + len(kept), 10)
        await asyncio.sleep(0.1)
        task.cancel()
        await b.aclose()
        await net.cut()
        pub.close()
        return first, ids, kept, got

    first, ids, kept, got = run(main)
    assert sse_id(got[0]) == first
    if n == 3:
        assert kept == ids
        assert [sse_id(d) for d in got[1:]] == ids
        return
    assert got[1].startswith(GAP)
    assert 0 < len(kept) < 300 and kept == ids[-len(kept):]  # the oldest were trimmed
    assert [sse_id(d) for d in got[2:]] == kept


def test_redis_metrics_reconnects_lag_and_publishes(impl, redis_srv, prefix):
    prometheus_client = pytest.importorskip("prometheus_client")
    from sse_fast import metrics

    metrics.disable_metrics()
    reg = prometheus_client.CollectorRegistry()
    metrics.enable_metrics(reg)

    async def main():
        net = Partition(redis_srv.port)
        await net.heal()
        b = Broadcast(url=net.url, key_prefix=prefix, publish_timeout=0.5)
        got, task = await live_subscriber(b)
        await b.apublish({"data": "one"}, "t")
        await wait_until(lambda: got)
        lag = reg.get_sample_value("sse_fast_redis_lag_seconds")
        await net.cut()
        await wait_until(lambda: not b.backend.connected)
        await net.heal()
        await wait_until(lambda: b.backend.connected, 10)
        await b.apublish({"data": "two"}, "t")
        await wait_until(lambda: len(got) >= 2)
        task.cancel()
        await b.aclose()
        await net.cut()
        return lag

    try:
        lag = run(main)
        assert 0 < lag < 1.0
        assert reg.get_sample_value("sse_fast_redis_reconnects_total") == 1
        assert reg.get_sample_value("sse_fast_broadcast_publishes_total") == 2
        assert reg.get_sample_value("sse_fast_broadcast_delivery_seconds_count") == 2
    finally:
        metrics.disable_metrics()


def test_a_connected_reader_that_falls_behind_maxlen_signals_the_gap(impl, redis_srv, prefix):
    """The reader stays connected but its loop is busy while 1,000 events are published with
    MAXLEN ~ 100: the entries trimmed before it read them are a gap event (the topic's ordinal
    jumps), not a silent hole; what it did read is contiguous on both sides of the gap."""

    async def main():
        b = Broadcast(url=redis_srv.url, key_prefix=prefix, history=100)
        got, task = await live_subscriber(b)
        with RedisPublisher(redis_srv.url, key_prefix=prefix, history=100) as pub:
            ids = [pub.publish({"data": "0"}, "t")]
            await wait_until(lambda: got)
            # the loop is blocked for the whole burst: the reader cannot keep up
            ids += [pub.publish({"data": str(i)}, "t") for i in range(1, 1001)]
        await wait_until(lambda: got and sse_id(got[-1]) == ids[-1], 10)
        task.cancel()
        await b.aclose()
        return ids, got

    ids, got = run(main)
    gaps = [i for i, d in enumerate(got) if d.startswith(GAP)]
    assert len(gaps) == 1, [d[:40] for d in got[:5]]
    before, after = [sse_id(d) for d in got[:gaps[0]]], [sse_id(d) for d in got[gaps[0] + 1:]]
    assert before == ids[:len(before)] and after == ids[-len(after):]
    assert len(before) + len(after) < len(ids)  # there was a hole, and the gap event says so


def test_a_topic_key_of_another_type_fails_the_subscription_then_recovers(impl, redis_srv, prefix):
    r = redis.Redis.from_url(redis_srv.url)
    r.set(prefix + "t", "not a stream")

    async def main():
        b = Broadcast(url=redis_srv.url, key_prefix=prefix)
        with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE"):
            await take(b.subscribe("t"), 1)
        r.delete(prefix + "t")
        t = asyncio.create_task(take(b.subscribe("t"), 1))
        await wait_until(lambda: b.subscribers("t"))
        eid = await b.apublish({"data": "ok"}, "t")
        got = await t
        await b.aclose()
        return eid, got

    eid, got = run(main)
    assert got == [f"id: {eid}\r\ndata: ok\r\n\r\n".encode()]


def test_reserved_topic_names_are_refused_with_redis(redis_srv):
    b = Broadcast(url=redis_srv.url)
    with pytest.raises(ValueError, match="topic names starting with '__' are reserved"):
        asyncio.run(b.apublish("x", "__seq__"))
    with pytest.raises(ValueError, match="reserved"), RedisPublisher(redis_srv.url) as pub:
        pub.publish("x", "__seq__")


def test_resp3_in_the_url_reads_the_same(impl, redis_srv, prefix):
    """``protocol=3`` (redis-py's RESP3) shapes XREAD replies as a dict: same events, same order."""

    async def main():
        b = Broadcast(url=redis_srv.url + "?protocol=3", key_prefix=prefix)
        got, task = await live_subscriber(b)
        ids = [await b.apublish({"data": f"d{i}"}, "t") for i in range(5)]
        again = await take(b.subscribe("t", last_event_id=ids[1]), 3)
        await wait_until(lambda: len(got) >= 5)
        task.cancel()
        await b.aclose()
        return ids, got, again

    ids, got, again = run(main)
    assert [sse_id(d) for d in got] == ids
    assert [sse_id(d) for d in again] == ids[2:]
