"""``sse_fast.client``: events from httpx responses and byte iterables."""

from __future__ import annotations

import asyncio
import gzip
import itertools
import socket
import threading
import time

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

from sse_fast import EventSourceResponse
from sse_fast import _parser as parser_module
from sse_fast.client import (
    Event,
    EventStreamParser,
    SSEContentTypeError,
    aiter_events,
    iter_events,
    parse_events,
)

SSE = {"content-type": "text/event-stream; charset=utf-8"}


def test_public_names():
    assert Event is parser_module.Event
    assert EventStreamParser is parser_module.EventStreamParser


def test_parse_events():
    body = b"retry: 10\nid: 1\nevent: a\ndata: x\ndata: y\n\ndata: z\n\ndata: incomplete\n"
    assert parse_events(body) == [Event("a", "x\ny", "1", 10), Event("message", "z", "1", 10)]
    with pytest.raises(TypeError, match="chunk must be bytes"):
        parse_events("data: x\n\n")


def test_iter_events_over_chunks():
    chunks = [
        b"data: a\r",
        b"\n\r",
        b"\nid: 2\ndata: ",
        "ü".encode()[:1],
        "ü".encode()[1:] + b"\n\n",
    ]
    assert list(iter_events(chunks)) == [
        Event("message", "a", "", None),
        Event("message", "ü", "2", None),
    ]


def test_iter_events_rejects_bytes_and_non_iterables():
    with pytest.raises(TypeError, match="use parse_events"):
        list(iter_events(b"data: a\n\n"))
    with pytest.raises(TypeError, match="source must be"):
        list(iter_events(5))


def test_iter_events_httpx_sync():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, headers=SSE, content=iter([b"id: 1\ndata: a\n", b"\n: ping\n\ndata: b\n\n"])
        )

    with httpx.Client(transport=httpx.MockTransport(handler)) as client:
        with client.stream("GET", "http://test/") as response:
            events = list(iter_events(response))
    assert events == [Event("message", "a", "1", None), Event("message", "b", "1", None)]


def test_content_type_is_checked():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, headers={"content-type": "text/html"}, content=b"data: a\n\n")

    with httpx.Client(transport=httpx.MockTransport(handler)) as client:
        with client.stream("GET", "http://test/") as response:
            with pytest.raises(
                SSEContentTypeError,
                match="must be text/event-stream, got 'text/html' \\(status 404\\)",
            ):
                list(iter_events(response))
            assert [e.data for e in iter_events(response, check_content_type=False)] == ["a"]


def test_gzip_content_encoding_is_undone():
    body = gzip.compress(b"data: zipped\n\n")

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={**SSE, "content-encoding": "gzip"}, content=body)

    with httpx.Client(transport=httpx.MockTransport(handler)) as client:
        with client.stream("GET", "http://test/") as response:
            assert [e.data for e in iter_events(response)] == ["zipped"]


def test_aiter_events_yields_each_event_as_it_arrives():
    async def main():
        gate = asyncio.Event()
        seen = []

        async def body():
            yield b"data: first\n\n"
            await gate.wait()  # the second event is held back until the first was seen
            yield b"data: second\n\n"

        def handler(request: httpx.Request) -> httpx.Response:
            return httpx.Response(200, headers=SSE, content=body())

        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            async with client.stream("GET", "http://test/") as response:
                async for ev in aiter_events(response):
                    seen.append(ev.data)
                    gate.set()
        return seen

    assert asyncio.run(asyncio.wait_for(main(), 10)) == ["first", "second"]


def test_aiter_events_over_async_iterable_and_errors():
    async def chunks():
        yield b"event: e\ndata: 1\n\n"
        yield bytearray(b"data: 2\n\n")

    async def main():
        got = [e async for e in aiter_events(chunks())]
        with pytest.raises(TypeError, match="source must be"):
            async for _ in aiter_events([b"data: x\n\n"]):
                pass
        return got

    assert asyncio.run(main()) == [Event("e", "1", "", None), Event("message", "2", "", None)]


# --- a real server ---------------------------------------------------------------------


async def _numbers(request: Request):
    start = int(request.headers.get("last-event-id", "-1")) + 1

    async def gen():
        for n in itertools.count(start):
            yield {"id": str(n), "event": "n", "data": f"{n}\n✓"}
            await asyncio.sleep(0.005)

    return EventSourceResponse(gen(), ping=0)


@pytest.fixture(scope="module")
def server_url():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = Starlette(routes=[Route("/numbers", _numbers)])
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)
    sock.close()


@pytest.mark.server
def test_real_server_endless_stream_async(server_url):
    async def main():
        got = []
        async with httpx.AsyncClient(timeout=10) as client:
            headers = {"accept": "text/event-stream", "last-event-id": "9"}
            async with client.stream("GET", f"{server_url}/numbers", headers=headers) as response:
                async for ev in aiter_events(response):
                    got.append(ev)
                    if len(got) == 5:
                        break
        return got

    got = asyncio.run(asyncio.wait_for(main(), 20))
    assert [(e.event, e.data, e.id) for e in got] == [
        ("n", f"{n}\n✓", str(n)) for n in range(10, 15)
    ]


@pytest.mark.server
def test_real_server_endless_stream_sync(server_url):
    got = []
    with httpx.Client(timeout=10) as client:
        with client.stream("GET", f"{server_url}/numbers") as response:
            for ev in iter_events(response):
                got.append(ev.id)
                if len(got) == 3:
                    break
    assert got == ["0", "1", "2"]
