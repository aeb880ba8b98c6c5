"""The demo app (``sse_fast.demo``) and the ``python -m sse_fast demo`` command."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from sse_fast.demo import create_app
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


def test_fanout_broadcasts_the_same_event_to_every_client():
    async def main():
        app = create_app()
        async with stream_app(app, "/fanout?interval=0.01&size=100") as a, stream_app(app, "/fanout?interval=0.01&size=100") as b:
            ea, eb = await a.take(5), await b.take(5)
        return ea, eb

    ea, eb = run(main())
    seq_a = [json.loads(e.data)["seq"] for e in ea]
    seq_b = {json.loads(e.data)["seq"] for e in eb}
    assert seq_a == sorted(seq_a) and len(set(seq_a) & seq_b) >= 3
    assert all(90 <= len(e.data) <= 110 for e in ea)
    assert all(abs(json.loads(e.data)["t"] - time.time()) < 5 for e in ea)


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
