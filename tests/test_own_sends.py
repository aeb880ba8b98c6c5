"""Issue 16: an awaiting producer's event leaves in the producer's own task.

When the stream's writer is idle (nothing buffered, no send in flight) and the
producer awaited since its previous event, the event is sent by the task that
produced it, the response's task: no future, no writer task woken. Events
that are ready together, and events produced while the client is slower than
the producer, are still batched by the writer task. Every test runs on both
encoder twins (``impl``) and checks the bytes on the wire, which task sent
each body, and that sends never overlap.
"""

from __future__ import annotations

import asyncio

import anyio
import pytest

from sse_fast import AppStatus, EventSourceResponse, SendTimeoutError

from .asgi_client import expected_numbers, numbers, scope

GUARD = 10.0


class Recorder:
    """An ASGI ``send``/``receive`` pair that records, per body send, the task that made it.

    ``delay``: seconds each body send with data suspends (a client slower than
    the producer); ``block``: body sends with data never complete.
    """

    def __init__(self, delay: float = 0.0, block: bool = False, delay_first: int | None = None):
        self.bodies: list[tuple[asyncio.Task | None, bytes]] = []
        self.messages: list[dict] = []
        self.delay = delay
        self.block = block
        self.delay_first = delay_first  # only the first N data sends are slow
        self.active = 0
        self.max_active = 0
        self.gone = asyncio.Event()

    async def receive(self):
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message):
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            data = message["type"] == "http.response.body" and message["body"]
            if data and self.block:
                await asyncio.sleep(3600)
            if data and self.delay and (self.delay_first is None or len(self.bodies) < self.delay_first):
                await asyncio.sleep(self.delay)
            self.messages.append(message)
            if data:
                self.bodies.append((asyncio.current_task(), message["body"]))
        finally:
            self.active -= 1

    @property
    def body(self) -> bytes:
        return b"".join(b for _, b in self.bodies)


async def run(resp, rec: Recorder) -> asyncio.Task:
    """Run ``resp`` in a task of its own (the response's task) and return that task."""
    task = asyncio.get_running_loop().create_task(resp(scope(), rec.receive, rec.send))
    with anyio.fail_after(GUARD):
        await asyncio.wait((task,))
    return task


def play(make_response, make_recorder=Recorder) -> tuple[Recorder, asyncio.Task]:
    """Run ``make_response()`` to its end against ``make_recorder()``; return the recorder and the response's task."""

    async def main():
        rec = make_recorder()
        task = await run(make_response(), rec)
        task.result()
        return rec, task

    return asyncio.run(main())


def _in(rec: Recorder, task) -> int:
    return sum(1 for t, _ in rec.bodies if t is task)


async def _resolved_later():
    fut = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_later(0.001, fut.set_result, None)
    await fut


PAUSES = {
    "sleep_1ms": lambda: asyncio.sleep(0.001),
    "sleep_0": lambda: asyncio.sleep(0),
    "anyio_checkpoint": anyio.lowlevel.checkpoint,
    "future_resolved_later": _resolved_later,
}


@pytest.mark.parametrize("pause", list(PAUSES))
def test_awaiting_producer_sends_each_event_in_the_response_task(impl, pause):
    n = 200

    async def gen():
        for i in range(n):
            await PAUSES[pause]()
            yield {"data": i, "id": str(i)}

    rec, task = play(lambda: EventSourceResponse(gen()), Recorder)
    assert rec.body == expected_numbers(n)
    assert len(rec.bodies) == n  # one event per send, as it was produced
    assert _in(rec, task) == n  # every one from the producer's task: the writer task never sent
    assert rec.max_active == 1


def test_events_ready_together_still_leave_in_one_send(impl):
    bursts, size = 20, 50

    async def gen():
        for b in range(bursts):
            await asyncio.sleep(0.001)
            for i in range(size):
                yield {"data": b * size + i, "id": str(b * size + i)}

    rec, task = play(lambda: EventSourceResponse(gen()), Recorder)
    assert rec.body == expected_numbers(bursts * size)
    # per burst: its first event from the producer's task, the other 49 as one batch of the writer's
    assert len(rec.bodies) == 2 * bursts
    assert _in(rec, task) == bursts
    assert rec.max_active == 1


def test_never_awaiting_producer_is_batched(impl):
    n = 20_000

    rec, _ = play(lambda: EventSourceResponse(numbers(n)), Recorder)
    assert rec.body == expected_numbers(n)
    assert len(rec.bodies) <= len(expected_numbers(n)) // 65536 * 2 + 4  # batches near max_buffer_bytes


def test_client_slower_than_producer_gets_batches(impl):
    n = 300

    rec, task = play(lambda: EventSourceResponse(numbers(n, delay=0.001)), lambda: Recorder(delay=0.02))
    assert rec.body == expected_numbers(n)
    # 300 events at ~1 ms against 20 ms sends: the writer task batches what piles up
    assert len(rec.bodies) < n // 4
    assert _in(rec, task) >= 1
    assert rec.max_active == 1


def test_own_sends_resume_after_the_writer_caught_up(impl):
    n = 100

    rec, task = play(lambda: EventSourceResponse(numbers(n, delay=0.002)), lambda: Recorder(delay=0.05, delay_first=1))
    assert rec.body == expected_numbers(n)
    # the first send suspended (it held the producer, as ``await send()`` does): the next event
    # goes to the writer task; once that one has sent everything, the producer sends its own again
    assert [t is task for t, _ in rec.bodies] == [True, False] + [True] * (n - 2)


def test_ping_waits_for_the_producers_own_send(impl):
    async def gen():
        await asyncio.sleep(0.01)
        yield {"data": 0, "id": "0"}
        await asyncio.sleep(0.3)
        yield {"data": 1, "id": "1"}

    rec, _ = play(lambda: EventSourceResponse(gen(), ping=0.05), lambda: Recorder(delay=0.25, delay_first=1))
    assert rec.max_active == 1  # the pings never overlapped the slow send
    bodies = [b for _, b in rec.bodies]
    assert bodies[0] == expected_numbers(1)
    assert any(b.startswith(b": ping") for b in bodies[1:])
    assert rec.body.endswith(b"id: 1\r\ndata: 1\r\n\r\n")


def test_send_timeout_ends_a_stalled_own_send(impl):
    record = []

    async def main():
        rec = Recorder(block=True)
        resp = EventSourceResponse(numbers(10, delay=0.01, record=record), send_timeout=0.2)
        t0 = asyncio.get_running_loop().time()
        task = await run(resp, rec)
        return task, asyncio.get_running_loop().time() - t0

    task, took = asyncio.run(main())
    assert isinstance(task.exception(), SendTimeoutError)
    assert record == ["finally"]
    assert 0.2 <= took < 1.5


def test_disconnect_during_own_send_ends_the_stream(impl):
    record = []

    async def main():
        rec = Recorder(block=True)
        asyncio.get_running_loop().call_later(0.1, rec.gone.set)
        task = await run(EventSourceResponse(numbers(10, delay=0.01, record=record)), rec)
        return task, rec

    task, rec = asyncio.run(main())
    assert task.exception() is None
    assert record == ["finally"]
    assert rec.bodies == []


def test_shutdown_lets_the_own_send_complete(impl):
    record = []

    async def main():
        rec = Recorder(delay=0.3, delay_first=1)
        loop = asyncio.get_running_loop()
        # the first event's send is in flight (it takes 0.3 s) when the server shuts down
        loop.call_later(0.1, setattr, AppStatus, "should_exit", True)
        task = await run(EventSourceResponse(numbers(1000, delay=0.02, record=record)), rec)
        return task, rec

    try:
        task, rec = asyncio.run(main())
    finally:
        AppStatus.should_exit = False
    assert task.exception() is None
    assert record == ["finally"]
    assert rec.bodies[0][1] == expected_numbers(1)  # completed, not cut
    assert rec.body == expected_numbers(len(rec.body.split(b"\r\n\r\n")) - 1)
    assert rec.messages[-1] == {"type": "http.response.body", "body": b"", "more_body": False}


def test_cancel_scope_in_a_send_wrapper_enters_and_exits_in_one_task(impl):
    """A middleware that wraps ``send`` in an anyio cancel scope (or ``asyncio.timeout``) needs one task per send."""
    n = 50

    async def gen():
        for i in range(n):
            await asyncio.sleep(0.001)
            yield {"data": i, "id": str(i)}

    async def main():
        rec = Recorder(delay=0.005)

        async def send(message):
            with anyio.CancelScope():
                async with asyncio.timeout(5):
                    await rec.send(message)

        task = asyncio.get_running_loop().create_task(EventSourceResponse(gen())(scope(), rec.receive, send))
        with anyio.fail_after(GUARD):
            await asyncio.wait((task,))
        task.result()
        return rec

    rec = asyncio.run(main())
    assert rec.body == expected_numbers(n)


# ---------------------------------------------------------------- first_step (both twins)
def test_first_step_returns_sent_for_a_send_that_completes(impl):
    log = []

    async def send():
        log.append("ran")
        return 42

    coro = send()
    assert impl.first_step(coro, None) is impl.SENT
    assert log == ["ran"]
    assert impl.SENT is __import__("sse_fast._encoder_py", fromlist=["SENT"]).SENT  # one sentinel for both twins


def test_first_step_hands_on_what_the_send_yields_and_runs_in_the_context(impl):
    import contextvars

    var = contextvars.ContextVar("var", default="task's")
    ctx = contextvars.copy_context()
    ctx.run(var.set, "stream's")
    seen = []

    class Yield:
        def __await__(self):
            return (yield "waiting")

    async def send():
        seen.append(var.get())
        got = await Yield()
        seen.append((var.get(), got))

    coro = send()
    assert impl.first_step(coro, ctx) == "waiting"
    assert seen == ["stream's"]
    assert var.get() == "task's"  # the context was left again
    with pytest.raises(StopIteration):
        ctx.run(coro.send, "resumed")
    assert seen == ["stream's", ("stream's", "resumed")]


def test_first_step_raises_what_the_send_raises_and_leaves_the_context(impl):
    import contextvars

    ctx = contextvars.copy_context()

    async def send():
        raise OSError("gone")

    with pytest.raises(OSError, match="gone"):
        impl.first_step(send(), ctx)
    ctx.run(lambda: None)  # entered once more: it was exited after the error


def test_a_send_that_returns_a_future_is_awaited(impl):
    """An ASGI ``send`` need not be a coroutine function: one that returns a future works too."""

    async def main():
        loop = asyncio.get_running_loop()
        bodies = []

        def send(message):
            fut = loop.create_future()
            if message["type"] == "http.response.body" and message["body"]:
                bodies.append(message["body"])
            loop.call_soon(fut.set_result, None)
            return fut

        async def gen():
            for i in range(3):
                await asyncio.sleep(0)
                yield {"data": str(i)}

        never = loop.create_future()

        async def receive():
            await never

        with anyio.fail_after(GUARD):
            await EventSourceResponse(gen(), ping=0)(scope(), receive, send)
        return bodies

    assert b"".join(asyncio.run(main())) == b"data: 0\r\n\r\ndata: 1\r\n\r\ndata: 2\r\n\r\n"


# ---------------------------------------------------------------- the buffer's send path (both twins)
async def _sink(message):
    pass


def _wired_buffer(impl, loop, send=_sink):
    """A ``StreamBuffer`` wired as the stream writer wires it, with recording hooks (``send``: a no-op by default)."""
    from sse_fast._encoder_py import PRODUCING

    sb = impl.StreamBuffer("\r\n", 65536, loop)
    sb.clock = impl.LoopTurns()
    sb.send = send
    sb.phase = PRODUCING
    sb.wake = loop.create_future()  # the writer task waits for data
    log = []

    class Owner:  # the stream writer's side of the buffer's sends
        def send_failed(self, exc):
            log.append(("error", exc))

        def interrupt_producer(self):
            log.append(("interrupt",))

        async def finish_send(self, aw, waiting, size, events, turn, context):
            log.append(("finish", size, events))

    sb.owner = Owner()
    return sb, log


def test_claim_only_an_idle_stream(impl):
    from sse_fast._encoder_py import FLUSHING

    async def main():
        loop = asyncio.get_running_loop()
        sb, _ = _wired_buffer(impl, loop)
        assert sb.claim(b"data: a\r\n\r\n") and sb.inflight == 11 and sb.own_send
        assert not sb.claim(b"x")  # claimed: busy
        sb.release_claim()
        assert sb.inflight == 0 and not sb.own_send
        for busy in ("slow", "stopped", "phase", "buffered", "writer running"):
            sb, _ = _wired_buffer(impl, loop)
            if busy == "slow":
                sb.slow = True
            elif busy == "stopped":
                sb.stopped = True
            elif busy == "phase":
                sb.phase = FLUSHING
            elif busy == "buffered":
                sb.append({"data": "b"})
            else:
                sb.wake = None
            assert not sb.claim(b"data: a\r\n\r\n"), busy
            assert sb.inflight == 0 and not sb.own_send, busy

    asyncio.run(main())


def test_send_claimed_counts_and_drains_what_came_meanwhile(impl):
    async def main():
        loop = asyncio.get_running_loop()
        sent = []

        async def send(message):
            sent.append(message)

        sb, log = _wired_buffer(impl, loop, send)
        assert sb.claim(b"data: a\r\n\r\n")
        sb.append({"data": "b"})  # published while the claimed send waited in the fan-out's queue
        sb.append({"data": "c"})
        assert sb.send_claimed(b"data: a\r\n\r\n") is None
        assert [m["body"] for m in sent] == [b"data: a\r\n\r\n", b"data: b\r\n\r\ndata: c\r\n\r\n"]
        assert all(m["more_body"] is True and m["type"] == "http.response.body" for m in sent)
        assert (sb.sends, sb.sent_bytes, sb.sent_events, sb.inflight, sb.own_send, len(sb)) == (2, 33, 3, 0, False, 0)
        assert log == []

    asyncio.run(main())


def test_start_send_hands_a_suspended_send_to_finish_and_errors_to_on_error(impl):
    async def main():
        loop = asyncio.get_running_loop()

        async def suspends(message):
            await asyncio.sleep(0)

        sb, log = _wired_buffer(impl, loop, suspends)
        sb.append({"data": "a"})
        rest = sb.start_send(sb.take(), -1, None)
        assert rest is not None and sb.own_send and sb.inflight == 11
        await rest
        assert log == [("finish", 11, -1)]

        async def fails(message):
            raise RuntimeError("boom")

        sb, log = _wired_buffer(impl, loop, fails)
        assert sb.start_send(b"data: a\r\n\r\n", 1, None) is None
        assert [e for e in log if e[0] == "error"][0][1].args == ("boom",)
        assert not sb.own_send and sb.sends == 0

        async def cancelled(message):
            raise asyncio.CancelledError

        sb, log = _wired_buffer(impl, loop, cancelled)
        with pytest.raises(asyncio.CancelledError):
            sb.start_send(b"data: a\r\n\r\n", 1, None)
        assert not sb.own_send and log == []

    asyncio.run(main())


def test_a_stopped_stream_interrupts_its_producer_after_the_send_and_a_cut_one_counts_nothing(impl):
    async def main():
        loop = asyncio.get_running_loop()
        sb, log = _wired_buffer(impl, loop)
        sb.stopped = True  # a shutdown arrived: the send completes, then the producer is interrupted
        assert sb.start_send(b"data: a\r\n\r\n", 1, None) is None
        assert log == [("interrupt",)] and sb.sends == 1
        sb, log = _wired_buffer(impl, loop)
        sb.stopped = sb.cut = True  # the client left: a late completion is not counted
        assert sb.start_send(b"data: a\r\n\r\n", 1, None) is None
        assert sb.sends == 0 and sb.inflight == 11

    asyncio.run(main())
