"""Helpers for real-server tests: raw HTTP/1.1 sockets, the test apps' ``/status``, polling,
and ``SSEReader``, an asyncio subscriber for tests that hold many streams.

``open_raw`` sends the request and keeps the socket in ``OPEN``; the test
modules' autouse fixtures call ``close_all()`` after each test.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time

import httpx

OPEN: list[socket.socket] = []


def open_raw(srv, path: str, method: str = "GET", rcvbuf: int | None = None) -> socket.socket:
    """A raw socket to ``srv`` (a ``conftest.Server``) with the request sent.

    Args:
        path: the request target, query string included.
        method: the HTTP method.
        rcvbuf: shrink the socket's receive buffer to this many bytes (a client that stops reading).
    """
    s = socket.socket()
    OPEN.append(s)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect(("127.0.0.1", srv.port))
    s.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n".encode())
    return s


def read_until(s: socket.socket, marker: bytes, limit: float = 5.0) -> bytes:
    """Read until ``marker`` was received or the peer closed; ``limit`` seconds per read."""
    s.settimeout(limit)
    data = b""
    while marker not in data:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def close_all() -> None:
    """Close every socket ``open_raw`` opened."""
    while OPEN:
        OPEN.pop().close()


def status(srv, key: str) -> dict:
    """The test app's ``GET /status?key=...`` as JSON (``state`` holds what happened to that stream)."""
    return httpx.get(f"{srv.url}/status", params={"key": key}, timeout=5).json()


def wait_for(pred, timeout: float = 5.0, every: float = 0.05):
    """Call ``pred`` every ``every`` seconds until it returns something true or ``timeout`` passed; its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(every)
    return pred()


_ID_RE = re.compile(rb"\nid: ([^\r\n]+)\r\n")
_PID_RE = re.compile(rb"\r\nx-pid: (\d+)", re.IGNORECASE)


class SSEReader(asyncio.Protocol):
    """A raw-socket subscriber on asyncio: the ids of the events it read (HTTP chunk framing
    skipped), its pings, and the ``x-pid`` response header of the worker that serves it.

    ``head`` resolves when the response head is in (``status``, ``pid`` set); ``closed``
    turns true and ``gone`` resolves when the server closes. With ``keep_raw`` (a class
    attribute) everything received is kept in ``raw`` too.
    """

    keep_raw = False

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.head = loop.create_future()
        self.gone = loop.create_future()
        self.buf = b""
        self.raw = b""
        self.ids: list[str] = []
        self.pings = 0
        self.pid: int | None = None
        self.status = 0
        self.closed = False
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.keep_raw:
            self.raw += data
        buf = self.buf + data
        if not self.head.done():
            if b"\r\n\r\n" not in buf:
                self.buf = buf
                return
            head = buf.split(b"\r\n\r\n", 1)[0]
            self.status = int(head.split(b" ", 2)[1])
            m = _PID_RE.search(head)
            self.pid = int(m.group(1)) if m else None
            self.head.set_result(True)
        end = buf.rfind(b"\r\n\r\n")
        if end < 0:
            self.buf = buf
            return
        self.ids.extend(m.decode() for m in _ID_RE.findall(buf, 0, end + 2))
        self.pings += buf.count(b": ping", 0, end + 2)
        self.buf = buf[end:]  # keeps the CRLF CRLF before the next "id:"

    def connection_lost(self, exc) -> None:
        self.closed = True
        if not self.gone.done():
            self.gone.set_result(True)
        if not self.head.done():
            self.head.set_exception(ConnectionError("closed before the response head"))


async def http_json(port: int, path: str) -> dict:
    """``GET path`` on 127.0.0.1:``port`` over asyncio (``Connection: close``); the body as JSON."""
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    raw = await r.read()
    w.close()
    return json.loads(raw.split(b"\r\n\r\n", 1)[1])
