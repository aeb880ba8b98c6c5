"""``sse_fast.testing.stream_app``: endless event streams tested in process.

Each test runs its own event loop (``asyncio.run``) with a hard time limit, so
a hang fails fast instead of waiting for pytest-timeout.
"""

from __future__ import annotations

import asyncio
import itertools

import pytest
import sse_starlette
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from sse_fast import EventSourceResponse
from sse_fast.testing import AppStream, StreamEnded, stream_app

BACKENDS = {"sse_fast": EventSourceResponse, "sse_starlette": sse_starlette.EventSourceResponse}


def run(coro, limit: float = 20.0):
    async def guarded():
        return await asyncio.wait_for(coro, limit)

    return asyncio.run(guarded())


def make_app(response_cls, log: list):
    async def endless(request: Request):
        start = int(request.headers.get("last-event-id", "-1")) + 1
        interval = float(request.query_params.get("interval", "0.001"))

        async def gen():
            log.append("started")
            try:
                for n in itertools.count(start):
                    yield {"id": str(n), "event": "tick", "data": f"n={n}\nü"}
                    await asyncio.sleep(interval)
            finally:
                log.append("closed")

        return response_cls(gen(), ping=0.05 if "ping" in request.query_params else None)

    async def firehose(request: Request):
        async def gen():
            try:
                for n in itertools.count():
                    yield {"data": n}  # never awaits anything else
            finally:
                log.append("closed")

        return response_cls(gen())

    async def finite(request: Request):
        async def gen():
            for n in range(3):
                event = {"data": f"x{n}", "id": str(n)}
                if n == 0:
                    event["retry"] = 1000
                yield event

        return response_cls(gen())

    async def fails(request: Request):
        async def gen():
            yield {"data": "one"}
            await asyncio.sleep(0.01)
            raise LookupError("boom in the generator")

        return response_cls(gen())

    async def plain(request: Request):
        return PlainTextResponse("hello")

    return Starlette(
        routes=[
            Route("/endless", endless),
            Route("/firehose", firehose),
            Route("/finite", finite),
            Route("/fails", fails),
            Route("/plain", plain),
        ]
    )


async def broken_before_start(scope, receive, send):
    raise KeyError("before start")


async def never_starts(scope, receive, send):
    await asyncio.sleep(3600)


async def deaf_app(scope, receive, send):
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/event-stream")],
        }
    )
    await send({"type": "http.response.body", "body": b"data: a\n\n", "more_body": True})
    await asyncio.sleep(3600)


@pytest.fixture(params=sorted(BACKENDS))
def backend(request):
    return BACKENDS[request.param]


def test_endless_stream_yields_events_then_disconnects(backend):
    log: list = []
    app = make_app(backend, log)

    async def main():
        async with stream_app(app, "/endless") as s:
            assert isinstance(s, AppStream)
            assert s.status == 200
            assert s.header("Content-Type").startswith("text/event-stream")
            got = []
            async for ev in s.events(timeout=5):
                got.append(ev)
                if len(got) == 5:
                    break
            assert log == ["started"]
        assert log == ["started", "closed"]  # the generator was closed on disconnect
        assert s.app_task.done() and s.disconnected
        return got

    got = run(main())
    assert [(e.event, e.data, e.id) for e in got] == [
        ("tick", f"n={n}\nü", str(n)) for n in range(5)
    ]


def test_last_event_id_header_reaches_the_app(backend):
    app = make_app(backend, [])

    async def main():
        async with stream_app(app, "/endless", headers={"Last-Event-ID": "41"}) as s:
            return await s.take(3)

    assert [e.id for e in run(main())] == ["42", "43", "44"]


def test_firehose_without_awaits_stops_on_disconnect(backend):
    log: list = []
    app = make_app(backend, log)

    async def main():
        async with stream_app(app, "/firehose", max_pending_events=50) as s:
            evs = await s.take(200)
        assert s.app_task.done()
        return evs

    assert [e.data for e in run(main())] == [str(n) for n in range(200)]
    assert log == ["closed"]


def test_finite_stream_ends(backend):
    async def main():
        async with stream_app(make_app(backend, []), "/finite") as s:
            evs = [ev async for ev in s.events()]
            assert s.ended
            with pytest.raises(StreamEnded):
                await s.next_event()
            return s, evs

    s, evs = run(main())
    assert [(e.data, e.id, e.retry) for e in evs] == [
        ("x0", "0", 1000),
        ("x1", "1", 1000),
        ("x2", "2", 1000),
    ]
    assert (
        s.body
        == b"id: 0\r\ndata: x0\r\nretry: 1000\r\n\r\nid: 1\r\ndata: x1\r\n\r\nid: 2\r\ndata: x2\r\n\r\n"
    )
    assert s.parser.last_event_id == "2"
    assert s.start["type"] == "http.response.start"


def test_ping_is_visible_in_raw_body(backend):
    async def main():
        async with stream_app(make_app(backend, []), "/endless?interval=10&ping=1") as s:
            await s.next_event()
            body = await s.wait_body(lambda b: b"\r\n\r\n:" in b, timeout=5)
        return body

    body = run(main())
    assert body.startswith(b"id: 0\r\nevent: tick\r\ndata: n=0\r\ndata: \xc3\xbc\r\n\r\n:")


def test_app_error_while_streaming_is_raised(backend):
    async def main():
        async with stream_app(make_app(backend, []), "/fails") as s:
            assert (await s.next_event()).data == "one"
            await s.next_event()

    with pytest.raises(LookupError, match="boom in the generator"):
        run(main())


def test_app_error_before_start_is_raised_on_entry():
    async def main():
        async with stream_app(broken_before_start, "/"):
            raise AssertionError("not reached")

    with pytest.raises(KeyError, match="before start"):
        run(main())


def test_no_response_start_times_out():
    async def main():
        async with stream_app(never_starts, "/", start_timeout=0.1, disconnect_timeout=0.1):
            raise AssertionError("not reached")

    with pytest.raises(TimeoutError, match="http.response.start"):
        run(main())


def test_app_that_ignores_disconnect_fails_the_test():
    async def main():
        async with stream_app(deaf_app, "/", disconnect_timeout=0.1) as s:
            assert (await s.next_event()).data == "a"
        raise AssertionError("not reached")

    with pytest.raises(TimeoutError, match="did not return within 0.1 s of http.disconnect"):
        run(main())


def test_next_event_timeout(backend):
    async def main():
        async with stream_app(make_app(backend, []), "/endless?interval=30") as s:
            await s.next_event()
            with pytest.raises(TimeoutError, match="no event within 0.05 s"):
                await s.next_event(timeout=0.05)

    run(main())


def test_body_exception_wins_and_app_is_stopped(backend):
    log: list = []

    async def main():
        async with stream_app(make_app(backend, log), "/endless"):
            raise ZeroDivisionError("in the test body")

    with pytest.raises(ZeroDivisionError):
        run(main())
    assert log[-1] == "closed"


def test_plain_response():
    async def main():
        async with stream_app(make_app(EventSourceResponse, []), "/plain") as s:
            assert [ev async for ev in s.events()] == []
            return s

    s = run(main())
    assert (s.status, s.body, s.ended) == (200, b"hello", True)


def test_scope():
    seen = {}

    async def app(scope, receive, send):
        seen.update(scope)
        seen["request"] = await receive()
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def main():
        async with stream_app(
            app, "/a%20b?x=1&y=%C3%BC", method="post", headers=[(b"X-A", b"1")], body=b"hi"
        ) as s:
            return s

    s = run(main())
    assert s.status == 204
    assert (seen["method"], seen["path"], seen["raw_path"], seen["query_string"]) == (
        "POST",
        "/a b",
        b"/a%20b",
        b"x=1&y=%C3%BC",
    )
    assert seen["headers"] == [
        (b"host", b"testserver"),
        (b"x-a", b"1"),
        (b"accept", b"text/event-stream"),
    ]
    assert seen["request"] == {"type": "http.request", "body": b"hi", "more_body": False}


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"path": "events"}, "path must start with '/'"),
        ({"scheme": "ws"}, "scheme must be"),
        ({"max_pending_events": 0}, "max_pending_events must be >= 1"),
        ({"start_timeout": -1}, "start_timeout must be"),
        ({"disconnect_timeout": "x"}, "disconnect_timeout must be"),
    ],
)
def test_bad_arguments(kwargs, match):
    async def main():
        async with stream_app(deaf_app, **kwargs):
            pass

    with pytest.raises(ValueError, match=match):
        run(main())


def test_take_rejects_negative():
    async def main():
        async with stream_app(make_app(EventSourceResponse, []), "/endless") as s:
            with pytest.raises(ValueError, match="n must be >= 0"):
                await s.take(-1)

    run(main())


@pytest.mark.parametrize("demo_backend", ["sse_fast", "sse_starlette"])
def test_demo_endless_events_endpoint(demo_backend):
    from sse_fast.demo import create_app

    async def main():
        app = create_app(demo_backend)
        async with stream_app(app, "/events?interval=0.001", headers={"last-event-id": "99"}) as s:
            evs = await s.take(3)
        return evs

    evs = run(main())
    assert [e.id for e in evs] == ["100", "101", "102"]
    assert [e.json()["n"] for e in evs] == [100, 101, 102]
