"""``sse_fast.broadcast``: topics, encode once, replay after ``Last-Event-ID``, slow subscribers.

In process: ``EventSourceResponse(broadcast.subscribe(...))`` driven through
hand-written ASGI receive/send on both encoder twins (``impl``), under asyncio
(the subscription attaches to the stream's writer) and under anyio's trio
backend (the generic path: the subscription is iterated). Every drive runs
under an ``anyio.fail_after`` guard.

On a real server (``pytest.mark.server``): ``tests/broadcast_app.py`` under
uvicorn (uvloop + httptools), 1,000 raw-socket subscribers of which 100 stop
reading; the readers get every event once and in order, the stalled ones are
cut, the server's memory stays bounded.

The send-wrapper tests pin down what the fan-out (``broadcast._fanout``, issue
16) must keep: each send runs from start to end in one task, in the stream's
context; a send that suspends holds neither the publisher nor the other
streams.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import re
import socket
import threading
import time

import anyio
import psutil
import pytest
from starlette.requests import Request

from sse_fast import AppStatus, EventSourceResponse, SendTimeoutError, ServerSentEvent
from sse_fast.broadcast import Broadcast

from . import broadcast_app
from .conftest import Server, twin_params
from .rawhttp import SSEReader, http_json

GUARD = 10.0
GAP = "sse_fast.gap"


def scope(headers=()):
    return {"type": "http", "method": "GET", "path": "/", "headers": list(headers), "http_version": "1.1"}


class Client:
    """One ASGI connection: ``receive`` waits for ``disconnect()``; ``send`` records body sends.

    ``bodies`` holds the very ``body`` objects the stream sent (for ``is`` checks).
    A body send may be made slow: ``block`` never completes (a client that stopped
    reading), ``gate`` waits for that event, ``suspend`` (a callable of the send's
    number, from 1) tells which sends await ``asyncio.sleep(0)`` first.
    """

    def __init__(self, *, block=False, gate=None, suspend=None):
        self.messages: list[dict] = []
        self.bodies: list[bytes] = []
        self.block = block
        self.gate = gate
        self.suspend = suspend
        self.sends = 0
        self._gone = asyncio.Event()

    async def receive(self):
        await self._gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message):
        if message["type"] == "http.response.body" and message["body"]:
            self.sends += 1
            if self.block:
                await asyncio.Event().wait()
            if self.gate is not None:
                await self.gate.wait()
            if self.suspend is not None and self.suspend(self.sends):
                await asyncio.sleep(0)
            self.bodies.append(message["body"])
        self.messages.append(message)

    def disconnect(self):
        self._gone.set()

    @property
    def body(self) -> bytes:
        return b"".join(self.bodies)

    @property
    def ended(self) -> bool:
        return bool(self.messages) and self.messages[-1] == {"type": "http.response.body", "body": b"",
                                                             "more_body": False}


def parse(body: bytes, sep: bytes = b"\r\n") -> list[dict[str, str]]:
    """The events of ``body`` as dicts of fields (every field of these tests is single-line)."""
    out = []
    for block in body.split(sep * 2):
        if block:
            ev = {}
            for line in block.split(sep):
                name, _, value = line.partition(b": ")
                ev[name.decode()] = value.decode()
            out.append(ev)
    return out


def ids(body: bytes, sep: bytes = b"\r\n") -> list[int]:
    return [int(ev["id"]) for ev in parse(body, sep) if "id" in ev]


def start(b: Broadcast, client: Client, topic="default", last_event_id=None, retry=None,
          **kwargs) -> asyncio.Task:
    """A task running ``EventSourceResponse(b.subscribe(topic, last_event_id, retry=retry))`` for ``client``."""
    kwargs.setdefault("ping", 0)
    resp = EventSourceResponse(b.subscribe(topic, last_event_id, retry=retry), **kwargs)
    return asyncio.get_running_loop().create_task(resp(scope(), client.receive, client.send))


async def start_all(b: Broadcast, clients) -> list[asyncio.Task]:
    """``start`` every client, wait until all are subscribed and their writers wait (``settle``)."""
    tasks = [start(b, c) for c in clients]
    await until(lambda: b.subscribers() == len(clients))
    await settle()
    return tasks


async def until(pred, timeout=5.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.001)


async def settle():
    """Let every writer task reach its wait (an idle stream is sent to by the fan-out task)."""
    for _ in range(5):
        await asyncio.sleep(0)
    await asyncio.sleep(0.01)


async def close_all(clients, tasks):
    for c in clients:
        c.disconnect()
    await asyncio.gather(*tasks)


def run(main, *args, guard=GUARD):
    async def guarded():
        with anyio.fail_after(guard):
            return await main(*args)

    return asyncio.run(guarded())


# ---------------------------------------------------------------- encode once


def test_every_idle_subscriber_gets_the_same_bytes_object(impl):
    async def main():
        b = Broadcast()
        crlf = [Client() for _ in range(5)]
        lf = [Client() for _ in range(2)]
        other = Client()
        tasks = [start(b, c) for c in crlf] + [start(b, c, sep="\n") for c in lf] + [start(b, other, "other")]
        await until(lambda: b.subscribers() == 7 and b.subscribers("other") == 1)
        await settle()
        returned = []

        async def publisher():  # idle streams: the fan-out task sends each event (it runs at the await)
            returned.append(b.publish({"data": "hello"}))
            await asyncio.sleep(0)
            returned.append(b.publish("world"))
            await asyncio.sleep(0)
            returned.append(b.publish(ServerSentEvent("third", event="tick")))

        await asyncio.get_running_loop().create_task(publisher())
        await settle()
        await close_all(crlf + lf + [other], tasks)
        return returned, crlf, lf, other

    returned, crlf, lf, other = run(main)
    assert returned == ["1", "2", "3"]
    assert crlf[0].bodies == [b"id: 1\r\ndata: hello\r\n\r\n", b"id: 2\r\ndata: world\r\n\r\n",
                              b"id: 3\r\nevent: tick\r\ndata: third\r\n\r\n"]
    for c in crlf[1:]:
        assert len(c.bodies) == 3
        assert all(mine is first for mine, first in zip(c.bodies, crlf[0].bodies, strict=True))
    assert lf[0].bodies == [b"id: 1\ndata: hello\n\n", b"id: 2\ndata: world\n\n",
                            b"id: 3\nevent: tick\ndata: third\n\n"]
    assert all(mine is first for mine, first in zip(lf[1].bodies, lf[0].bodies, strict=True))
    assert other.bodies == []  # another topic


def test_events_published_together_reach_a_stream_in_order_first_by_the_fan_out_then_batched(impl):
    async def main():
        b = Broadcast()
        clients = [Client() for _ in range(3)]
        tasks = await start_all(b, clients)
        for i in range(5):
            b.publish(f"e{i}")  # no await between: the stream is busy after the first
        await settle()
        await close_all(clients, tasks)
        return clients

    for c in run(main):
        assert c.bodies == [b"id: 1\r\ndata: e0\r\n\r\n",
                            b"".join(f"id: {i + 1}\r\ndata: e{i}\r\n\r\n".encode() for i in range(1, 5))]


def test_an_app_given_id_is_kept_and_the_count_goes_on(impl):
    async def main():
        b = Broadcast()
        c = Client()
        task = start(b, c)
        await until(lambda: b.subscribers() == 1)
        await settle()
        got = [b.publish("a"), b.publish({"data": "b", "id": "app-7"}),
               b.publish(ServerSentEvent("c", id="sse-8")), b.publish("d"),
               b.publish("e", topic="fresh")]
        await settle()
        await close_all([c], [task])
        return got, c

    got, c = run(main)
    assert got[:3] == ["1", "app-7", "sse-8"]
    assert int(got[3]) > 1  # the topic's count goes on past the app's ids
    assert got[4] == "1"  # each topic counts on its own
    assert [ev["id"] for ev in parse(c.body)] == got[:4]
    assert parse(c.body)[1] == {"id": "app-7", "data": "b"}


# ---------------------------------------------------------------- replay


def test_replay_after_last_event_id_then_live(impl):
    async def main():
        b = Broadcast()
        for i in range(1, 11):
            b.publish(f"e{i}")
        c, c_lf = Client(), Client()
        tasks = [start(b, c, last_event_id="4"), start(b, c_lf, last_event_id="9", sep="\n")]
        await until(lambda: b.subscribers() == 2)
        await settle()
        b.publish("e11")
        b.publish("e12")
        await settle()
        await close_all([c, c_lf], tasks)
        return c, c_lf

    c, c_lf = run(main)
    assert ids(c.body) == list(range(5, 13))
    assert [ev["data"] for ev in parse(c.body)] == [f"e{i}" for i in range(5, 13)]
    assert ids(c_lf.body, b"\n") == [10, 11, 12]
    assert b"\r" not in c_lf.body


@pytest.mark.parametrize("slow_sends", [False, True], ids=["sends-complete", "sends-suspend"])
def test_replay_seam_under_concurrent_publishing_has_no_gap_and_no_duplicate(impl, slow_sends):
    """Subscribers join with ``Last-Event-ID`` while a publisher runs: each gets exactly k+1..N, in order."""
    n = 400

    async def main():
        b = Broadcast()
        published: list[str] = []
        joined: list[tuple[int, Client, asyncio.Task]] = []
        done = asyncio.Event()

        async def publisher():
            for i in range(1, n + 1):
                published.append(b.publish({"data": f"e{i}"}))
                if i % 3:  # sometimes two in a row without yielding
                    await asyncio.sleep(0)
            done.set()

        async def joiner():
            k = 0
            while not done.is_set():
                if published:
                    last = int(published[-1]) - (k % 4)  # the newest id, or a few before it
                    if last >= 1:
                        c = Client(suspend=(lambda i: i % 2 == 0) if slow_sends else None)
                        joined.append((last, c, start(b, c, last_event_id=str(last))))
                k += 1
                await asyncio.sleep(0)

        await asyncio.gather(publisher(), joiner())
        tail = f"id: {n}\r\ndata: e{n}\r\n\r\n".encode()
        await until(lambda: all(last == n or c.body.endswith(tail) for last, c, _ in joined),
                    what="every joiner at the end")
        await close_all([c for _, c, _ in joined], [t for _, _, t in joined])
        return joined

    joined = run(main)
    assert len(joined) > 50
    for last, c, _ in joined:
        assert ids(c.body) == list(range(last + 1, n + 1)), f"joined after {last}"


def replayed(b: Broadcast, last_event_id, **kwargs) -> Client:
    """What a new subscriber with ``last_event_id`` receives before anything else is published."""

    async def main():
        c = Client()
        task = start(b, c, last_event_id=last_event_id, **kwargs)
        await until(lambda: b.subscribers() >= 1)
        await settle()
        c.disconnect()
        await task
        return c

    return run(main)


def publish_all(b: Broadcast, n: int, data="x" * 20) -> None:
    async def main():
        for _ in range(n):
            b.publish(data)

    run(main)


@pytest.mark.parametrize("last", ["2", "no-such-id"])
def test_unknown_or_too_old_id_gets_the_gap_event_then_the_history(impl, last):
    b = Broadcast(history=5)
    publish_all(b, 10)
    c = replayed(b, last)
    first = f'event: {GAP}\r\ndata: {{"last_event_id":"{last}","oldest":"6"}}\r\n\r\n'.encode()
    assert c.body.startswith(first)  # no id: the client keeps its last event id
    evs = parse(c.body)
    assert json.loads(evs[0]["data"]) == {"last_event_id": last, "oldest": "6"}
    assert ids(c.body) == [6, 7, 8, 9, 10]
    # a known id replays without a gap; the newest replays nothing
    assert parse(replayed(b, "7").body) == [{"id": str(i), "data": "x" * 20} for i in (8, 9, 10)]
    assert replayed(b, "10").body == b""
    # no Last-Event-ID: no replay at all
    assert replayed(b, None).body == b""


def test_gap_event_name_and_empty_history(impl):
    b = Broadcast(history=0, gap_event="resync")
    publish_all(b, 3)
    evs = parse(replayed(b, "1", sep="\n").body, b"\n")
    assert evs == [{"event": "resync", "data": '{"last_event_id":"1","oldest":null}'}]


def test_on_gap_replaces_the_gap_event(impl):
    calls = []

    def on_gap(topic, last_event_id):
        calls.append((topic, last_event_id))
        return [{"event": "snapshot", "data": f"state of {topic}"}, ServerSentEvent("more", event="snapshot")]

    b = Broadcast(history=3, on_gap=on_gap)
    publish_all(b, 6)
    c = replayed(b, "1")
    assert calls == [("default", "1")]
    assert GAP.encode() not in c.body
    evs = parse(c.body)
    assert evs[:2] == [{"event": "snapshot", "data": "state of default"}, {"event": "snapshot", "data": "more"}]
    assert ids(c.body) == []  # the snapshot stands for the whole state: no history applied on top
    replayed(b, "5")  # a known id: no gap, on_gap not called
    assert calls == [("default", "1")]


def test_history_bounded_by_count(impl):
    b = Broadcast(history=3)
    publish_all(b, 9)
    c = replayed(b, "1")
    assert json.loads(parse(c.body)[0]["data"])["oldest"] == "7"
    assert ids(c.body) == [7, 8, 9]


@pytest.mark.parametrize("keep", [3, 2])
def test_history_bounded_by_bytes(impl, keep):
    size = len(b"id: 1\r\ndata: " + b"x" * 20 + b"\r\n\r\n")  # every event (ids 1-9) has this size
    b = Broadcast(history_bytes=3 * size if keep == 3 else 3 * size - 1)
    publish_all(b, 9)
    assert ids(replayed(b, "1").body) == list(range(10 - keep, 10))
    c = replayed(b, str(10 - keep))  # the oldest kept: no gap
    assert GAP.encode() not in c.body and ids(c.body) == list(range(11 - keep, 10))


def test_history_bounded_by_age(impl):
    b = Broadcast(history_seconds=0.2)
    publish_all(b, 3)
    time.sleep(0.3)
    publish_all(b, 2)
    c = replayed(b, "2")
    assert json.loads(parse(c.body)[0]["data"]) == {"last_event_id": "2", "oldest": "4"}
    assert ids(c.body) == [4, 5]
    time.sleep(0.3)  # everything aged out, without any publish: a gap, nothing to replay
    assert parse(replayed(b, "5").body) == [{"event": GAP, "data": '{"last_event_id":"5","oldest":null}'}]


def test_response_reads_last_event_id_from_the_request(impl):
    async def main():
        b = Broadcast()
        for i in range(5):
            b.publish(i)
        c = Client()
        req = Request(scope([(b"last-event-id", b"3")]))
        resp = b.response(req, ping=0, sep="\n")
        task = asyncio.get_running_loop().create_task(resp(scope(), c.receive, c.send))
        await until(lambda: b.subscribers() == 1)
        await settle()
        await close_all([c], [task])
        return c

    assert ids(run(main).body, b"\n") == [4, 5]


# ---------------------------------------------------------------- slow subscribers


def test_a_stalled_subscriber_is_disconnected_and_the_others_get_everything(impl):
    n, limit = 100, 2000

    async def main():
        b = Broadcast(max_subscriber_bytes=limit)
        readers = [Client() for _ in range(3)]
        stalled = Client(block=True)
        tasks = [start(b, c) for c in readers]
        stalled_task = start(b, stalled)
        await until(lambda: b.subscribers() == 4)
        await settle()
        counts, longest = [], 0.0

        async def publisher():
            nonlocal longest
            for i in range(n):
                t0 = time.perf_counter()
                b.publish({"data": f"{i:04d}" + "x" * 80})
                longest = max(longest, time.perf_counter() - t0)
                counts.append(b.subscribers())
                if i % 10 == 0:
                    await asyncio.sleep(0)

        t0 = time.perf_counter()
        await asyncio.get_running_loop().create_task(publisher())
        publishing = time.perf_counter() - t0
        # the stalled stream ends by itself: cut after the shutdown flush bound (1 s)
        t0 = time.perf_counter()
        await asyncio.wait_for(stalled_task, 3)
        ended_after = time.perf_counter() - t0
        await settle()
        await close_all(readers, tasks)
        return b, readers, stalled, counts, longest, publishing, ended_after

    b, readers, stalled, counts, longest, publishing, ended_after = run(main)
    assert publishing < 0.5 and longest < 0.05  # the publisher never waits for the stalled client
    size = len(b"id: 1\r\ndata: " + b"0" * 84 + b"\r\n\r\n")
    cut_at = counts.index(3)  # dropped from the topic as soon as it was over the bound
    assert cut_at <= limit // size + 2
    assert set(counts[cut_at:]) == {3}
    assert b.subscribers() == 0
    assert ended_after < 2.5
    assert stalled.bodies == []
    for c in readers:
        assert ids(c.body) == list(range(1, n + 1))


def test_a_slow_subscriber_with_on_slow_drop_gets_the_gap_then_the_newest(impl):
    n, limit = 50, 1000

    async def main():
        b = Broadcast(max_subscriber_bytes=limit, on_slow="drop")
        gate = asyncio.Event()
        reader, slow = Client(), Client(gate=gate)
        tasks = [start(b, reader), start(b, slow)]
        await until(lambda: b.subscribers() == 2)
        await settle()

        async def publisher():
            for i in range(1, n + 1):
                b.publish({"data": f"{i:04d}" + "y" * 80})
                await asyncio.sleep(0)  # the reader keeps up: its send goes out before the next event

        await asyncio.get_running_loop().create_task(publisher())
        still = b.subscribers()
        gate.set()
        await until(lambda: ids(slow.body)[-1:] == [n], what="the slow one to catch up")
        b.publish("live")
        await until(lambda: ids(slow.body)[-1:] == [n + 1], what="a live event after the drop")
        await close_all([reader, slow], tasks)
        return still, reader, slow

    still, reader, slow = run(main)
    assert still == 2  # "drop" keeps the subscriber
    assert ids(reader.body) == list(range(1, n + 2))
    evs = parse(slow.body)
    assert evs[0]["id"] == "1"  # the send in flight when it stalled
    assert evs[1]["event"] == GAP and set(json.loads(evs[1]["data"])) == {"last_event_id", "oldest"}
    assert "id" not in evs[1]
    tail = [int(ev["id"]) for ev in evs[2:]]
    assert tail == list(range(tail[0], n + 2)) and tail[0] > 2  # the newest, contiguous
    assert sum(len(f"id: {i}\r\ndata: 0000{'y' * 80}\r\n\r\n") for i in tail[:-1]) <= limit
    assert sum(1 for ev in evs if ev.get("event") == GAP) == 1


@pytest.mark.parametrize("pattern", ["every-2nd", "every-3rd", "every", "bursts"])
def test_each_subscriber_gets_every_event_in_order_when_sends_sometimes_suspend(impl, pattern):
    n = 600
    suspend = {"every-2nd": lambda i: i % 2 == 0, "every-3rd": lambda i: i % 3 == 1,
               "every": lambda i: True, "bursts": lambda i: (i // 7) % 2 == 0}[pattern]

    async def main():
        b = Broadcast()
        loop = asyncio.get_running_loop()
        clients = [Client(suspend=suspend) for _ in range(6)] + [Client() for _ in range(2)]
        lf = Client(suspend=suspend)
        tasks = [start(b, c) for c in clients] + [start(b, lf, sep="\n")]
        await until(lambda: b.subscribers() == 9)
        await settle()

        async def publisher():
            i = 0
            while i < n:
                burst = 1 + i % 5
                for _ in range(min(burst, n - i)):
                    i += 1
                    if i % 11 == 0:  # from a loop callback, not a task: the buffered path
                        loop.call_soon(b.publish, {"data": f"d{i}"})
                        await asyncio.sleep(0)
                    else:
                        b.publish({"data": f"d{i}"})
                await asyncio.sleep(0)

        await loop.create_task(publisher())
        everyone = clients + [lf]
        await until(lambda: all(len(c.body) and c.body.count(b"id: ") == n for c in everyone),
                    what="every subscriber to have n events")
        await close_all(everyone, tasks)
        return clients, lf

    clients, lf = run(main)
    for c in clients:
        assert ids(c.body) == list(range(1, n + 1))
        assert [ev["data"] for ev in parse(c.body)] == [f"d{i}" for i in range(1, n + 1)]
    assert ids(lf.body, b"\n") == list(range(1, n + 1))


# ---------------------------------------------------------------- publishing


def test_publish_threadsafe_from_a_thread(impl):
    b = Broadcast()
    with pytest.raises(RuntimeError, match="not bound to an event loop"):
        b.publish_threadsafe("too early")

    async def main():
        c = Client()
        task = start(b, c)
        await until(lambda: b.subscribers() == 1)

        def worker():
            for i in range(200):
                b.publish_threadsafe({"data": f"t{i}"})

        th = threading.Thread(target=worker)
        th.start()
        await until(lambda: c.body.count(b"id: ") == 200)
        th.join()
        await close_all([c], [task])
        return c

    c = run(main)
    assert [ev["data"] for ev in parse(c.body)] == [f"t{i}" for i in range(200)]
    assert ids(c.body) == list(range(1, 201))


def test_publish_before_any_subscriber_and_outside_a_loop(impl):
    b = Broadcast()
    assert [b.publish("a"), b.publish("b"), b.publish("c")] == ["1", "2", "3"]  # no loop, no subscriber
    assert b.subscribers() == 0 and b.subscribers("never") == 0

    async def main():
        c_new, c_back = Client(), Client()
        tasks = [start(b, c_new), start(b, c_back, last_event_id="1")]
        await until(lambda: b.subscribers() == 2)
        await settle()
        b.publish("d")
        await settle()
        await close_all([c_new, c_back], tasks)
        return c_new, c_back

    c_new, c_back = run(main)
    assert ids(c_new.body) == [4]  # a fresh subscriber gets what comes next
    assert ids(c_back.body) == [2, 3, 4]


@pytest.mark.parametrize(
    ("kwargs", "exc", "words"),
    [
        ({"history": -1}, ValueError, "history"),
        ({"history": 1.5}, TypeError, "history"),
        ({"history": True}, TypeError, "history"),
        ({"history_bytes": -1}, ValueError, "history_bytes"),
        ({"history_bytes": "1"}, TypeError, "history_bytes"),
        ({"history_seconds": 0}, ValueError, "history_seconds"),
        ({"history_seconds": -1.0}, ValueError, "history_seconds"),
        ({"history_seconds": float("nan")}, ValueError, "history_seconds"),
        ({"history_seconds": "5"}, ValueError, "history_seconds"),
        ({"max_subscriber_bytes": 0}, ValueError, "max_subscriber_bytes"),
        ({"max_subscriber_bytes": None}, TypeError, "max_subscriber_bytes"),
        ({"on_slow": "block"}, ValueError, "on_slow"),
        ({"gap_event": ""}, ValueError, "gap_event"),
        ({"gap_event": "a\nb"}, ValueError, "gap_event"),
        ({"gap_event": 5}, ValueError, "gap_event"),
        ({"on_gap": "snapshot"}, TypeError, "on_gap"),
    ],
)
def test_bad_constructor_arguments_fail_early_naming_them(kwargs, exc, words):
    with pytest.raises(exc, match=words):
        Broadcast(**kwargs)


def test_bad_publish_and_subscribe_arguments_fail_early_naming_them(impl):
    b = Broadcast()
    with pytest.raises(TypeError, match="id"):
        b.publish({"data": "x", "id": 5})
    with pytest.raises(TypeError, match="id"):
        b.publish(ServerSentEvent("x", id=5))
    with pytest.raises(TypeError, match="topic"):
        b.publish("x", topic=5)
    with pytest.raises(TypeError, match="bogus"):
        b.publish({"data": "x", "bogus": 1})
    with pytest.raises(TypeError, match="last_event_id"):
        b.subscribe(last_event_id=5)
    with pytest.raises(TypeError, match="topic"):
        b.subscribe(5)
    with pytest.raises(TypeError, match="retry"):
        b.subscribe(retry="5")
    with pytest.raises(TypeError, match="retry"):
        b.subscribe(retry=True)
    with pytest.raises(ValueError, match="retry"):
        b.subscribe(retry=-1)
    with pytest.raises(ValueError, match="retry"):
        b.response(Request(scope()), retry=-1)
    assert b.subscribers() == 0 and b.publish("fine") != ""


def test_a_refused_event_takes_no_id(impl):
    b = Broadcast()
    assert b.publish("a") == "1"
    with pytest.raises(TypeError):
        b.publish({"data": "x", "bogus": 1})
    assert b.publish("c") == "2"


# ---------------------------------------------------------------- end of a subscription


def test_shutdown_ends_the_stream_and_unregisters(impl):
    async def main():
        b = Broadcast()
        clients = [Client(), Client()]
        tasks = await start_all(b, clients)
        b.publish("before")
        asyncio.get_running_loop().call_later(0.05, setattr, AppStatus, "should_exit", True)
        await asyncio.gather(*tasks)
        after = b.subscribers()
        b.publish("after")  # nobody left to get it, nothing raises
        return clients, after

    try:
        clients, after = run(main)
    finally:
        AppStatus.should_exit = False
    assert after == 0
    for c in clients:
        assert ids(c.body) == [1]
        assert c.ended  # a clean end of the body


def test_disconnect_ends_the_stream_and_unregisters(impl):
    async def main():
        b = Broadcast()
        c, stay = Client(), Client()
        closed = []

        async def on_close(message):
            closed.append(message["type"])

        tasks = [start(b, c, client_close_handler_callable=on_close), start(b, stay)]
        await until(lambda: b.subscribers() == 2)
        await settle()
        b.publish("one")
        c.disconnect()
        await tasks[0]
        left = b.subscribers()
        b.publish("two")
        await settle()
        await close_all([stay], tasks[1:])
        return c, stay, closed, left, b.subscribers()

    c, stay, closed, left, finally_left = run(main)
    assert closed == ["http.disconnect"]
    assert left == 1 and finally_left == 0
    assert ids(c.body) == [1] and ids(stay.body) == [1, 2]


def test_aclose_ends_an_attached_stream_cleanly(impl):
    async def main():
        b = Broadcast()
        c, other = Client(), Client()
        sub = b.subscribe()
        task = asyncio.get_running_loop().create_task(
            EventSourceResponse(sub, ping=0)(scope(), c.receive, c.send))
        other_task = start(b, other)
        await until(lambda: b.subscribers() == 2)
        await settle()
        b.publish("one")
        await sub.aclose()
        await task  # ends by itself, no disconnect
        b.publish("two")
        await settle()
        left = b.subscribers()
        await close_all([other], [other_task])
        return c, other, left

    c, other, left = run(main)
    assert c.ended and ids(c.body) == [1]
    assert ids(other.body) == [1, 2] and left == 1


def test_a_subscription_closed_before_it_started_never_registers(impl):
    async def main():
        b = Broadcast()
        seen = []
        sub = b.subscribe()
        await sub.aclose()
        c = Client()
        resp = EventSourceResponse(sub, ping=0)
        task = asyncio.get_running_loop().create_task(resp(scope(), c.receive, c.send))
        while not task.done():
            seen.append(b.subscribers())
            await asyncio.sleep(0)
        await task
        generic = b.subscribe(last_event_id="nope")
        await generic.aclose()
        got = [data async for data in generic]
        return c, seen, got, b.subscribers()

    c, seen, got, left = run(main)
    assert c.ended and c.bodies == [] and set(seen) <= {0}
    assert got == [] and left == 0


def test_retry_is_sent_first(impl):
    async def main():
        b = Broadcast()
        for i in range(3):
            b.publish(i)
        c, lf = Client(), Client()
        tasks = [start(b, c, last_event_id="1", retry=2500)]
        resp = b.response(Request(scope([(b"last-event-id", b"2")])), retry=0, ping=0, sep="\n")
        tasks.append(asyncio.get_running_loop().create_task(resp(scope(), lf.receive, lf.send)))
        sub = b.subscribe(retry=10)
        first = await sub.__anext__()
        await sub.aclose()
        await until(lambda: b.subscribers() == 2)
        await settle()
        b.publish("live")
        await settle()
        await close_all([c, lf], tasks)
        return c, lf, first

    c, lf, first = run(main)
    assert c.body.startswith(b"retry: 2500\r\n\r\nid: 2\r\n")
    assert ids(c.body) == [2, 3, 4]
    assert lf.body.startswith(b"retry: 0\n\nid: 3\n") and ids(lf.body, b"\n") == [3, 4]
    assert first == b"retry: 10\r\n\r\n"


def test_an_event_larger_than_max_subscriber_bytes_reaches_a_subscriber_that_keeps_up(impl):
    async def main():
        b = Broadcast(max_subscriber_bytes=100)
        fast, stalled = Client(), Client(block=True)
        tasks = [start(b, fast), start(b, stalled)]
        await until(lambda: b.subscribers() == 2)
        await settle()

        async def publisher():
            b.publish("big" * 100)  # ~310 bytes: both are keeping up (nothing pending)
            counts = [b.subscribers()]
            await settle()  # the fan-out sends it: the fast one's completes (a turn later if the stalled one came first)
            b.publish("next")  # the stalled one still has the first in flight: cut
            counts.append(b.subscribers())
            return counts

        counts = await asyncio.get_running_loop().create_task(publisher())
        await settle()
        fast.disconnect()
        await asyncio.gather(*tasks)
        return fast, counts

    fast, counts = run(main)
    assert counts == [2, 1]
    assert [ev["data"] for ev in parse(fast.body)] == ["big" * 100, "next"]


# ---------------------------------------------------------------- the generic path


def test_iterating_a_subscription_directly(impl):
    async def main():
        b = Broadcast()
        for i in range(3):
            b.publish(f"old{i}")
        attached = Client()
        task = start(b, attached)
        sub = b.subscribe(last_event_id="1")
        got: list[bytes] = []
        loop = asyncio.get_running_loop()

        async def reader():
            async for data in sub:
                got.append(data)
                if len(got) == 12:
                    break
            await sub.aclose()

        rt = loop.create_task(reader())
        await until(lambda: b.subscribers() == 2)
        await settle()

        async def publisher():
            for i in range(10):
                b.publish({"data": f"new{i}"})
                if i % 3 == 0:
                    await asyncio.sleep(0)

        await loop.create_task(publisher())
        await rt
        left = b.subscribers()
        await close_all([attached], [task])
        return got, attached, left

    got, attached, left = run(main)
    assert all(type(d) is bytes for d in got)
    assert got[0] == b"id: 2\r\ndata: old1\r\n\r\n"
    assert ids(b"".join(got)) == list(range(2, 14))
    # encoded once: the iterating subscriber holds the very bytes the attached stream sent (the
    # events the fan-out sent one per send; those published together went as one batch)
    assert b"".join(attached.bodies) == b"".join(got[2:])
    singles = {bytes(a): a for a in attached.bodies if a.count(b"\r\n\r\n") == 1}
    assert len(singles) >= 3 and all(g is singles[g] for g in got[2:] if g in singles)
    assert left == 1  # aclose() unregistered it


def test_iterating_subscriber_cut_or_dropped_when_it_falls_behind(impl):
    limit = 500

    async def main(on_slow):
        b = Broadcast(max_subscriber_bytes=limit, on_slow=on_slow)
        sub = b.subscribe()
        got = []

        async def reader():
            async for data in sub:
                got.append(data)
                if data.startswith(b"id: 20\r\n"):
                    break

        rt = asyncio.get_running_loop().create_task(reader())
        await until(lambda: b.subscribers() == 1)
        for i in range(1, 21):  # without yielding: the reader falls behind
            b.publish({"data": f"{i:03d}" + "z" * 40})
        await rt
        return got, b.subscribers()

    got, left = run(main, "disconnect")
    assert got == [] and left == 0  # cut: the iteration ended, unregistered
    got, left = run(main, "drop")
    evs = parse(b"".join(got))
    assert evs[0]["event"] == GAP and "id" not in evs[0] and left == 1
    tail = [int(ev["id"]) for ev in evs[1:]]
    assert tail == list(range(tail[0], 21)) and tail[0] > 1
    assert sum(len(g) for g in got) <= limit


class TrioClient:
    def __init__(self):
        self.bodies: list[bytes] = []
        self._gone = anyio.Event()

    async def receive(self):
        await self._gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message):
        if message["type"] == "http.response.body" and message["body"]:
            self.bodies.append(message["body"])

    @property
    def body(self):
        return b"".join(self.bodies)


def test_subscription_under_trio(impl):
    async def main():
        b = Broadcast()
        for i in range(4):
            b.publish({"data": f"old{i}"})
        clients = [TrioClient() for _ in range(3)]
        counts = {}
        with anyio.fail_after(GUARD):
            async with anyio.create_task_group() as tg:
                for c in clients:
                    resp = EventSourceResponse(b.subscribe(last_event_id="2"), ping=0)
                    tg.start_soon(resp, scope(), c.receive, c.send)
                while b.subscribers() < 3:
                    await anyio.sleep(0.001)
                for i in range(5):
                    b.publish({"data": f"new{i}"})
                    await anyio.sleep(0)

                def worker():
                    for i in range(5):
                        b.publish_threadsafe({"data": f"thread{i}"})

                await anyio.to_thread.run_sync(worker)
                while not all(c.body.count(b"id: ") == 12 for c in clients):
                    await anyio.sleep(0.005)
                counts["live"] = b.subscribers()
                for c in clients:
                    c._gone.set()
            counts["after"] = b.subscribers()
        return clients, counts

    clients, counts = anyio.run(main, backend="trio")
    assert counts == {"live": 3, "after": 0}
    for c in clients:
        assert ids(c.body) == list(range(3, 15))
        assert [ev["data"] for ev in parse(c.body)][-5:] == [f"thread{i}" for i in range(5)]


def test_sep_is_kept_under_trio(impl):
    async def main():
        b = Broadcast()
        c = TrioClient()
        with anyio.fail_after(GUARD):
            async with anyio.create_task_group() as tg:
                tg.start_soon(EventSourceResponse(b.subscribe(), ping=0, sep="\n"), scope(), c.receive, c.send)
                while b.subscribers() < 1:
                    await anyio.sleep(0.001)
                b.publish("x")
                while not c.bodies:
                    await anyio.sleep(0.001)
                c._gone.set()
        return c

    assert anyio.run(main, backend="trio").body == b"id: 1\ndata: x\n\n"


# ---------------------------------------------------------------- defects pinned down


def _stream_with_send(b: Broadcast, send) -> tuple[Client, asyncio.Task]:
    c = Client()
    resp = EventSourceResponse(b.subscribe(), ping=0)
    return c, asyncio.get_running_loop().create_task(resp(scope(), c.receive, send))


def test_a_send_wrapper_with_a_cancel_scope_survives_a_suspending_send(impl):
    async def main():
        b = Broadcast()
        got = []

        async def send(message):  # e.g. a middleware bounding each send
            with anyio.fail_after(5):
                await asyncio.sleep(0)
                got.append(message)

        c, task = _stream_with_send(b, send)
        await until(lambda: b.subscribers() == 1)
        await settle()

        async def publisher():
            b.publish("x")

        await asyncio.get_running_loop().create_task(publisher())
        await until(lambda: len(got) >= 2 or task.done())
        c.disconnect()
        await task  # raises RuntimeError today
        return got

    got = run(main)
    assert got[1]["body"] == b"id: 1\r\ndata: x\r\n\r\n"


def test_a_send_wrapper_timeout_never_cancels_the_publisher(impl):
    async def main():
        b = Broadcast()

        async def send(message):
            async with asyncio.timeout(0.05):
                if message["type"] == "http.response.body" and message["body"]:
                    await asyncio.sleep(0.3)  # a slow client

        c, task = _stream_with_send(b, send)
        await until(lambda: b.subscribers() == 1)
        await settle()
        outcome = []

        async def publisher():
            b.publish("x")
            try:
                await asyncio.sleep(0.2)
                outcome.append("slept")
            except asyncio.CancelledError:
                outcome.append("publisher cancelled")

        await asyncio.get_running_loop().create_task(publisher())
        c.disconnect()
        await asyncio.wait([task])
        return outcome

    assert run(main) == ["slept"]


class TaskClient(Client):
    """Records the task of every body send with data."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.tasks: list = []

    async def send(self, message):
        if message["type"] == "http.response.body" and message["body"]:
            self.tasks.append(asyncio.current_task())
        await super().send(message)


def test_one_fan_out_task_sends_a_publish_to_every_idle_stream(impl):
    """Issue 16: no stream's own task is woken; one task awaits every idle stream's send in turn."""

    async def main():
        b = Broadcast()
        clients = [TaskClient() for _ in range(50)]
        tasks = await start_all(b, clients)
        for i in range(3):
            b.publish(f"e{i}")
            await settle()
        await close_all(clients, tasks)
        return clients, tasks

    clients, tasks = run(main)
    for i in range(3):
        senders = {c.tasks[i] for c in clients}
        assert len(senders) == 1  # one task for the whole round
        assert not senders & set(tasks)  # not a stream's task
    for c in clients:
        assert c.bodies == [f"id: {i + 1}\r\ndata: e{i}\r\n\r\n".encode() for i in range(3)]


@pytest.mark.parametrize("position", ["first", "middle", "last"])
def test_a_send_that_suspends_holds_neither_the_others_nor_the_publisher(impl, position):
    async def main():
        b = Broadcast()
        gate = asyncio.Event()
        n = 20
        k = {"first": 0, "middle": n // 2, "last": n - 1}[position]
        clients = [Client(gate=gate) if i == k else Client() for i in range(n)]
        tasks = []
        for c in clients:  # subscribed in order: the fan-out's queue follows the topic's set, any order
            tasks.append(start(b, c))
        await until(lambda: b.subscribers() == n)
        await settle()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for i in range(5):
            b.publish(f"e{i}")
            await asyncio.sleep(0.01)
        others = [c for i, c in enumerate(clients) if i != k]
        await until(lambda: all(len(c.bodies) == 5 for c in others), timeout=1, what="the others")
        took = loop.time() - t0
        gate.set()
        await until(lambda: clients[k].body.count(b"\r\n\r\n") == 5, what="the slow one")
        await close_all(clients, tasks)
        return clients, took

    clients, took = run(main)
    assert took < 0.5
    for c in clients:
        assert c.body == b"".join(f"id: {i + 1}\r\ndata: e{i}\r\n\r\n".encode() for i in range(5))


def test_disconnect_cancels_a_fan_out_send_and_the_round_goes_on(impl):
    async def main():
        b = Broadcast()
        stuck, others = Client(block=True), [Client() for _ in range(5)]
        tasks = [start(b, stuck)] + [start(b, c) for c in others]
        await until(lambda: b.subscribers() == 6)
        await settle()
        b.publish("a")
        await settle()
        stuck.disconnect()  # its send is stuck in a fan-out task
        await asyncio.wait_for(tasks[0], 1)
        b.publish("b")
        await settle()
        left = b.subscribers()
        await close_all(others, tasks[1:])
        return others, left, tasks[0]

    others, left, stuck_task = run(main)
    assert stuck_task.exception() is None
    assert left == 5
    for c in others:
        assert c.body == b"id: 1\r\ndata: a\r\n\r\nid: 2\r\ndata: b\r\n\r\n"


def test_send_timeout_ends_a_stream_stuck_in_a_fan_out_send(impl):
    async def main():
        b = Broadcast()
        stuck, other = Client(block=True), Client()
        t_stuck = start(b, stuck, send_timeout=0.2)
        t_other = start(b, other, send_timeout=0.2)
        await until(lambda: b.subscribers() == 2)
        await settle()
        t0 = asyncio.get_running_loop().time()
        b.publish("a")
        await asyncio.wait([t_stuck], timeout=2)
        took = asyncio.get_running_loop().time() - t0
        b.publish("b")
        await settle()
        await close_all([other], [t_other])
        return t_stuck, took, other

    t_stuck, took, other = run(main)
    assert isinstance(t_stuck.exception(), SendTimeoutError)
    assert 0.2 <= took < 1.0
    assert other.body == b"id: 1\r\ndata: a\r\n\r\nid: 2\r\ndata: b\r\n\r\n"


def test_inline_sends_is_deprecated_and_changes_nothing():
    with pytest.warns(DeprecationWarning, match="inline_sends"):
        Broadcast(inline_sends=True)


def test_a_send_wrapper_sees_the_requests_context(impl):
    """The fan-out sends to many streams from one task, each send in its stream's context."""
    request_id = contextvars.ContextVar("request_id", default=None)

    async def main():
        b = Broadcast()
        seen = []

        async def send(message):
            seen.append(request_id.get())

        async def app():
            request_id.set("req-1")
            c, task = _stream_with_send(b, send)
            return c, task

        c, task = await asyncio.get_running_loop().create_task(app())
        await until(lambda: b.subscribers() == 1)
        await settle()

        async def publisher():
            request_id.set("publisher")
            b.publish("x")

        await asyncio.get_running_loop().create_task(publisher())
        await settle()
        c.disconnect()
        await task
        return seen

    assert run(main) == ["req-1", "req-1"]


def test_ping_when_idle_counts_broadcast_data(impl):
    async def main():
        b = Broadcast()
        c = Client()
        task = start(b, c, ping=0.2, ping_when_idle=True)
        await until(lambda: b.subscribers() == 1)
        await settle()

        async def publisher():
            for i in range(16):
                b.publish(str(i))
                await asyncio.sleep(0.05)

        await asyncio.get_running_loop().create_task(publisher())
        await close_all([c], [task])
        return c

    c = run(main)
    assert not any(body.startswith(b": ping") for body in c.bodies)


def test_a_replay_larger_than_max_subscriber_bytes_is_delivered(impl):
    async def main():
        b = Broadcast(max_subscriber_bytes=1000)
        for _ in range(20):
            b.publish("r" * 90)  # ~1.9 KB of history
        sub = b.subscribe(last_event_id="1")
        got = []

        async def reader():
            async for data in sub:
                got.append(data)
                if len(got) == 20:
                    break
                await asyncio.sleep(0.002)  # a reader a little slower than a memory copy

        rt = asyncio.get_running_loop().create_task(reader())
        await until(lambda: b.subscribers() == 1)
        b.publish("live")  # one small live event
        await rt
        return got

    assert ids(b"".join(run(main))) == list(range(2, 22))


# ---------------------------------------------------------------- a real server


STREAMS, STALLED = 1000, 100
WARMUP, EVENTS, SIZE = 200, 2000, 150  # events of ~170 bytes on the wire
SNDBUF = 4096  # the server's per-connection send buffer (Linux doubles it): see broadcast_app
MAX_SUBSCRIBER_BYTES = broadcast_app.MAX_SUBSCRIBER_BYTES  # 32 KiB
UVICORN_HIGH_WATER = 64 * 1024  # uvloop's transport pauses writing above it; one more send is taken
# What one stalled stream may hold in the server's memory: sse_fast's buffer plus the send in flight
# (max_subscriber_bytes, then it is cut) and the transport's buffer (high water plus one send of at
# most max_subscriber_bytes); the kernel's socket buffers are not in RSS. Without the cut, each
# stalled stream would hold all EVENTS (~340 KB): 100 of them ~33 MiB.
PER_STALLED = MAX_SUBSCRIBER_BYTES + UVICORN_HIGH_WATER + MAX_SUBSCRIBER_BYTES
# the history (1,000 entries, ~1 MB), the readers' batches in flight (measured: ~4 MiB of growth
# with no stalled stream at all), allocator slack
RSS_MARGIN = 8 * 2**20
ID_RE = re.compile(rb"\nid: (\d+)\r\n")


def request(path: str, last_event_id: str | None = None) -> bytes:
    extra = f"Last-Event-ID: {last_event_id}\r\n" if last_event_id else ""
    return f"GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n{extra}\r\n".encode()


def read_socket_to_end(s, limit=10.0) -> bytes:
    s.settimeout(limit)
    data = bytearray()
    while True:
        chunk = s.recv(1 << 20)
        if not chunk:
            return bytes(data)
        data += chunk


async def fanout_with_stalled(srv, twin: str, stalled: list[socket.socket]) -> dict:
    loop = asyncio.get_running_loop()
    st = await http_json(srv.port, "/stats")
    assert st["impl"] == twin
    proc = psutil.Process(st["pid"])
    sem = asyncio.Semaphore(100)
    readers: list[SSEReader] = []

    async def open_reader():
        async with sem:
            _, proto = await loop.create_connection(SSEReader, "127.0.0.1", srv.port)
            proto.transport.write(request("/events"))
            await proto.head
            assert proto.status == 200
            readers.append(proto)

    def open_stalled():
        s = socket.socket()
        stalled.append(s)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", srv.port))
        s.sendall(request("/events"))  # and never reads

    async def wait_for(pred, what, limit=15.0):
        deadline = time.monotonic() + limit
        while not await pred():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.05)

    async def subscribers() -> int:
        return (await http_json(srv.port, "/stats"))["subscribers"]

    async def readers_have(n: int) -> bool:
        return all(len(r.ids) >= n for r in readers)

    tasks = []
    for i in range(STREAMS):
        if i % (STREAMS // STALLED) == 0:
            open_stalled()
        else:
            tasks.append(loop.create_task(open_reader()))
    await asyncio.gather(*tasks)

    async def all_subscribed():
        return await subscribers() == STREAMS

    await wait_for(all_subscribed, "every stream to subscribe")
    # a warm-up (less than a stalled stream's socket and transport take: nobody is cut yet), so
    # that what each live stream's buffers keep after a burst is in the baseline
    await http_json(srv.port, f"/publish?n={WARMUP}&size={SIZE}")
    await wait_for(lambda: readers_have(WARMUP), "the warm-up")
    assert await subscribers() == STREAMS
    await asyncio.sleep(0.2)
    rss0 = peak = proc.memory_info().rss
    t0 = time.monotonic()
    await http_json(srv.port, f"/publish?n={EVENTS}&size={SIZE}&burst=20&interval=0.02&mode=mixed")

    async def all_read():
        nonlocal peak
        peak = max(peak, proc.memory_info().rss)
        return await readers_have(WARMUP + EVENTS)

    await wait_for(all_read, "every reader to read every event")
    read_in = time.monotonic() - t0

    async def stalled_cut():
        nonlocal peak
        peak = max(peak, proc.memory_info().rss)
        return await subscribers() == STREAMS - STALLED

    await wait_for(stalled_cut, "the stalled subscribers to be cut", 5)
    await asyncio.sleep(0.2)
    peak = max(peak, proc.memory_info().rss)
    res = {"rss0": rss0, "peak": peak, "read_in": read_in, "readers": [list(map(int, r.ids)) for r in readers],
           "closed": sum(r.closed for r in readers)}
    for r in readers:
        r.transport.close()
    return res


@pytest.mark.server
@pytest.mark.parametrize("twin", twin_params())
def test_server_fanout_with_stalled_subscribers(twin):
    """1,000 subscribers on uvicorn, 100 stop reading: bounded memory, every reader gets every event once."""
    srv = Server(twin, command=["-m", "tests.broadcast_app", "--port", "{port}", "--sndbuf", str(SNDBUF)])
    stalled: list[socket.socket] = []
    try:
        res = run(fanout_with_stalled, srv, twin, stalled, guard=28)
        grown = res["peak"] - res["rss0"]
        bound = STALLED * PER_STALLED + RSS_MARGIN
        assert grown < bound, f"server RSS grew {grown / 2**20:.1f} MiB (bound {bound / 2**20:.1f} MiB)"
        total = WARMUP + EVENTS
        assert len(res["readers"]) == STREAMS - STALLED and res["closed"] == 0
        expected = list(range(1, total + 1))
        for got in res["readers"]:
            assert got == expected  # every event, once, in order
        # the stalled streams were cut: once read, each ends (EOF) after a contiguous prefix
        lasts = []
        for s in stalled:
            got = [int(x) for x in ID_RE.findall(read_socket_to_end(s))]
            assert got == list(range(1, len(got) + 1)) and WARMUP <= len(got) < total
            lasts.append(got[-1])
        # one comes back with its Last-Event-ID: what it missed is older than the history (1,000)
        with socket.create_connection(("127.0.0.1", srv.port)) as s:
            s.sendall(request("/events", str(lasts[0])))
            s.settimeout(10)
            body = b""
            while f"\nid: {total}\r\n".encode() not in body:
                chunk = s.recv(1 << 16)
                assert chunk, body[-200:]
                body += chunk
        oldest = total - 999
        first = body.split(b"\r\n\r\n", 1)[1].split(b"\r\n", 1)[1]  # after the head and a chunk size
        assert first.startswith(f'event: {GAP}\r\ndata: {{"last_event_id":"{lasts[0]}","oldest":"{oldest}"}}\r\n\r\n'
                                .encode())
        assert [int(x) for x in ID_RE.findall(body)] == list(range(oldest, total + 1))
    finally:
        for s in stalled:
            s.close()
        out = srv.stop()
    assert "Traceback" not in out, out[-3000:]
    print(f"\n[{twin}] server RSS +{grown / 2**20:.1f} MiB at peak (bound {bound / 2**20:.1f}); "
          f"{EVENTS} events read by all in {res['read_in']:.1f} s; stalled cut after {min(lasts)}-{max(lasts)} "
          f"events; server log: {len(out.splitlines())} lines, e.g. {out.splitlines()[:1]}")
