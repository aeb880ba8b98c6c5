"""Helpers for real-server tests: raw HTTP/1.1 sockets, the test apps' ``/status``, polling.

``open_raw`` sends the request and keeps the socket in ``OPEN``; the test
modules' autouse fixtures call ``close_all()`` after each test.
"""

from __future__ import annotations

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
