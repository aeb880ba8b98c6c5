"""In-process ASGI driving for the response tests, on any async library (anyio).

``scope()`` builds an HTTP scope; ``Client`` is the other end of one
connection (its ``send`` records what the stream sent, its ``receive`` waits
for ``disconnect()``); ``numbers(n)`` is a producer of ``n`` dict events and
``expected_numbers(n)`` their bytes on the wire. ``tests/test_response.py``
(asyncio), ``tests/test_trio.py`` (trio) and ``tests/test_metrics.py`` (both)
drive ``EventSourceResponse`` with them.
"""

from __future__ import annotations

import time

import anyio


def scope(method: str = "GET", **extra) -> dict:
    """An HTTP/1.1 ``GET /`` scope (``method`` and any key overridden by ``extra``)."""
    return {"type": "http", "method": method, "path": "/", "headers": [], "http_version": "1.1", **extra}


class Client:
    """Records sent messages with their times (``(seconds since creation, message)``);
    ``disconnect()`` ends ``receive``.

    ``block_send``: a body send with data never completes (a client that stopped reading).
    """

    def __init__(self, block_send: bool = False):
        self.messages: list[tuple[float, dict]] = []
        self._gone = anyio.Event()
        self.block_send = block_send
        self.t0 = time.perf_counter()

    async def receive(self):
        await self._gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message):
        if self.block_send and message["type"] == "http.response.body" and message["body"]:
            await anyio.sleep_forever()
        self.messages.append((time.perf_counter() - self.t0, message))

    def disconnect(self):
        self._gone.set()

    @property
    def bodies(self) -> list[bytes]:
        """The bodies of the body sends that carried data, in order."""
        return [m["body"] for _, m in self.messages if m["type"] == "http.response.body" and m["body"]]

    @property
    def body(self) -> bytes:
        return b"".join(self.bodies)

    def tally(self) -> tuple[int, int]:
        """``(events, pings)`` in what arrived: blocks ended by an empty line; pings are ``: ping`` comments."""
        blocks = self.body.split(b"\r\n\r\n")
        assert blocks[-1] == b""  # only whole events are ever sent
        pings = sum(1 for b in blocks[:-1] if b.startswith(b": ping - "))
        return len(blocks) - 1 - pings, pings


async def numbers(n, delay=0.0, record=None):
    """``n`` events ``{"data": i, "id": str(i)}``, ``delay`` seconds apart; ``"finally"`` goes to ``record``."""
    try:
        for i in range(n):
            if delay:
                await anyio.sleep(delay)
            yield {"data": i, "id": str(i)}
    finally:
        if record is not None:
            record.append("finally")


def expected_numbers(n, sep="\r\n"):
    """The bytes ``numbers(n)`` becomes on the wire."""
    return b"".join(f"id: {i}{sep}data: {i}{sep}{sep}".encode() for i in range(n))
