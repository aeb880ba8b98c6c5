"""Testing endless event streams in process, without a server.

Starlette's ``TestClient`` and httpx's ``ASGITransport`` collect the whole
response body before returning it, so a test of an endless SSE endpoint hangs
(sse-starlette issue 165, httpx issue 2186). :func:`stream_app` runs the ASGI
app as a task on the running asyncio loop, hands the test each event as soon as
the app has sent it, and on leaving the ``async with`` block sends
``http.disconnect`` and waits for the app to finish::

    from sse_fast.testing import stream_app

    async def test_ticks():
        async with stream_app(app, "/events?interval=0", headers={"last-event-id": "4"}) as s:
            assert s.status == 200
            first = await s.next_event(timeout=5)
            assert first.id == "5"
            async for event in s.events(timeout=5):
                if int(event.id) >= 10:
                    break
        # here the app has seen http.disconnect and returned

Works with any ASGI 3 HTTP app (sse_fast's and sse-starlette's
``EventSourceResponse`` alike). asyncio only; the app's lifespan is not run.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import unquote

from ._parser import Event, EventStreamParser

__all__ = ["AppStream", "StreamEnded", "stream_app"]


class StreamEnded(EOFError):
    """The response ended (or the app returned) before the awaited event came."""


def _headers_list(
    headers: Mapping[str, str] | Iterable[tuple[Any, Any]] | None,
) -> list[tuple[bytes, bytes]]:
    if headers is None:
        return []
    items = headers.items() if isinstance(headers, Mapping) else headers
    out = []
    for name, value in items:
        n = name.encode("latin-1") if isinstance(name, str) else bytes(name)
        v = value.encode("latin-1") if isinstance(value, str) else bytes(value)
        out.append((n.lower(), v))
    return out


class AppStream:
    """One in-process request to an ASGI app, with its response as it is sent.

    Made by :func:`stream_app`; not constructed directly.

    Attributes:
        scope: the ASGI HTTP scope the app was called with.
        start: the ``http.response.start`` message (``dict``), as sent.
        status: the response status code (``int``).
        headers: the response headers, ``(name, value)`` ``str`` pairs, names
            lower-cased, in the order sent.
        chunks: the ``body`` of every ``http.response.body`` message, in order
            (``list[bytes]``; empty bodies included).
        parser: the :class:`~sse_fast._parser.EventStreamParser` the body goes
            through (its ``last_event_id`` and ``retry`` are the stream's).
        ended: ``True`` once the app sent a body message with ``more_body``
            false (the response is complete).
        disconnected: ``True`` once ``http.disconnect`` was delivered.
    """

    def __init__(self, scope: dict, body: bytes, max_pending_events: int) -> None:
        self.scope = scope
        self.start: dict | None = None
        self.status: int | None = None
        self.headers: list[tuple[str, str]] = []
        self.chunks: list[bytes] = []
        self.parser = EventStreamParser()
        self.ended = False
        self.disconnected = False
        self._request_body = body
        self._request_sent = False
        self._pending: collections.deque[Event] = collections.deque()
        self._max_pending = max_pending_events
        self._changed = asyncio.Event()
        self._drained = asyncio.Event()
        self._disconnect = asyncio.Event()
        self._task: asyncio.Task | None = None

    # --- the ASGI side -------------------------------------------------------

    async def _receive(self) -> dict:
        if not self._request_sent:
            self._request_sent = True
            return {"type": "http.request", "body": self._request_body, "more_body": False}
        await self._disconnect.wait()
        return {"type": "http.disconnect"}

    async def _send(self, message: dict) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            if self.start is not None:
                raise RuntimeError(f"http.response.start sent twice: {message!r}")
            self.start = message
            self.status = int(message["status"])
            self.headers = [
                (bytes(n).decode("latin-1").lower(), bytes(v).decode("latin-1"))
                for n, v in message.get("headers", ())
            ]
            self._changed.set()
            return
        if kind != "http.response.body":
            raise RuntimeError(
                f"unexpected ASGI message type {kind!r} (this helper speaks HTTP only)"
            )
        if self.start is None:
            raise RuntimeError("http.response.body sent before http.response.start")
        if self.ended:
            raise RuntimeError("http.response.body sent after the response was complete")
        if self.disconnected:
            # the client is gone: a server drops what is sent (ASGI spec 2.3). Yield
            # anyway, so that an app that never awaits anything else cannot starve
            # the loop (and this helper's disconnect timeout) for ever
            await asyncio.sleep(0)
            return
        body = bytes(message.get("body", b""))
        self.chunks.append(body)
        if body:
            self._pending.extend(self.parser.feed(body))
        if not message.get("more_body", False):
            self.ended = True
            self.parser.close()
        self._changed.set()
        # let the test run between sends; a client that does not read makes the
        # app wait, like a full socket buffer does
        await asyncio.sleep(0)
        while len(self._pending) >= self._max_pending and not self._disconnect.is_set():
            self._drained.clear()
            await self._drained.wait()

    # --- the test side -------------------------------------------------------

    @property
    def body(self) -> bytes:
        """All body bytes received so far, joined."""
        return b"".join(self.chunks)

    @property
    def app_task(self) -> asyncio.Task:
        """The asyncio task running the app."""
        assert self._task is not None
        return self._task

    def header(self, name: str) -> str | None:
        """The first response header called ``name`` (any case), or ``None``."""
        name = name.lower()
        for n, v in self.headers:
            if n == name:
                return v
        return None

    def _finished(self) -> bool:
        return self.ended or self._task is None or self._task.done()

    def _raise_app_error(self) -> None:
        task = self._task
        if task is not None and task.done() and not task.cancelled():
            exc = task.exception()
            if exc is not None:
                raise exc

    async def _wait(self, timeout: float | None, what: str) -> None:
        self._changed.clear()
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            raise TimeoutError(f"no {what} within {timeout} s") from None

    async def next_event(self, timeout: float | None = 5.0) -> Event:
        """Return the next event the app sends.

        Args:
            timeout: seconds to wait for it (``None``: no limit).

        Raises:
            TimeoutError: none came within ``timeout`` seconds.
            StreamEnded: the response ended (or the app returned) first.
            Exception: the app's own exception, if it failed.
        """
        if timeout is not None and timeout < 0:
            raise ValueError(f"timeout must be >= 0 seconds or None, got {timeout!r}")
        while not self._pending:
            if self._finished():
                self._raise_app_error()
                raise StreamEnded(
                    f"the response ended after {self.parser.events_dispatched} events"
                )
            await self._wait(timeout, "event")
        self._drained.set()
        return self._pending.popleft()

    async def events(self, timeout: float | None = 5.0) -> AsyncIterator[Event]:
        """Yield events as the app sends them, until the response ends.

        Args:
            timeout: seconds to wait for each event (``None``: no limit).

        Raises:
            TimeoutError: no event within ``timeout`` seconds.
            Exception: the app's own exception, if it failed.
        """
        while True:
            try:
                event = await self.next_event(timeout)
            except StreamEnded:
                return
            yield event

    async def take(self, n: int, timeout: float | None = 5.0) -> list[Event]:
        """Return the next ``n`` events.

        Args:
            n: how many (``>= 0``).
            timeout: seconds to wait for each one.

        Raises:
            ValueError: ``n`` is negative.
            TimeoutError, StreamEnded: as :meth:`next_event`.
        """
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n!r}")
        return [await self.next_event(timeout) for _ in range(n)]

    async def wait_body(self, predicate: Any, timeout: float | None = 5.0) -> bytes:
        """Wait until ``predicate(body_so_far)`` is true (e.g. a ping arrived); return the body.

        Raises:
            TimeoutError: not within ``timeout`` seconds.
            StreamEnded: the response ended first with the predicate still false.
        """
        while not predicate(self.body):
            if self._finished():
                self._raise_app_error()
                raise StreamEnded("the response ended before the body matched")
            await self._wait(timeout, "matching body")
        return self.body

    async def disconnect(self, timeout: float = 5.0) -> None:
        """Send ``http.disconnect`` (the client goes away) and wait for the app to return.

        Args:
            timeout: seconds the app has to return after the disconnect.

        Raises:
            TimeoutError: the app did not return in time (it is then cancelled).
            Exception: the app's own exception, if it failed.
        """
        self.disconnected = True
        self._disconnect.set()
        self._drained.set()
        task = self.app_task
        if not task.done():
            done, _ = await asyncio.wait({task}, timeout=timeout)
            if not done:
                task.cancel()
                await asyncio.wait({task})
                raise TimeoutError(f"the app did not return within {timeout} s of http.disconnect")
        self._raise_app_error()


@asynccontextmanager
async def stream_app(
    app: Any,
    path: str = "/",
    *,
    method: str = "GET",
    headers: Mapping[str, str] | Iterable[tuple[Any, Any]] | None = None,
    body: bytes = b"",
    client: tuple[str, int] = ("127.0.0.1", 50000),
    server: tuple[str, int] = ("127.0.0.1", 80),
    scheme: str = "http",
    start_timeout: float = 5.0,
    disconnect_timeout: float = 5.0,
    max_pending_events: int = 10_000,
) -> AsyncIterator[AppStream]:
    """Call an ASGI app in process and read its response as it is streamed.

    Args:
        app: an ASGI 3 application (``async app(scope, receive, send)``).
        path: the request target as on the wire: the percent-encoded path,
            optionally followed by ``?query``.
        method: the HTTP method.
        headers: request headers (a mapping or ``(name, value)`` pairs, ``str``
            or ``bytes``); ``host`` defaults to ``testserver`` and ``accept`` to
            ``text/event-stream``.
        body: the request body, delivered in one ``http.request`` message.
        client, server: ``(host, port)`` put into the scope.
        scheme: ``"http"`` or ``"https"``.
        start_timeout: seconds to wait for ``http.response.start`` on entry.
        disconnect_timeout: seconds the app has to return after
            ``http.disconnect`` on exit.
        max_pending_events: events received but not yet taken by the test
            after which the app's ``send()`` waits (backpressure, ``>= 1``).

    Yields:
        An :class:`AppStream`, once the app has sent ``http.response.start``.

    Raises:
        ValueError: a bad argument (named in the message).
        TimeoutError: no response start within ``start_timeout`` seconds, or
            the app did not return within ``disconnect_timeout`` seconds of the
            disconnect (it is then cancelled).
        RuntimeError: the app returned without starting a response, or sent
            messages out of order.
        Exception: the app's own exception, whether it failed before or while
            streaming (raised on entry or on exit).
    """
    if not path.startswith("/"):
        raise ValueError(f"path must start with '/', got {path!r}")
    if scheme not in ("http", "https"):
        raise ValueError(f"scheme must be 'http' or 'https', got {scheme!r}")
    if max_pending_events < 1:
        raise ValueError(f"max_pending_events must be >= 1, got {max_pending_events!r}")
    for name, value in (
        ("start_timeout", start_timeout),
        ("disconnect_timeout", disconnect_timeout),
    ):
        if not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"{name} must be a number of seconds >= 0, got {value!r}")
    raw_path, _, query = path.partition("?")
    hdrs = _headers_list(headers)
    names = {n for n, _ in hdrs}
    if b"host" not in names:
        hdrs.insert(0, (b"host", b"testserver"))
    if b"accept" not in names:
        hdrs.append((b"accept", b"text/event-stream"))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method.upper(),
        "scheme": scheme,
        "path": unquote(raw_path),
        "raw_path": raw_path.encode("latin-1"),
        "query_string": query.encode("latin-1"),
        "root_path": "",
        "headers": hdrs,
        "client": client,
        "server": server,
        "state": {},
    }
    s = AppStream(scope, body, max_pending_events)
    task = asyncio.get_running_loop().create_task(app(scope, s._receive, s._send))
    s._task = task
    task.add_done_callback(lambda _t: s._changed.set())
    try:
        while s.start is None:
            if task.done():
                s._raise_app_error()
                raise RuntimeError("the app returned without sending http.response.start")
            await s._wait(start_timeout, "http.response.start")
    except BaseException:
        await _stop(s, disconnect_timeout)
        raise
    try:
        yield s
    except BaseException:
        await _stop(s, disconnect_timeout)
        raise
    await s.disconnect(disconnect_timeout)


async def _stop(s: AppStream, timeout: float) -> None:
    # clean-up while another exception propagates: that one wins
    try:
        await s.disconnect(timeout)
    except Exception:
        pass
