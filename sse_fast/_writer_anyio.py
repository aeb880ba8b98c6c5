"""The generic writer: any async library anyio runs on (trio; asyncio when asked).

The asyncio writer (``_writer``) leans on asyncio's loop timers and
``Task.cancel()``/``uncancel()``; under anyio's trio backend there is no
asyncio loop, so this path uses anyio's primitives instead: a task group with
the producer in the response's task, a writer task, a ping task and the
disconnect listener; ``anyio.fail_after`` bounds each send. Same bytes, same
batching rule (items ready together leave in one send), same stop semantics;
not tuned for speed.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from . import _encoder
from ._writer import (
    SHUTDOWN_FLUSH_SECONDS,
    STOP_DISCONNECT,
    STOP_ERROR,
    STOP_SHUTDOWN,
    default_ping,
    send_within,
    timeout_error,
)

__all__ = ["GenericStream"]


def _on_trio() -> bool:
    # anyio runs on asyncio or trio: no asyncio loop running means trio
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return "trio" in sys.modules
    return False


class GenericStream:
    """One event stream written with anyio primitives (see the module docstring).

    Args:
        send: the ASGI ``send`` callable.
        sep: line terminator for items without their own.
        send_timeout: seconds a send may take, or ``None``.
        ping: seconds between pings; ``0`` for none.
        ping_factory: returns the ``ServerSentEvent`` sent as a ping, or ``None``.
        max_buffer_bytes: bytes one stream may hold (buffered plus in flight).
        close_handler: awaited with the ``http.disconnect`` message, or ``None``.
        data_sender: a coroutine function run beside the stream, or ``None``.
        stats: the route's ``metrics.StreamCounters`` to count sends into, or
            ``None`` (metrics off).
    """

    def __init__(
        self,
        send: Callable[[dict[str, Any]], Awaitable[None]],
        *,
        sep: str,
        send_timeout: float | None,
        ping: float,
        ping_factory: Callable[[], Any] | None,
        max_buffer_bytes: int,
        close_handler: Callable[[dict[str, Any]], Awaitable[None]] | None,
        data_sender: Callable[[], Awaitable[None]] | None,
        shutdown_event: Any = None,
        shutdown_grace_period: float = 0,
        stats: Any = None,
    ) -> None:
        self.send = send
        self.sep = sep
        self.send_timeout = send_timeout
        self.ping = ping
        self.ping_factory = ping_factory
        self.high = max_buffer_bytes
        self.close_handler = close_handler
        self.data_sender = data_sender
        self.buffer = _encoder.EventBuffer(sep)
        self.inflight = 0
        self.closing = False
        #: ``None`` while streaming, else why it stopped (``_writer.STOP_*``)
        self.stop_reason: str | None = None
        #: the first stop request received before the body ended (see ``_writer.end_reason``)
        self.first_stop: str | None = None
        self.finished = False
        self.stats = stats
        self.error: BaseException | None = None
        self.started = False
        self._data_ready = anyio.Event()
        self._room = anyio.Event()
        self._writer_done = anyio.Event()
        self._writer_scope = anyio.CancelScope()
        #: ``anyio.current_time()`` by which the body send in progress must complete, else ``None``
        self._send_deadline: float | None = None
        self._scope: anyio.CancelScope | None = None
        # the shielded scope of a final send in progress: a shutdown gives it SHUTDOWN_FLUSH_SECONDS
        self._final: anyio.CancelScope | None = None
        self._tg: Any = None
        self.shutdown_event = shutdown_event
        self.grace = shutdown_grace_period
        self._grace_pending = False

    def on_shutdown(self) -> None:
        """The server is exiting: set ``shutdown_event`` and stop after the grace period, or stop now."""
        if self.shutdown_event is not None:
            self.shutdown_event.set()
            if self.grace > 0:
                if self._tg is None:
                    self._grace_pending = True  # started with the task group
                else:
                    self._tg.start_soon(self._stop_after_grace)
                return
        self.stop(STOP_SHUTDOWN)

    async def _stop_after_grace(self) -> None:
        await anyio.sleep(self.grace)
        self.stop(STOP_SHUTDOWN)

    def stop(self, reason: str) -> None:
        """End the stream: the producer and every helper task are cancelled."""
        if self.stop_reason is None or reason == STOP_DISCONNECT:
            self.stop_reason = reason
        if self.first_stop is None and not self.finished:
            self.first_stop = reason
        if self._scope is not None:
            self._scope.cancel()
        self._writer_scope.cancel()
        if reason == STOP_SHUTDOWN and self._final is not None:
            self._bound_final(self._final)

    def _bound_final(self, scope: anyio.CancelScope) -> None:
        # a client that does not take the last bytes must not keep the server from exiting
        # (as the asyncio writer's SHUTDOWN_FLUSH_SECONDS; send_timeout bounds it too when shorter)
        limit = SHUTDOWN_FLUSH_SECONDS if self.send_timeout is None else min(self.send_timeout, SHUTDOWN_FLUSH_SECONDS)
        scope.deadline = min(scope.deadline, anyio.current_time() + limit)

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        self.stop(STOP_ERROR)

    def _notify(self) -> None:
        self._data_ready.set()

    async def run(self, receive: Callable[[], Awaitable[dict[str, Any]]], iterator: Any,
                  start: dict[str, Any]) -> None:
        """Send ``start``, stream ``iterator``, end the body; return when done or stopped.

        Raises:
            SendTimeoutError: a send did not complete within ``send_timeout``.
            Whatever the iterator, the encoder, ``send``, the ping factory or
            the data sender raises, as itself (never an ``ExceptionGroup``).
        """
        failure: BaseException | None = None
        try:
            async with anyio.create_task_group() as tg:
                self._scope = tg.cancel_scope
                self._tg = tg
                tg.start_soon(self._listen, receive)
                if self.data_sender is not None:
                    tg.start_soon(self._run_data_sender)
                with anyio.CancelScope(shield=self.stop_reason == STOP_SHUTDOWN):
                    await self.send(start)
                self.started = True
                if self._grace_pending:
                    tg.start_soon(self._stop_after_grace)
                if self.stop_reason is not None:
                    tg.cancel_scope.cancel()  # stopped before the start went out
                self._start_writer(tg)
                if self.send_timeout is not None:
                    tg.start_soon(self._watch_sends)
                if self.ping > 0:
                    tg.start_soon(self._ping_loop)
                try:
                    await self._produce(iterator)
                except Exception as exc:
                    failure = exc  # raised after what came before it is sent
                self.closing = True
                self._notify()
                await self._writer_done.wait()
                if self.error is None and failure is None:
                    # shielded (send_timeout still bounds it): hypercorn's trio worker
                    # reports http.disconnect while this very send is in progress, and
                    # cutting it short would leave the connection to its graceful timeout
                    with anyio.CancelScope(shield=True) as final:
                        self._final = final
                        if self.stop_reason == STOP_SHUTDOWN:
                            self._bound_final(final)
                        await self._send_checked({"type": "http.response.body", "body": b"", "more_body": False})
                    self._final = None
                    if final.cancelled_caught:
                        self.stop(STOP_DISCONNECT)  # cut by shutdown: the client did not take the end
                    else:
                        self.finished = True
                tg.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # anyio wraps task failures; the caller gets the exception itself
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise
        if self.stop_reason == STOP_SHUTDOWN and self.started and self.error is None and failure is None:
            # the producer was cancelled by shutdown: send what it made, then end the body
            with anyio.CancelScope(shield=True) as final:
                self._bound_final(final)
                # the writer runs outside the task group (``_start_writer``): its send must end first
                await self._writer_done.wait()
                buf = self.buffer
                if len(buf):
                    events, pings = buf.count, buf.pings
                    body = buf.take()
                    await self._send_checked({"type": "http.response.body", "body": body, "more_body": True})
                    if self.stats is not None:
                        self.stats.sent(len(body), events, pings)
                await self._send_checked({"type": "http.response.body", "body": b"", "more_body": False})
                self.finished = True
            if final.cancelled_caught:
                self.stop(STOP_DISCONNECT)  # cut: the client did not take what was left
        if self.error is not None:
            raise self.error
        if failure is not None:
            raise failure

    async def _produce(self, iterator: Any) -> None:
        buf = self.buffer
        async for item in iterator:
            buf.append(item)
            self._notify()
            while len(buf) + self.inflight >= self.high:
                self._room = anyio.Event()
                await self._room.wait()

    def _start_writer(self, tg: Any) -> None:
        # Under trio the writer is a system task, not a child of the response's task group:
        # hypercorn's trio worker shields its socket writes, so a send to a client that stopped
        # reading cannot be cancelled, and a child stuck in it would keep the response (and the
        # generator's finally) waiting forever. Outside the group, the response can end with
        # SendTimeoutError (``_watch_sends``); the server then closes the connection, which ends
        # the stuck send, and the writer task with it.
        if _on_trio():
            import trio

            trio.lowlevel.spawn_system_task(self._writer_task, context=contextvars.copy_context())
        else:
            tg.start_soon(self._writer_task)

    async def _writer_task(self) -> None:
        try:
            with self._writer_scope:
                await self._write_loop()
        except BaseException as exc:  # noqa: BLE001 - a system task must not raise (it would crash the run)
            if self.error is None and not isinstance(exc, anyio.get_cancelled_exc_class()):
                self._fail(exc)
        finally:
            self._writer_done.set()

    async def _watch_sends(self) -> None:
        """End the stream when a body send outlives ``send_timeout``, even one that cannot be cancelled."""
        timeout = self.send_timeout
        assert timeout is not None
        while True:
            deadline = self._send_deadline
            if deadline is None:
                await anyio.sleep(timeout)
                continue
            await anyio.sleep_until(deadline)
            if self._send_deadline == deadline and not self._writer_done.is_set():
                self._fail(timeout_error(timeout))
                return

    async def _write_loop(self) -> None:
        buf = self.buffer
        stats = self.stats
        try:
            while True:
                if not len(buf):
                    if self.closing:
                        return
                    self._data_ready = anyio.Event()
                    await self._data_ready.wait()
                    continue
                events, pings = buf.count, buf.pings
                body = buf.take()
                self.inflight = len(body)
                if self.send_timeout is not None:
                    self._send_deadline = anyio.current_time() + self.send_timeout
                try:
                    await self._send_checked({"type": "http.response.body", "body": body, "more_body": True})
                except OSError as exc:
                    if isinstance(exc, TimeoutError):
                        raise
                    self.stop(STOP_DISCONNECT)  # ASGI 2.4: the client is gone
                    return
                finally:
                    self._send_deadline = None
                if stats is not None:
                    stats.sent(len(body), events, pings)
                self.inflight = 0
                self._room.set()
        except Exception as exc:
            self._fail(exc)

    async def _send_checked(self, message: dict[str, Any]) -> None:
        await send_within(self.send, message, self.send_timeout)

    async def _ping_loop(self) -> None:
        while True:
            await anyio.sleep(self.ping)
            try:
                factory = self.ping_factory
                data = default_ping(self.sep) if factory is None else _encoder.encode_item(factory(), self.sep)
            except Exception as exc:
                self._fail(exc)
                return
            self.buffer.append_ping(data)
            self._notify()

    async def _listen(self, receive: Callable[[], Awaitable[dict[str, Any]]]) -> None:
        while True:
            message = await receive()
            if message["type"] in ("http.disconnect", "websocket.disconnect"):
                break
        self.stop(STOP_DISCONNECT)
        if self.close_handler is not None:
            with anyio.CancelScope(shield=True):
                await self.close_handler(message)

    async def _run_data_sender(self) -> None:
        assert self.data_sender is not None
        try:
            await self.data_sender()
        except Exception as exc:
            self._fail(exc)
