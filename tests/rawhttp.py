"""Raw HTTP/1.1 sockets for real-server tests: what a client that reads (or stops reading) sees.

``open_raw`` sends the request and keeps the socket in ``OPEN``; the test
modules' autouse fixtures call ``close_all()`` after each test.
"""

from __future__ import annotations

import socket

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
