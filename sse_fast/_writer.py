"""The batching writer: producer -> batch buffer -> ASGI ``send``, in one task.

One ``StreamWriter`` serves one response. It drives the content iterator's
``__anext__()`` coroutines by hand (``_encoder.pump``):

- items the producer has ready are encoded straight into the batch buffer,
  and go out together as one ``http.response.body`` message;
- when the producer would suspend, what is buffered is sent first, so a slow
  producer's event leaves at once (no timer delay, no Nagle);
- at ``max_buffer_bytes`` the producer is not asked for more until the send
  returns: a client that stops reading stops the producer (backpressure), and
  memory stays bounded;
- while the producer waits, the writer waits on one future of its own, woken by
  the producer's future, the pending send's future, the ping timer, the send
  deadline, a disconnect or a shutdown. So pings, deadlines, disconnects and
  shutdown need no task, and no cancel scope, of their own.

A send deadline (``send_timeout``) is a loop timer armed only while a send is
actually pending (a send that completes at once arms nothing), and cancelled
when it returns; on expiry the send is abandoned and ``SendTimeoutError`` raised.

A cancellation of the task from outside (a producer's own ``asyncio.timeout``
or anyio deadline, which cancel the task the producer runs in, or the server)
is delivered to the producer when it is suspended, exactly where a plain
``await`` would have received it; if the producer handles it, streaming goes on.
"""

from __future__ import annotations

import asyncio
import types
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import Any

from . import _encoder

__all__ = ["SendTimeoutError", "StreamWriter", "DEFAULT_MAX_BUFFER_BYTES"]

#: default bound, in bytes, on encoded events waiting to be sent
DEFAULT_MAX_BUFFER_BYTES = 64 * 1024

_FULL = _encoder.PUMP_FULL
_SUSPENDED = _encoder.PUMP_SUSPENDED
_END = _encoder.PUMP_END

# why a stream stopped early
STOP_DISCONNECT = "disconnect"
STOP_SHUTDOWN = "shutdown"


class SendTimeoutError(TimeoutError):
    """A send of data or a ping did not complete within ``send_timeout`` seconds."""


class _StopStream(Exception):
    """Internal: the stream was stopped (disconnect or shutdown)."""


def _default_ping(sep: str) -> bytes:
    # sse-starlette's default ping: a comment with the current UTC time
    return _encoder.encode_fields(comment=f"ping - {datetime.now(timezone.utc)}", sep=sep)


def _take_over(awaited: Any) -> Any:
    # The producer yielded this future to "the task"; we are that task now, and a
    # task clears the flag it finds set (asyncio's Task.__step does the same).
    if awaited is not None:
        try:
            awaited._asyncio_future_blocking = False
        except AttributeError:
            pass
    return awaited


class StreamWriter:
    """Writes one event stream's body: batching, pings, deadlines, stop requests.

    Args:
        send: the ASGI ``send`` callable.
        sep: line terminator for items without their own.
        send_timeout: seconds a pending send may take, or ``None``.
        ping: seconds between pings; ``0`` for none.
        ping_factory: returns the ``ServerSentEvent`` to send as a ping, or
            ``None`` for the default comment.
        ping_when_idle: ping only after ``ping`` seconds without any send.
        max_buffer_bytes: bytes of encoded events that may wait for a send.
    """

    __slots__ = (
        "send",
        "sep",
        "send_timeout",
        "ping",
        "ping_factory",
        "ping_when_idle",
        "max_buffer_bytes",
        "buffer",
        "loop",
        "_wake",
        "_ping_handle",
        "_ping_due",
        "_next_ping",
        "_last_send",
        "_deadline_hit",
        "stop_reason",
        "sent_bytes",
        "sends",
        "_pending_send",
        "disconnect_seen",
    )

    def __init__(
        self,
        send: Callable[[dict[str, Any]], Awaitable[None]],
        *,
        sep: str = "\r\n",
        send_timeout: float | None = None,
        ping: float = 0,
        ping_factory: Callable[[], Any] | None = None,
        ping_when_idle: bool = False,
        max_buffer_bytes: int = DEFAULT_MAX_BUFFER_BYTES,
    ) -> None:
        self.send = send
        self.sep = sep
        self.send_timeout = send_timeout
        self.ping = ping
        self.ping_factory = ping_factory
        self.ping_when_idle = ping_when_idle
        self.max_buffer_bytes = max_buffer_bytes
        self.buffer = _encoder.EventBuffer(sep)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Future[None] | None = None
        self._ping_handle: asyncio.TimerHandle | None = None
        self._ping_due = False
        self._next_ping = 0.0
        self._last_send = 0.0
        self._deadline_hit = False
        #: ``None`` while streaming; ``STOP_DISCONNECT`` or ``STOP_SHUTDOWN`` once asked to stop
        self.stop_reason: str | None = None
        #: body bytes and ``http.response.body`` messages sent so far
        self.sent_bytes = 0
        self.sends = 0
        self._pending_send: tuple[Any, Any] | None = None
        #: the disconnect listener received ``http.disconnect`` (its handler may be running)
        self.disconnect_seen = False

    # -- wake-ups, all called from the loop (timers, other tasks) --------------

    def _wakeup(self, _fut: Any = None) -> None:
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    def stop(self, reason: str) -> None:
        """Ask the stream to end (loop thread only); the producer is cancelled."""
        if self.stop_reason is None:
            self.stop_reason = reason
        self._wakeup()

    def _on_ping_timer(self) -> None:
        loop = self.loop
        assert loop is not None
        if self.ping_when_idle and self._last_send + self.ping > loop.time():
            # data went out meanwhile: the idle period starts at the last send
            self._next_ping = self._last_send + self.ping
        else:
            self._ping_due = True
            self._next_ping += self.ping
            self._wakeup()
        self._ping_handle = loop.call_at(self._next_ping, self._on_ping_timer)

    def _on_deadline(self) -> None:
        self._deadline_hit = True
        self._wakeup()

    def _ping_bytes(self) -> bytes:
        factory = self.ping_factory
        if factory is None:
            return _default_ping(self.sep)
        return _encoder.encode_item(factory(), self.sep)

    # -- the loop ----------------------------------------------------------------

    def start_pings(self, loop: asyncio.AbstractEventLoop) -> None:
        """Arm the ping timer (fixed cadence from now)."""
        self.loop = loop
        self._last_send = loop.time()
        if self.ping > 0:
            self._next_ping = loop.time() + self.ping
            self._ping_handle = loop.call_at(self._next_ping, self._on_ping_timer)

    def close(self) -> None:
        """Disarm the timers."""
        if self._ping_handle is not None:
            self._ping_handle.cancel()
            self._ping_handle = None

    @types.coroutine
    def _block(self, *futures: Any) -> Any:
        """Wait until one of ``futures`` is done or ``_wakeup`` is called."""
        loop = self.loop
        wake = loop.create_future()  # type: ignore[union-attr]
        wake._asyncio_future_blocking = True
        self._wake = wake
        cb = self._wakeup
        for fut in futures:
            fut.add_done_callback(cb)
        try:
            yield wake
        finally:
            self._wake = None
            for fut in futures:
                if not fut.done():
                    fut.remove_done_callback(cb)

    @types.coroutine
    def run(self, iterator: Any) -> Any:
        """Stream ``iterator`` to the client; return when it ends or is stopped.

        Returns:
            ``None``. After a stop request, ``stop_reason`` says why.

        Raises:
            SendTimeoutError: a send did not complete within ``send_timeout``.
            Whatever the iterator, the encoder or ``send`` raises.
        """
        anext = iterator.__anext__
        buf = self.buffer
        high = self.max_buffer_bytes
        pump = _encoder.pump
        send = self.send
        step: Any = None  # the producer's suspended __anext__() coroutine
        awaited: Any = None  # what it waits on
        ready = False  # ``step`` may be resumed
        sending: Any = None  # a pending send() coroutine
        send_waits: Any = None  # what it waits on
        deadline: asyncio.TimerHandle | None = None
        ended = False
        failure: Exception | None = None  # the iterator's error, raised once what came before is sent
        loop = self.loop
        assert loop is not None
        try:
            while True:
                if self.stop_reason is not None:
                    raise _StopStream
                # 1. pull what the producer has ready, while there is room
                if not ended and (step is None or ready) and len(buf) < high:
                    try:
                        state, step, awaited = pump(anext, buf, high, step if ready else None)
                    except Exception as exc:
                        # send the events produced before the error, then raise it
                        failure = exc
                        state, step, awaited = _END, None, None
                    ready = False
                    if state == _END:
                        ended = True
                    elif state == _SUSPENDED:
                        awaited = _take_over(awaited)
                        if awaited is None:
                            ready = True  # a bare yield: resume after one loop turn
                if self._ping_due:
                    self._ping_due = False
                    buf.append_bytes(self._ping_bytes())
                # 2. send what is buffered, unless the producer is still going
                if sending is None and len(buf) and (step is not None or ended or len(buf) >= high):
                    body = buf.take()
                    self.sent_bytes += len(body)
                    self.sends += 1
                    sending = send({"type": "http.response.body", "body": body, "more_body": True})
                    try:
                        send_waits = sending.send(None)
                    except StopIteration:  # completed at once: no deadline needed
                        sending = None
                        self._last_send = loop.time()
                        if not (step is not None or ended):
                            # buffer was full with the producer still ready: let the
                            # loop run (other streams, disconnect, timers) once
                            yield None
                        continue
                    send_waits = _take_over(send_waits)
                    if self.send_timeout is not None:
                        self._deadline_hit = False
                        deadline = loop.call_later(self.send_timeout, self._on_deadline)
                if ended and sending is None and not len(buf):
                    if failure is not None:
                        raise failure
                    return None
                # 3. wait for the producer, the send, or a wake-up
                if (ready and len(buf) < high) or (sending is not None and send_waits is None):
                    # a bare yield (asyncio.sleep(0)) is pending: give the loop one turn
                    try:
                        yield None
                    except BaseException as exc:
                        step, awaited, ready = self._deliver(exc, step, sending)
                        continue
                else:
                    futs = []
                    if step is not None and not ready:
                        futs.append(awaited)
                    if sending is not None:
                        futs.append(send_waits)
                    if not futs:
                        continue
                    try:
                        yield from self._block(*futs)
                    except BaseException as exc:
                        step, awaited, ready = self._deliver(exc, step, sending)
                        continue
                if self._deadline_hit:
                    raise self._timeout_error()
                # 4. resume the pending send if its future is done
                if sending is not None and (send_waits is None or send_waits.done()):
                    try:
                        send_waits = _take_over(sending.send(None))
                    except StopIteration:
                        sending = None
                        send_waits = None
                        self._last_send = loop.time()
                        if deadline is not None:
                            deadline.cancel()
                            deadline = None
                if step is not None and not ready and awaited is not None and awaited.done():
                    ready = True
        except BaseException as exc:
            if sending is not None:
                if isinstance(exc, _StopStream) and self.stop_reason == STOP_SHUTDOWN:
                    # the client is still there: the response completes this send
                    # (then what is buffered) before ending the body
                    self._pending_send = (sending, send_waits)
                else:
                    _abandon(sending)
            if step is not None:
                # the producer is suspended: cancel it where it waits, as the
                # task's cancellation would have, and let its finally blocks run
                yield from _cancel_step(step, awaited)
            raise
        finally:
            if deadline is not None:
                deadline.cancel()

    def _deliver(self, exc: BaseException, step: Any, sending: Any) -> tuple[Any, Any, bool]:
        """Deliver a cancellation of the task to the suspended producer.

        Returns the producer's new ``(step, awaited, ready)`` if it handled it;
        re-raises otherwise.
        """
        if step is None or not isinstance(exc, asyncio.CancelledError):
            raise exc
        try:
            awaited = step.throw(exc)
        except StopIteration as stop:
            self.buffer.append(stop.value)
            return None, None, False
        awaited = _take_over(awaited)
        return step, awaited, awaited is None

    async def flush_and_close(self) -> None:
        """Finish a send interrupted by shutdown, then send what is buffered, within ``send_timeout``.

        Raises:
            SendTimeoutError: a send did not complete in time.
        """
        pending = self._pending_send
        if pending is not None:
            self._pending_send = None
            await self._within_deadline(_finish(*pending))
        if len(self.buffer):
            body = self.buffer.take()
            await self.send_with_deadline({"type": "http.response.body", "body": body, "more_body": True})

    async def send_with_deadline(self, message: dict[str, Any]) -> None:
        """``send(message)`` within ``send_timeout`` seconds.

        Raises:
            SendTimeoutError: the send did not complete in time.
        """
        await self._within_deadline(self.send(message))

    async def _within_deadline(self, sending: Any) -> None:
        # outside the streaming loop (final sends only): asyncio's own timeout will do
        if self.send_timeout is None:
            await sending
            return
        try:
            await asyncio.wait_for(sending, self.send_timeout)
        except asyncio.TimeoutError:
            raise self._timeout_error() from None

    def _timeout_error(self) -> SendTimeoutError:
        return SendTimeoutError(f"send did not complete within send_timeout={self.send_timeout} s")


async def _finish(coro: Any, waits: Any) -> None:
    """Drive a suspended ``send()`` coroutine (waiting on ``waits``) to its end."""
    await _drive(coro, waits)


@types.coroutine
def _drive(coro: Any, waits: Any) -> Any:
    if waits is not None:
        waits._asyncio_future_blocking = True  # handed to the task again
    while True:
        try:
            value = yield waits
        except BaseException as exc:
            try:
                waits = coro.throw(exc)
            except StopIteration:
                return None
        else:
            try:
                waits = coro.send(value)
            except StopIteration:
                return None


def _abandon(coro: Any) -> None:
    try:
        coro.throw(asyncio.CancelledError())
    except BaseException:
        pass
    else:
        coro.close()


@types.coroutine
def _cancel_step(step: Any, awaited: Any) -> Any:
    """Throw ``CancelledError`` into a suspended producer step and run it to its end."""
    if isinstance(awaited, asyncio.Future):
        awaited.cancel()
    exc: BaseException | None = asyncio.CancelledError()
    value = None
    while True:
        try:
            if exc is not None:
                nxt = step.throw(exc)
            else:
                nxt = step.send(value)
        except BaseException:
            return None  # StopIteration, CancelledError, StopAsyncIteration, or its own error
        exc = None
        try:
            value = yield nxt
        except BaseException as e:  # cancelled again while cleaning up
            exc = e
