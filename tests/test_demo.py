"""The demo app (``sse_fast.demo``) and the ``python -m sse_fast demo`` command."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from sse_fast import demo
from sse_fast.demo import CHAT_BODY_MAX, CHAT_NAME_MAX, CHAT_TEXT_MAX, create_app
from sse_fast.testing import stream_app

from .conftest import DEMO_COMMAND, ROOT, Server


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


@pytest.mark.parametrize("backend", ["sse_fast", "sse_starlette"])
def test_finite_stream_exact_bytes(backend):
    async def main():
        async with stream_app(create_app(backend), "/stream?n=3&size=5") as s:
            await s.wait_body(lambda body: body.count(b"\r\n\r\n") == 3)
            return s.status, s.header("content-type"), s.body

    status, ctype, body = run(main())
    assert status == 200 and ctype == "text/event-stream; charset=utf-8"
    assert body == b"".join(f"id: {i}\r\ndata: xxxxx\r\n\r\n".encode() for i in range(3))


@pytest.mark.parametrize("backend", ["sse_fast", "sse_starlette"])
def test_fanout_broadcasts_the_same_event_to_every_client(backend):
    async def main():
        app = create_app(backend)
        async with stream_app(app, "/fanout?interval=0.01&size=100") as a, stream_app(app, "/fanout?interval=0.01&size=100") as b:
            ea, eb = await a.take(5), await b.take(5)
        return ea, eb

    ea, eb = run(main())
    seq_a = [json.loads(e.data)["seq"] for e in ea]
    seq_b = {json.loads(e.data)["seq"] for e in eb}
    assert seq_a == sorted(seq_a) and len(set(seq_a) & seq_b) >= 3
    assert [e.id for e in ea] == [str(n) for n in seq_a]  # id = seq (what locust's reconnect sends back)
    assert all(90 <= len(e.data) <= 110 for e in ea)
    assert all(abs(json.loads(e.data)["t"] - time.time()) < 5 for e in ea)


@pytest.mark.parametrize("backend", ["sse_fast", "sse_starlette"])
def test_fanout_replays_after_last_event_id_and_its_publisher_stops_when_nobody_listens(backend, monkeypatch):
    monkeypatch.setattr(demo, "FANOUT_GRACE", 0.05)

    async def main():
        app = create_app(backend)
        path = "/fanout?interval=0.02&size=50"
        async with stream_app(app, path) as s:
            first = await s.take(3)
        await asyncio.sleep(0.1)  # events go on while this client is away
        async with stream_app(app, path, headers={"last-event-id": first[-1].id}) as s:
            resumed = await s.take(5)
        for _ in range(100):  # the publisher task ends once the grace has passed without subscribers
            if not app.state.fanout_tasks:
                break
            await asyncio.sleep(0.01)
        stopped = not app.state.fanout_tasks
        async with stream_app(app, path) as s:  # a new client starts it again; seq goes on
            later = await s.take(1)
        return first, resumed, stopped, later

    first, resumed, stopped, later = run(main())
    seqs = [json.loads(e.data)["seq"] for e in first + resumed]
    assert seqs == list(range(seqs[0], seqs[0] + 8))  # the replay filled the absence: no gap, no duplicate
    assert stopped
    assert json.loads(later[0].data)["seq"] > seqs[-1]


def test_fanout_topics_are_bounded(monkeypatch):
    monkeypatch.setattr(demo, "FANOUT_TOPICS_MAX", 2)

    async def main():
        app = create_app()
        async with stream_app(app, "/fanout?interval=0.5&size=10") as a, stream_app(app, "/fanout?interval=0.5&size=20"):
            async with stream_app(app, "/fanout?interval=0.5&size=30") as refused:
                status, body = refused.status, refused.body
            async with stream_app(app, "/fanout?interval=0.5&size=10") as again:  # a known one still works
                await again.next_event()
            await a.next_event()
        return status, body

    status, body = run(main())
    assert status == 400 and b"2 distinct (interval, size) fan-out streams" in body


def test_idle_sends_pings_only():
    async def main():
        async with stream_app(create_app(), "/idle?ping=0.05") as s:
            await s.wait_body(lambda body: body.count(b": ping - ") >= 2)
            return s.body

    body = run(main())
    assert b"data:" not in body


@pytest.mark.parametrize("query", ["n=abc", "n=-1", "size=99999999999"])
def test_bad_query_is_a_400_naming_the_parameter(query):
    async def main():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app())) as client:
            return await client.get(f"http://demo/stream?{query}")

    r = run(main())
    assert r.status_code == 400
    assert ("n" if query.startswith("n=") else "size") in r.text



# --- the chat (sse_fast.broadcast) --------------------------------------------------


async def _until(predicate, timeout=5.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


def _client(app):
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://demo")


def _chat(events):
    return [(e.event, e.id, json.loads(e.data)["name"], json.loads(e.data)["text"]) for e in events]


def test_chat_page_and_home_link():
    async def main():
        async with _client(create_app()) as c:
            return await c.get("/chat"), await c.get("/")

    chat, home = run(main())
    assert chat.status_code == 200 and chat.headers["content-type"].startswith("text/html")
    assert 'new EventSource("/chat/events"' in chat.text and '"/chat/send"' in chat.text
    assert '"sse_fast.gap"' in chat.text
    assert f'maxlength="{CHAT_TEXT_MAX}"' in chat.text and f'maxlength="{CHAT_NAME_MAX}"' in chat.text
    assert 'href="/chat"' in home.text


@pytest.mark.parametrize("backend", ["sse_fast", "sse_starlette"])
def test_chat_message_reaches_every_subscriber_once(backend):
    """JSON and form posts; every stream starts with ``retry: 200`` and gets each message once."""

    async def main():
        app = create_app(backend)
        async with _client(app) as c, stream_app(app, "/chat/events") as a, stream_app(app, "/chat/events") as b:
            await _until(lambda: app.state.chat_broadcast.subscribers("chat") == 2)
            r1 = await c.post("/chat/send", json={"name": " ann ", "text": "hello\r\nthere é"})
            r2 = await c.post("/chat/send", data={"name": "bob", "text": "yo"})
            ea, eb = await a.take(2), await b.take(2)
            await c.post("/chat/send", json={"name": "ann", "text": "third"})
            # nothing else came in between: the next event is the third message
            na, nb = await a.next_event(), await b.next_event()
            return r1, r2, ea + [na], eb + [nb], a.body, a.parser.retry

    r1, r2, ea, eb, body, retry = run(main())
    assert r1.status_code == r2.status_code == 200
    assert r1.json()["id"] == "1" and r2.json()["id"] == "2"
    assert abs(r1.json()["t"] - time.time()) < 5
    expected = [("chat", "1", "ann", "hello\nthere é"), ("chat", "2", "bob", "yo"), ("chat", "3", "ann", "third")]
    assert _chat(ea) == _chat(eb) == expected
    assert json.loads(ea[0].data)["t"] == r1.json()["t"]
    assert body.startswith(b"retry: 200\r\n\r\nid: 1\r\nevent: chat\r\ndata: {")
    assert retry == 200


@pytest.mark.parametrize("backend", ["sse_fast", "sse_starlette"])
def test_chat_replays_after_last_event_id_then_goes_live(backend):
    async def main():
        app = create_app(backend)
        async with _client(app) as c:
            for i in range(4):
                await c.post("/chat/send", json={"name": "ann", "text": f"m{i}"})
            async with stream_app(app, "/chat/events", headers={"last-event-id": "2"}) as s:
                replayed = await s.take(2)
                await c.post("/chat/send", json={"name": "ann", "text": "live"})
                live = await s.next_event()
            async with stream_app(app, "/chat/events", headers={"last-event-id": "5"}) as s:
                # up to date: nothing replayed, the next event is the next live message
                await _until(lambda: app.state.chat_broadcast.subscribers("chat") == 1)
                await c.post("/chat/send", json={"name": "ann", "text": "after"})
                after = await s.next_event()
        return replayed, live, after

    replayed, live, after = run(main())
    assert _chat(replayed) == [("chat", "3", "ann", "m2"), ("chat", "4", "ann", "m3")]
    assert _chat([live]) == [("chat", "5", "ann", "live")]
    assert _chat([after]) == [("chat", "6", "ann", "after")]


def test_chat_unknown_last_event_id_gets_the_gap_event_then_the_history():
    async def main():
        app = create_app()
        async with _client(app) as c:
            for i in range(2):
                await c.post("/chat/send", json={"name": "ann", "text": f"m{i}"})
            async with stream_app(app, "/chat/events", headers={"last-event-id": "999"}) as s:
                return await s.take(3)

    gap, *rest = run(main())
    assert gap.event == "sse_fast.gap" and json.loads(gap.data) == {"last_event_id": "999", "oldest": "1"}
    assert _chat(rest) == [("chat", "1", "ann", "m0"), ("chat", "2", "ann", "m1")]


@pytest.mark.parametrize("backend", ["sse_fast", "sse_starlette"])
def test_chat_drop_ends_the_stream_cleanly_and_the_client_resumes(backend):
    """``POST /chat/_drop``: the response ends (with the farewell ``retry``), the client comes back with its
    ``Last-Event-ID`` and gets what was posted meanwhile, once."""

    async def main():
        app = create_app(backend)
        async with _client(app) as c:
            async with stream_app(app, "/chat/events?client=tab-2") as s:
                await _until(lambda: app.state.chat_broadcast.subscribers("chat") == 1)
                assert (await c.get("/chat/_clients")).json() == {"subscribers": 1, "live": ["tab-2"], "pid": os.getpid()}
                await c.post("/chat/send", json={"name": "ann", "text": "before"})
                before = await s.next_event()
                dropped = await c.post("/chat/_drop", params={"client": "tab-2", "retry": "1500"})
                await _until(lambda: s.ended)
                tail = s.body[-40:]
                farewell_retry, last = s.parser.retry, s.parser.last_event_id
                gone = await c.post("/chat/_drop", params={"client": "tab-2"})
                missed = [await c.post("/chat/send", json={"name": "ann", "text": f"missed {i}"}) for i in range(3)]
            async with stream_app(app, "/chat/events?client=tab-2", headers={"last-event-id": last}) as s:
                resumed = await s.take(3)
                await c.post("/chat/send", json={"name": "ann", "text": "live"})
                live = await s.next_event()
                clients = (await c.get("/chat/_clients")).json()
            await _until(lambda: app.state.chat_broadcast.subscribers("chat") == 0)
            after = (await c.get("/chat/_clients")).json()
        return before, dropped, tail, farewell_retry, last, gone, missed, resumed, live, clients, after

    before, dropped, tail, farewell_retry, last, gone, missed, resumed, live, clients, after = run(main())
    assert _chat([before]) == [("chat", "1", "ann", "before")]
    assert dropped.status_code == 200 and dropped.json() == {"dropped": "tab-2"}
    assert tail.endswith(b"\r\n\r\nretry: 1500\r\n\r\n") and farewell_retry == 1500 and last == "1"
    assert gone.status_code == 404 and "tab-2" in gone.json()["error"]
    assert [r.json()["id"] for r in missed] == ["2", "3", "4"]
    assert _chat(resumed + [live]) == [("chat", str(i + 2), "ann", f"missed {i}") for i in range(3)] + [
        ("chat", "5", "ann", "live")
    ]
    assert clients == {"subscribers": 1, "live": ["tab-2"], "pid": os.getpid()}
    assert after == {"subscribers": 0, "live": [], "pid": os.getpid()}


def test_chat_drop_needs_a_valid_client():
    async def main():
        async with _client(create_app()) as c:
            return [await c.post("/chat/_drop"), await c.post("/chat/_drop?client=a%20b"),
                    await c.post("/chat/_drop?client=x&retry=-1"), await c.get("/chat/events?client=" + "x" * 65)]

    for r in run(main()):
        assert r.status_code == 400
    assert "client" in r.text


_LONG_NAME = "n" * (CHAT_NAME_MAX + 1)
_LONG_TEXT = "t" * (CHAT_TEXT_MAX + 1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"json": {"name": "ann"}}, "text is missing"),
        ({"json": {"text": "hi"}}, "name is missing"),
        ({"json": {"name": "   ", "text": "hi"}}, "name is empty"),
        ({"json": {"name": "ann", "text": "\n \t"}}, "text is empty"),
        ({"json": {"name": "ann", "text": 5}}, "text must be a string, got int"),
        ({"json": {"name": _LONG_NAME, "text": "hi"}}, f"name is too long: {CHAT_NAME_MAX + 1} characters, at most {CHAT_NAME_MAX}"),
        ({"json": {"name": "ann", "text": _LONG_TEXT}}, f"text is too long: {CHAT_TEXT_MAX + 1} characters, at most {CHAT_TEXT_MAX}"),
        ({"json": {"name": "a\x1bnn", "text": "hi"}}, "name contains a control character"),
        ({"json": {"name": "a\nnn", "text": "hi"}}, "name contains a control character"),
        ({"json": ["ann", "hi"]}, "the JSON body must be an object"),
        ({"content": b"{not json", "headers": {"content-type": "application/json"}}, "the request body is not valid JSON"),
        ({"content": b"\xff\xfe", "headers": {"content-type": "application/json"}}, "not valid UTF-8"),
        ({"content": b"name=ann&text=hi", "headers": {"content-type": "text/plain"}}, "got 'text/plain'"),
        ({"content": b"name=ann&text=hi"}, "got 'no content-type'"),
        ({"data": {"name": "ann"}}, "text is missing"),
        ({"json": {"name": "ann", "text": "x" * (CHAT_BODY_MAX + 1)}}, "request body too large"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_chat_bad_message_is_a_400_saying_why_and_publishes_nothing(kwargs, message):
    async def main():
        app = create_app()
        async with _client(app) as c:
            bad = await c.post("/chat/send", **kwargs)
            good = await c.post("/chat/send", json={"name": "ann", "text": "fine"})
        return bad, good

    bad, good = run(main())
    assert bad.status_code == 400 and bad.headers["content-type"].startswith("text/plain")
    assert message in bad.text
    assert good.status_code == 200 and good.json()["id"] == "1"  # the bad one took no id


def test_chat_body_too_large_is_refused_while_streaming_in():
    """No Content-Length (chunked upload): the body is refused as soon as it passes the limit."""

    async def main():
        async def chunks():
            for _ in range(100):
                yield b"x" * 1024

        async with _client(create_app()) as c:
            return await c.post("/chat/send", content=chunks(), headers={"content-type": "application/json"})

    r = run(main())
    assert r.status_code == 400 and f"more than {CHAT_BODY_MAX} bytes" in r.text


def test_chat_send_is_post_only():
    async def main():
        async with _client(create_app()) as c:
            return await c.get("/chat/send")

    assert run(main()).status_code == 405


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend"):
        create_app("flask")


def test_cli_serves_the_demo():
    srv = Server(command=DEMO_COMMAND)
    try:
        page = httpx.get(f"{srv.url}/", timeout=5)
        assert page.status_code == 200 and "new EventSource(\"/events\")" in page.text
        with httpx.stream("GET", f"{srv.url}/events?interval=0.05", timeout=5) as r:
            got = b""
            for chunk in r.iter_raw():
                got += chunk
                if got.count(b"\r\n\r\n") >= 3:
                    break
        assert got.startswith(b"id: 0\r\ndata: {\"n\":0,")
    finally:
        srv.stop()


def test_cli_rejects_a_bad_port():
    r = subprocess.run([sys.executable, "-m", "sse_fast", "demo", "--port", "70000"], capture_output=True, text=True,
                       cwd=str(ROOT))
    assert r.returncode == 2 and "--port" in r.stderr


def test_cli_shutdown_ends_open_streams():
    """Under ``uvicorn.run(...)`` (the CLI) too, SIGTERM ends open streams and the process exits."""
    srv = Server(command=DEMO_COMMAND)
    try:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as sock:
            sock.sendall(b"GET /events?interval=0.1 HTTP/1.1\r\nHost: x\r\n\r\n")
            data = b""
            while b"id: 1\r\n" not in data:
                data += sock.recv(65536)
            t0 = time.monotonic()
            srv.proc.send_signal(signal.SIGTERM)
            while not data.endswith(b"0\r\n\r\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        assert data.endswith(b"0\r\n\r\n")  # the chunked body was ended properly
        # uvicorn re-raises the signal it captured once it has shut down gracefully
        assert srv.proc.wait(10) in (0, -signal.SIGTERM)
        assert time.monotonic() - t0 < 5
    finally:
        srv.stop()


def test_cli_backend_sse_starlette_missing_says_how_to_install():
    """Without sse-starlette, ``--backend sse_starlette`` exits 2 with the install hint, no traceback."""
    code = (
        "import sys; sys.modules['sse_starlette'] = None\n"
        "from sse_fast.__main__ import main\n"
        "sys.exit(main(['demo', '--backend', 'sse_starlette', '--port', '0']))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "pip install 'sse_fast[compare]'" in proc.stderr
    assert "Traceback" not in proc.stderr
