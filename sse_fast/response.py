"""``EventSourceResponse``: a Starlette response that streams an event stream.

Drop-in for ``sse_starlette.sse.EventSourceResponse`` (same arguments, same
bytes on the wire), built lean: per connection, on asyncio, at most three
tasks: the response's own, which runs the user's iterator with ``async for``
(the producer), one that awaits ``receive()`` for ``http.disconnect``, and the
writer task that sends batches, started the first time it is needed (plus
``data_sender_callable``'s when given). Pings and send deadlines are loop
timers; shutdown comes from one registry per event loop (``_shutdown``). Under anyio's trio backend the
generic writer (``_writer_anyio``) serves the same contract.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Mapping
from typing import Any

import anyio
from starlette.background import BackgroundTask
from starlette.concurrency import iterate_in_threadpool
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from . import _encoder
from . import metrics as _metrics
from ._shutdown import AppStatus, registry_for, trio_registry
from ._writer import (
    DEFAULT_MAX_BUFFER_BYTES,
    STOP_DISCONNECT,
    STOP_SHUTDOWN,
    SendTimeoutError,
    StreamWriter,
    end_reason,
    send_within,
)
from ._writer_anyio import GenericStream
from .event import ServerSentEvent

__all__ = ["EventSourceResponse", "SendTimeoutError", "AppStatus"]

logger = logging.getLogger("sse_fast")

async def _agen() -> Any:
    yield None


_ASYNC_GEN = type(_agen())


def _build_raw_headers(headers: Mapping[str, str] | None, media_type: str | None, charset: str) -> list[tuple[bytes, bytes]]:
    """sse-starlette's header list, built directly (Starlette's ``init_headers`` rules).

    The caller's headers first (names lower-cased), then ``cache-control: no-store``
    unless given, ``connection: keep-alive`` and ``x-accel-buffering: no`` (replacing
    the caller's), then ``content-type`` unless given.
    """
    raw = [] if not headers else [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]

    def put(name: bytes, value: bytes, replace: bool) -> None:
        idx = [i for i, (k, _) in enumerate(raw) if k == name]
        if not idx:
            raw.append((name, value))
        elif replace:
            raw[idx[0]] = (name, value)
            for i in reversed(idx[1:]):
                del raw[i]

    put(b"cache-control", b"no-store", False)
    put(b"connection", b"keep-alive", True)
    put(b"x-accel-buffering", b"no", True)
    if media_type is not None and all(k != b"content-type" for k, _ in raw):
        if media_type.startswith("text/") and "charset=" not in media_type.lower():
            media_type += "; charset=" + charset
        raw.append((b"content-type", media_type.encode("latin-1")))
    return raw


def _check_seconds(name: str, value: Any, *, allow_none: bool, allow_zero: bool = True) -> None:
    """Check a duration argument; the messages keep sse-starlette's words ("NAME must be >= 0")."""
    if value is None:
        if allow_none:
            return
        raise TypeError(f"{name} must be int or float (seconds), got None")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be int or float (seconds), got {value!r}")
    if value != value or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'} (seconds), got {value!r}")


def _in_trio() -> bool:
    trio = sys.modules.get("trio")
    if trio is None:
        return False
    try:
        trio.lowlevel.current_trio_token()
    except RuntimeError:
        return False
    return True


def _denial_send(send: Send) -> Send:
    # On a websocket scope the response is sent as a denial response (ASGI
    # websocket "denial response" extension message names).
    async def wrapped(message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            message = {**message, "type": "websocket.http.response.start"}
        elif kind == "http.response.body":
            message = {**message, "type": "websocket.http.response.body"}
        await send(message)

    return wrapped


class EventSourceResponse(Response):
    """Stream ``content`` to the client as an event stream (``text/event-stream``).

    Args:
        content: an async iterable (async generator, anyio memory object
            receive stream, ...) or a sync iterable, which is iterated in a
            worker thread. Items: ``ServerSentEvent``, ``dict`` of event fields,
            ``str``/other objects (sent as ``data``), or preformatted ``bytes``.
        status_code: HTTP status.
        headers: extra headers; ``Cache-Control: no-store`` unless given,
            ``Connection: keep-alive`` (not on HTTP/2, where it is illegal),
            ``X-Accel-Buffering: no`` are added.
        media_type: ``text/event-stream`` (``; charset=utf-8`` is added).
        background: a task run after the response, as Starlette's.
        ping: seconds between pings (int or float); default 15; ``0`` disables.
        sep: line terminator: ``"\\r\\n"`` (default), ``"\\r"`` or ``"\\n"``.
        ping_message_factory: returns the ``ServerSentEvent`` sent as ping
            instead of the default comment ``": ping - <UTC time>"``.
        data_sender_callable: a coroutine function run beside the stream (push
            style, e.g. writing into the memory stream given as ``content``);
            cancelled when the stream ends.
        send_timeout: seconds a send of data or ping may take; on expiry the
            response ends with ``SendTimeoutError`` and the iterator is closed.
        client_close_handler_callable: awaited with the ``http.disconnect``
            message when the client goes away; the iterator is cancelled.
        shutdown_event: an ``anyio.Event``/``asyncio.Event`` set on server
            shutdown; the iterator then has ``shutdown_grace_period`` seconds to
            finish by itself before it is cancelled.
        shutdown_grace_period: seconds, >= 0.
        cleanup_timeout: seconds allowed for the iterator's ``aclose()`` after
            a failure; ``None`` waits without limit.
        max_buffer_bytes: (sse_fast) bytes of encoded events that may wait for
            a send; the producer waits beyond it. Default 65536.
        ping_when_idle: (sse_fast) ping only after ``ping`` seconds without any
            data sent, instead of sse-starlette's fixed cadence.
        metrics_route: (sse_fast) the ``route`` label of this stream's metrics
            when they are enabled (``sse_fast.metrics.enable_metrics``); ``None``
            gives ``""``. Name your routes here, never with paths or ids: each
            distinct value is a series of its own.

    Raises:
        TypeError: ``content`` is not iterable, or an argument has the wrong type.
        ValueError: ``sep`` is not a line terminator, or a number is out of range.
    """

    DEFAULT_PING_INTERVAL = 15
    DEFAULT_SEPARATOR = "\r\n"
    #: seconds allowed for the iterator's ``aclose()`` after a failure
    DEFAULT_CLEANUP_TIMEOUT = 30.0

    def __init__(
        self,
        content: AsyncIterable[Any] | Iterable[Any],
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        media_type: str = "text/event-stream",
        background: BackgroundTask | None = None,
        ping: int | float | None = None,
        sep: str | None = None,
        ping_message_factory: Callable[[], ServerSentEvent] | None = None,
        data_sender_callable: Callable[[], Awaitable[None]] | None = None,
        send_timeout: float | None = None,
        client_close_handler_callable: Callable[[Message], Awaitable[None]] | None = None,
        shutdown_event: Any = None,
        shutdown_grace_period: float = 0,
        cleanup_timeout: float | None = DEFAULT_CLEANUP_TIMEOUT,
        *,
        max_buffer_bytes: int = DEFAULT_MAX_BUFFER_BYTES,
        ping_when_idle: bool = False,
        metrics_route: str | None = None,
    ) -> None:
        if sep is None:
            sep = self.DEFAULT_SEPARATOR
        elif sep not in _encoder.SEPARATORS:
            raise ValueError(f"sep must be one of '\\r\\n', '\\r', '\\n', got {sep!r}")
        if isinstance(content, (str, bytes, bytearray, memoryview)):
            raise TypeError(f"content must be an iterable of events, got {type(content).__name__} {content!r:.40}")
        if hasattr(content, "__aiter__"):
            self.body_iterator: Any = content
        elif hasattr(content, "__iter__"):
            self.body_iterator = iterate_in_threadpool(content)  # type: ignore[arg-type]
        else:
            raise TypeError(f"content must be an async iterable or an iterable, got {content!r}")
        if isinstance(status_code, bool) or not isinstance(status_code, int):
            raise TypeError(f"status_code must be an int, got {status_code!r}")
        # the defaults skip the checks: a response is built per stream (issue 16: CPU to open)
        if send_timeout is not None:
            _check_seconds("send_timeout", send_timeout, allow_none=True, allow_zero=False)
        if shutdown_grace_period != 0 or type(shutdown_grace_period) is not int:
            _check_seconds("shutdown_grace_period", shutdown_grace_period, allow_none=False)
        if cleanup_timeout != self.DEFAULT_CLEANUP_TIMEOUT or type(cleanup_timeout) is not float:
            _check_seconds("cleanup_timeout", cleanup_timeout, allow_none=True)
        if ping_message_factory is not None or data_sender_callable is not None \
                or client_close_handler_callable is not None:
            for name, fn in (
                ("ping_message_factory", ping_message_factory),
                ("data_sender_callable", data_sender_callable),
                ("client_close_handler_callable", client_close_handler_callable),
            ):
                if fn is not None and not callable(fn):
                    raise TypeError(f"{name} must be callable, got {fn!r}")
        if shutdown_event is not None and not (hasattr(shutdown_event, "set") and hasattr(shutdown_event, "is_set")):
            raise TypeError(f"shutdown_event must be an anyio.Event or asyncio.Event, got {shutdown_event!r}")
        if isinstance(max_buffer_bytes, bool) or not isinstance(max_buffer_bytes, int):
            raise TypeError(f"max_buffer_bytes must be an int (bytes), got {max_buffer_bytes!r}")
        if max_buffer_bytes < 1:
            raise ValueError(f"max_buffer_bytes must be >= 1 byte, got {max_buffer_bytes!r}")
        if metrics_route is None:
            metrics_route = ""
        elif not isinstance(metrics_route, str):
            raise TypeError(f"metrics_route must be a str or None (the route label of the metrics), "
                            f"got {metrics_route!r}")

        self.sep = sep
        self.status_code = status_code
        self.media_type = media_type
        self.background = background
        self.data_sender_callable = data_sender_callable
        self.send_timeout = send_timeout
        self.ping_message_factory = ping_message_factory
        self.client_close_handler_callable = client_close_handler_callable
        self.max_buffer_bytes = max_buffer_bytes
        self.ping_when_idle = bool(ping_when_idle)
        #: the ``route`` label of this stream's metrics
        self.metrics_route = metrics_route
        self._shutdown_event = shutdown_event
        self._shutdown_grace_period = shutdown_grace_period
        self._cleanup_timeout = cleanup_timeout
        self.ping_interval = self.DEFAULT_PING_INTERVAL if ping is None else ping
        #: ``True`` while the response is streaming
        self.active = False

        if headers is None and media_type == "text/event-stream":
            self.raw_headers = list(_DEFAULT_RAW_HEADERS)
        else:
            self.raw_headers = _build_raw_headers(headers, media_type, self.charset)

    @property
    def ping_interval(self) -> int | float:
        """Seconds between pings; ``0`` disables them."""
        return self._ping_interval

    @ping_interval.setter
    def ping_interval(self, value: int | float) -> None:
        """Set the ping interval in seconds.

        Raises:
            TypeError: not an int or float. ValueError: negative or NaN.
        """
        _check_seconds("ping interval", value, allow_none=False)
        self._ping_interval = value

    def enable_compression(self, force: bool = False) -> None:
        """Not supported: compression buffers events and breaks streaming.

        Raises:
            NotImplementedError: always.
        """
        raise NotImplementedError("Compression is not supported for event streams")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve the event stream on one ASGI connection; return when it has ended.

        ``HEAD`` gets the headers only. On a websocket scope the stream goes out
        as a denial response. ``background`` runs after the stream ended by itself
        or by a disconnect.

        Raises:
            SendTimeoutError: a send took longer than ``send_timeout`` seconds.
            Whatever the iterator, ``send``, the ping factory or the data sender
            raises (the events produced before an iterator error are sent first).
            CancelledError: the server cancelled the request's task.
        """
        if scope["type"] == "websocket":
            send = _denial_send(send)
        headers = self.raw_headers
        if scope.get("http_version") == "2":
            # HTTP/2 forbids connection-specific headers (RFC 9113 8.2.2); built here, not in
            # __init__, so that headers set on the response after it was made are kept
            headers = [(k, v) for k, v in headers if k != b"connection"]
        start = {"type": "http.response.start", "status": self.status_code, "headers": headers}
        method = scope.get("method")
        if scope["type"] == "http" and isinstance(method, str) and method.upper() == "HEAD":
            await self._head(send, start)
            return
        iterator = self.body_iterator.__aiter__()
        # metrics: read once per stream; off (None), nothing below counts anything
        m = _metrics.ACTIVE
        stats = None if m is None else m.route(self.metrics_route)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no asyncio loop: anyio's trio backend
            await self._call_generic(receive, send, start, iterator, stats)
            if self.background is not None:
                await self.background()
            return
        # asyncio: the whole stream in this coroutine, not one it awaits: each level of coroutine
        # between the server and the producer costs a pass on every suspension and resumption of
        # an awaiting producer, and a frame kept per open stream (issue 16)
        writer = StreamWriter(
            send,
            loop,
            sep=self.sep,
            send_timeout=self.send_timeout,
            ping=self._ping_interval,
            ping_factory=self.ping_message_factory,
            ping_when_idle=self.ping_when_idle,
            max_buffer_bytes=self.max_buffer_bytes,
            stats=stats,
            shutdown_event=self._shutdown_event,
            shutdown_grace_period=self._shutdown_grace_period,
        )
        if stats is not None:
            stats.opened()
        failure: BaseException | None = None
        try:
            attach = getattr(self.body_iterator, "_sse_fast_attach", None)
            if attach is not None:  # a broadcast subscription delivers straight to this writer
                attach(writer)
            registry = registry_for(loop)
            registry.add(writer)
            # the listener and the data sender start before the start message is
            # sent: a data sender may be what lets a pending start complete
            listener = loop.create_task(self._listen_for_disconnect(receive, writer), context=writer.context)
            sender = None
            if self.data_sender_callable is not None:
                sender = loop.create_task(self._run_data_sender(writer))
            self.active = True
            try:
                if registry.exiting:
                    writer.on_shutdown()
                try:
                    await writer.run(start, iterator)
                finally:
                    # runs the generator's finally when it is suspended at a yield;
                    # also closes a memory object stream given as content
                    await self._close_iterator(iterator)
            finally:
                self.active = False
                writer.close()
                registry.discard(writer)
                if sender is not None and not sender.done():
                    sender.cancel()
                await self._finish_listener(listener, writer)
                if sender is not None:
                    await asyncio.wait((sender,))
                w = writer.writer_task
                if w is not None and not w.done():
                    await asyncio.wait((w,))
            if sender is not None and not sender.cancelled():
                exc = sender.exception()
                if exc is not None:
                    raise exc
        except BaseException as exc:
            failure = exc
            raise
        finally:
            if stats is not None:
                writer.flush_stats()
                stats.ended(end_reason(writer.first_stop, failure))
        if self.background is not None:
            await self.background()

    async def _head(self, send: Send, start: Message) -> None:
        # headers only, the iterator is never started (sse-starlette #218);
        # send_timeout bounds both sends
        await self._send_within_timeout(send, start)
        await self._send_within_timeout(send, {"type": "http.response.body", "body": b"", "more_body": False})
        if self.background is not None:
            await self.background()

    async def _send_within_timeout(self, send: Send, message: Message) -> None:
        await send_within(send, message, self.send_timeout)

    async def _call_generic(self, receive: Receive, send: Send, start: Message, iterator: Any,
                            stats: Any) -> None:
        stream = GenericStream(
            send,
            sep=self.sep,
            send_timeout=self.send_timeout,
            ping=self._ping_interval,
            ping_factory=self.ping_message_factory,
            max_buffer_bytes=self.max_buffer_bytes,
            close_handler=self.client_close_handler_callable,
            data_sender=self.data_sender_callable,
            shutdown_event=self._shutdown_event,
            shutdown_grace_period=self._shutdown_grace_period,
            stats=stats,
        )
        use_sep = getattr(self.body_iterator, "_sse_fast_use_sep", None)
        if use_sep is not None:  # a broadcast subscription encodes with this response's separator
            use_sep(self.sep)
        registry = trio_registry() if _in_trio() else None
        if registry is not None:
            registry.add(stream)
            if registry.exiting:
                stream.on_shutdown()
        self.active = True
        if stats is not None:
            stats.opened()
        failure: BaseException | None = None
        try:
            await stream.run(receive, iterator, start)
        except BaseException as exc:
            failure = exc
            raise
        finally:
            self.active = False
            if registry is not None:
                registry.discard(stream)
            try:
                with anyio.CancelScope(shield=True):
                    await self._close_iterator(iterator)
            finally:
                if stats is not None:
                    stats.ended(end_reason(stream.first_stop, failure))

    async def _listen_for_disconnect(self, receive: Receive, writer: StreamWriter) -> None:
        while True:
            message = await receive()
            if message["type"] in ("http.disconnect", "websocket.disconnect"):
                break
        writer.disconnect_seen = True
        writer.stop(STOP_DISCONNECT)
        if self.client_close_handler_callable is not None:
            await self.client_close_handler_callable(message)

    async def _finish_listener(self, listener: asyncio.Task[None], writer: StreamWriter) -> None:
        if not listener.done() and not writer.disconnect_seen:
            # still waiting in receive(): not needed any more. Once it has seen the
            # disconnect, it is running client_close_handler_callable: let it finish
            listener.cancel()
        try:
            await listener
        except asyncio.CancelledError:
            if not listener.cancelled():
                raise
            # our own cancel of the listener; an outer cancel of this task is
            # re-delivered by asyncio at the next await
            task = asyncio.current_task()
            if task is not None and getattr(task, "cancelling", lambda: 0)():
                raise

    async def _run_data_sender(self, writer: StreamWriter) -> None:
        assert self.data_sender_callable is not None
        try:
            await self.data_sender_callable()
        except BaseException:
            writer.stop(STOP_DISCONNECT if writer.stop_reason == STOP_DISCONNECT else STOP_SHUTDOWN)
            raise

    async def _close_iterator(self, iterator: Any) -> None:
        """``aclose()`` the iterator within ``cleanup_timeout`` seconds; failures are logged, not raised."""
        if type(iterator) is _ASYNC_GEN and iterator.ag_frame is None:
            return  # finished already: nothing to close
        aclose = getattr(iterator, "aclose", None)
        if aclose is None:
            return
        try:
            if self._cleanup_timeout is None:
                await aclose()
            else:
                with anyio.fail_after(self._cleanup_timeout):
                    await aclose()
        except TimeoutError:
            logger.warning("content iterator did not close within cleanup_timeout=%s s", self._cleanup_timeout)
        except RuntimeError as exc:
            # "asynchronous generator is already running": it is being closed elsewhere
            logger.debug("closing the content iterator failed: %s", exc)
        except Exception:
            logger.exception("closing the content iterator failed")


_DEFAULT_RAW_HEADERS = tuple(_build_raw_headers(None, "text/event-stream", Response.charset))
