"""The batching writer of one event stream on asyncio: a producer, a writer task, loop timers.

Three parties share one ``StreamBuffer``, all on the event loop's thread:

- **the producer**: the response's own task consumes the content iterator with
  a plain ``async for`` (``_encoder.produce``, compiled where built). The
  user's code therefore runs under a real ``asyncio.Task``: cancellation,
  timeouts, ``current_task()``, ``cancelling()``/``uncancel()``, custom
  awaitables and ``StopAsyncIteration`` are asyncio's own. Each item is
  encoded into the buffer; at ``max_buffer_bytes`` (buffered plus the send in
  flight) the producer awaits room, so a client that stops reading stops it.
  When the writer is idle and the producer awaited since its previous item
  (``_encoder.LoopTurns``), the producer sends the item itself, in its task
  (``StreamBuffer.start_send``, issue 16): no future, no task woken.
- **the writer task**: waits on a future that the producer sets when it
  appends. The future's callback runs only once the producer suspends, so
  the events that were ready together leave as one ``http.response.body``,
  and a slow producer's event leaves at once (no timer, no Nagle).
- **a broadcast's fan-out task** (``broadcast._fanout``) may send for an idle
  stream (``StreamBuffer.claim``/``send_claimed``); the writer task waits for
  such a send, as for the producer's own.

Sends outside the writer task run in the buffer (compiled where built): the
server's ``send()`` takes its first step in the calling task
(``_encoder.first_step``), and only a send that suspends costs a coroutine of
ours (``finish_send``). The buffer keeps the counts and a copy of the
writer's phase and stop state; the writer's hooks handle the send deadline,
stats, ``ping_when_idle`` and failures.
- **loop timers**: pings append to the buffer and wake the writer; a send
  deadline is one timer per stream, armed lazily (a send records its start
  time; the timer, when it fires, either times the send out or re-arms for the
  send now pending, or disarms when none is). No cancel scope per event, no
  task per timer.

Stopping (client disconnect, server shutdown, a failed send) cancels the
producer where it awaits through one anyio cancel scope per phase of the
stream (start, produce, end), as sse-starlette's task group does: shielded
scopes in the user's code hold, and a cancellation from anyone else (the
server, an outer timeout) still propagates.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
import types
import weakref
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import anyio

from . import _encoder
from ._encoder_py import PHASES

__all__ = ["SendTimeoutError", "StreamWriter", "DEFAULT_MAX_BUFFER_BYTES", "STOP_DISCONNECT", "STOP_SHUTDOWN",
           "STOP_ERROR", "send_within", "end_reason"]

#: default bound, in bytes, on what one stream holds: encoded events waiting plus the send in flight
DEFAULT_MAX_BUFFER_BYTES = 64 * 1024

# why a stream stopped early
STOP_DISCONNECT = "disconnect"
STOP_SHUTDOWN = "shutdown"
STOP_ERROR = "error"

#: seconds a running stream's counts may wait before they reach the metrics (``StreamWriter.flush_stats``)
STATS_FLUSH_SECONDS = 1.0

#: seconds a stream stopped by shutdown may take to send what it holds before it is cut: a
#: client that stopped reading must not keep the server from exiting (``send_timeout`` if shorter)
SHUTDOWN_FLUSH_SECONDS = 1.0

# the phases of a stream, in order
_STARTING, _PRODUCING, _FLUSHING, _FINAL, _DONE = PHASES


class SendTimeoutError(TimeoutError):
    """A send of data or of a ping did not complete within ``send_timeout`` seconds."""


def default_ping(sep: str) -> bytes:
    """sse-starlette's default ping: a comment carrying the current UTC time."""
    return _encoder.encode_fields(comment=f"ping - {datetime.now(UTC)}", sep=sep)


def timeout_error(send_timeout: float | None) -> SendTimeoutError:
    """The ``SendTimeoutError`` raised when a send outlived ``send_timeout`` seconds."""
    return SendTimeoutError(f"send did not complete within send_timeout={send_timeout} s")


async def send_within(send: Callable[[dict[str, Any]], Awaitable[None]], message: dict[str, Any],
                      send_timeout: float | None) -> None:
    """``await send(message)`` within ``send_timeout`` seconds (``None``: no limit), on any async library.

    Raises:
        SendTimeoutError: the send did not complete in time; also when it could
            not be cancelled and returned late (``cancel_called``, not a caught
            cancellation: hypercorn's trio worker shields its writes), as sse-starlette.
    """
    if send_timeout is None:
        await send(message)
        return
    with anyio.move_on_after(send_timeout) as scope:
        await send(message)
    if scope.cancel_called:
        raise timeout_error(send_timeout)


def _is_cancellation(exc: BaseException) -> bool:
    if isinstance(exc, asyncio.CancelledError):
        return True
    trio = sys.modules.get("trio")
    return trio is not None and isinstance(exc, trio.Cancelled)


def end_reason(first_stop: str | None, exc: BaseException | None) -> str:
    """Why a stream ended, for ``sse_fast_streams_ended_total{reason}`` (``metrics.END_REASONS``).

    Args:
        first_stop: the first stop request the stream got while running
            (``STOP_DISCONNECT``, ``STOP_SHUTDOWN``, ``STOP_ERROR``), or ``None``.
        exc: what the response raised, or ``None``.

    Returns:
        ``"send_timeout"`` when ``exc`` is a ``SendTimeoutError``; else
        ``"disconnect"`` when the client went first; else ``"error"`` when
        ``exc`` is an error (not a cancellation); else ``"shutdown"``; else
        ``"disconnect"`` for a cancellation from outside (the server gave up
        on the request); else ``"complete"``.
    """
    if isinstance(exc, SendTimeoutError):
        return "send_timeout"
    if first_stop == STOP_DISCONNECT:
        return "disconnect"
    if exc is not None and not _is_cancellation(exc):
        return "error"
    if first_stop == STOP_SHUTDOWN:
        return "shutdown"
    if first_stop == STOP_ERROR:
        return "error"
    if exc is not None:
        return "disconnect"
    return "complete"


_loop_turns: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


# the last loop asked for and its counter (a server runs one loop; a weak reference, so a
# closed loop is not kept alive): a WeakKeyDictionary lookup per stream opened costs more
_last_turns: tuple[Any, Any] = (lambda: None, None)


def loop_turns(loop: asyncio.AbstractEventLoop) -> Any:
    """The ``_encoder.LoopTurns`` of ``loop`` (one per loop, shared by its streams)."""
    global _last_turns
    ref, turns = _last_turns
    if ref() is loop and type(turns) is _encoder.LoopTurns:
        return turns
    turns = _loop_turns.get(loop)
    if turns is None or type(turns) is not _encoder.LoopTurns:  # (the tests swap encoder twins)
        turns = _loop_turns[loop] = _encoder.LoopTurns()
    _last_turns = (weakref.ref(loop), turns)
    return turns


class _WriterNotStarted:
    """``StreamBuffer.wake`` until the writer task exists: the first wake starts it.

    An awaiting producer sends its own events (issue 16), so many streams
    never need the writer task: it starts at the first wake (a batch, a ping,
    a send of the producer's that suspended, the flush of a fan-out's), not
    per stream opened. Quacks like the idle ``Future`` the writer task waits
    on (``done``, ``set_result``); the buffer's rules read a non-``None``
    ``wake`` as "the writer is idle", which holds for this state too.
    """

    __slots__ = ("writer",)

    def __init__(self, writer: StreamWriter) -> None:
        self.writer = writer

    def done(self) -> bool:
        return False

    def set_result(self, _value: Any) -> None:
        w = self.writer
        # (not once the client left or the stream failed: nothing more may be sent)
        if w.writer_task is None and w.phase < _DONE and not w.buffer.cut:
            w.writer_task = w.loop.create_task(w._write_loop(), context=w.context)


class StreamWriter:
    """Writes one event stream's body on asyncio: batching, pings, deadlines, stop requests.

    Args:
        send: the ASGI ``send`` callable.
        loop: the running event loop.
        sep: line terminator for items without their own.
        send_timeout: seconds a send may take, or ``None``.
        ping: seconds between pings; ``0`` for none.
        ping_factory: returns the ``ServerSentEvent`` to send as a ping, or
            ``None`` for the default comment.
        ping_when_idle: ping only after ``ping`` seconds without any send.
        max_buffer_bytes: bytes one stream may hold (buffered plus in flight).
        stats: the route's ``metrics.StreamCounters`` to count sends into, or
            ``None`` (metrics off: nothing is counted). The counts of completed
            sends are kept anyway (``sent_bytes``, ``sends``, the buffer's
            ``sent_events``/``sent_pings``); with ``stats`` they reach it within
            ``STATS_FLUSH_SECONDS`` (one loop timer while counts wait) and when
            the response calls ``flush_stats()`` at the end.
        shutdown_event: an ``anyio.Event``/``asyncio.Event`` that
            ``on_shutdown`` sets, or ``None``.
        shutdown_grace_period: seconds the producer may go on after
            ``shutdown_event`` is set before it is stopped.
    """

    __slots__ = (
        "send",
        "loop",
        "sep",
        "send_timeout",
        "ping",
        "ping_factory",
        "ping_when_idle",
        "buffer",
        "task",
        "writer_task",
        "phase",
        "stop_reason",
        "first_stop",
        "stats",
        "_flushed",
        "_stats_timer",
        "error",
        "disconnect_seen",
        "_scope",
        "_ping_handle",
        "_next_ping",
        "_last_send",
        "_deadline",
        "_flush_deadline",
        "_send_task",
        "_send_cut",
        "context",
        "shutdown_event",
        "grace",
        "grace_handle",
    )

    def __init__(
        self,
        send: Callable[[dict[str, Any]], Awaitable[None]],
        loop: asyncio.AbstractEventLoop,
        *,
        sep: str = "\r\n",
        send_timeout: float | None = None,
        ping: float = 0,
        ping_factory: Callable[[], Any] | None = None,
        ping_when_idle: bool = False,
        max_buffer_bytes: int = DEFAULT_MAX_BUFFER_BYTES,
        stats: Any = None,
        shutdown_event: Any = None,
        shutdown_grace_period: float = 0,
    ) -> None:
        self.send = send
        self.loop = loop
        self.sep = sep
        self.send_timeout = send_timeout
        self.ping = ping
        self.ping_factory = ping_factory
        self.ping_when_idle = ping_when_idle
        self.buffer = _encoder.StreamBuffer(sep, max_buffer_bytes, loop)
        #: the task running the producer (the response's task)
        self.task: asyncio.Task[Any] | None = None
        self.writer_task: asyncio.Task[None] | None = None
        self.phase = _STARTING
        #: ``None`` while streaming; ``STOP_DISCONNECT``, ``STOP_SHUTDOWN`` or ``STOP_ERROR`` once stopped
        self.stop_reason: str | None = None
        #: the first stop request received while the stream ran (``stop_reason`` can change to
        #: ``STOP_DISCONNECT`` afterwards, e.g. a shutdown whose flush the client did not take)
        self.first_stop: str | None = None
        self.stats = stats
        # (sends, bytes, events, pings) already handed to ``stats`` (see ``flush_stats``)
        self._flushed = (0, 0, 0, 0)
        self._stats_timer: asyncio.TimerHandle | None = None
        #: the failure (of a send, a ping factory) that the response raises
        self.error: BaseException | None = None
        #: the disconnect listener received ``http.disconnect`` (its handler may be running)
        self.disconnect_seen = False
        self._scope: anyio.CancelScope | None = None  # around the current phase's awaits in ``task``
        self._ping_handle: asyncio.TimerHandle | None = None
        self._next_ping = 0.0
        self._last_send = 0.0
        self._deadline: asyncio.TimerHandle | None = None
        self._flush_deadline: asyncio.TimerHandle | None = None
        self._send_task: Any = None  # (fan-out task, its FanOut) in such a send, to cancel on a disconnect
        self._send_cut = False  # that task was cancelled by this stream's stop (not by anyone else)
        self.shutdown_event = shutdown_event
        #: seconds the producer may take to finish by itself after ``shutdown_event`` is set
        self.grace = shutdown_grace_period
        self.grace_handle: asyncio.TimerHandle | None = None
        sb = self.buffer
        sb.clock = loop_turns(loop)
        # sends outside the writer task (the producer's own, a fan-out's) run in the buffer
        # (compiled where built); these hooks are the parts that stay here
        sb.send = send
        sb.owner = self  # send_failed, interrupt_producer, finish_send
        if send_timeout is not None:
            sb.on_start = self._timed_start
        if ping_when_idle or stats is not None:
            sb.on_sent = self._after_send
        #: a copy of the response's context, made as the stream opens: the writer task, a fan-out's
        #: sends, the disconnect listener and the loop timers run in it (one copy, not one each)
        self.context = sb.context = contextvars.copy_context()

    # -- stop requests (loop thread: other tasks, timers, callbacks) ----------

    def on_shutdown(self) -> None:
        """The server is exiting (``_shutdown.Registry``): stop, or set ``shutdown_event`` and stop after the grace period."""
        event = self.shutdown_event
        if event is not None:
            # let the producer finish by itself (farewell event), then stop it
            event.set()
            if self.grace > 0:
                self.grace_handle = self.loop.call_later(self.grace, self.stop, STOP_SHUTDOWN)
                return
        self.stop(STOP_SHUTDOWN)

    def stop(self, reason: str) -> None:
        """Ask the stream to end.

        ``STOP_SHUTDOWN``: the producer is cancelled, what it produced is still
        sent, then the body ends; a client that does not take it within
        ``SHUTDOWN_FLUSH_SECONDS`` (or ``send_timeout``) is cut, so the server
        can exit. ``STOP_DISCONNECT``: the producer and any pending send are
        cancelled; nothing more is sent.
        """
        if self.stop_reason is None or reason == STOP_DISCONNECT:
            self.stop_reason = reason
            self._sync()
        phase = self.phase
        if self.first_stop is None and phase < _DONE:
            self.first_stop = reason
        if reason == STOP_SHUTDOWN and self._flush_deadline is None and phase < _DONE:
            bound = SHUTDOWN_FLUSH_SECONDS
            if self.send_timeout is not None:
                bound = min(bound, self.send_timeout)
            self._flush_deadline = self.loop.call_later(bound, self.stop, STOP_DISCONNECT)
        if phase == _PRODUCING and not (self.buffer.own_send and reason == STOP_SHUTDOWN):
            # (a shutdown lets a send outside the writer task complete: ``send_done`` stops it then)
            self.interrupt_producer()
        if reason == STOP_DISCONNECT:
            self._cancel_writer()
            self._cut_foreign_send()
            if phase == _STARTING or phase == _FINAL:
                self.interrupt_producer()  # a pending start or final send: the client is gone

    def fail(self, exc: BaseException) -> None:
        """End the stream with ``exc`` (raised by the response once cleaned up)."""
        if self.error is None:
            self.error = exc
            self._sync()
        self.stop(STOP_ERROR)
        self._cancel_writer()
        self._cut_foreign_send()

    def _sync(self) -> None:
        # the buffer's copy of what its sends outside the writer task need to know
        sb = self.buffer
        sb.phase = self.phase
        sb.stopped = self.stop_reason is not None
        sb.cut = self.error is not None or self.stop_reason == STOP_DISCONNECT

    def _cut_foreign_send(self) -> None:
        # a fan-out task in this stream's send: the rest of its round moves to a new task
        # (``FanOut.release``), then that send is cancelled where it waits
        sending = self._send_task
        if sending is not None and not self._send_cut and asyncio.current_task(self.loop) is not sending[0]:
            self._send_cut = True
            task, fanout = sending
            fanout.release(task)
            task.cancel()

    def interrupt_producer(self) -> None:
        """Cancel the producer where it awaits (also the ``StreamBuffer`` hook after a send of a stopped stream)."""
        # anyio's cancel scope, as sse-starlette's task group uses: the task is
        # cancelled where it awaits, shielded scopes in the user's code are
        # respected, and cancellation from anyone else still propagates
        scope = self._scope
        if scope is not None:
            scope.cancel()

    def _cancel_writer(self) -> None:
        w = self.writer_task
        if w is not None and not w.done() and asyncio.current_task(self.loop) is not w:
            w.cancel()

    # -- timers -------------------------------------------------------------

    def _arm_ping(self) -> None:
        if self.ping > 0:
            now = self.loop.time()
            self._last_send = now
            self._next_ping = now + self.ping
            self._ping_handle = self.loop.call_at(self._next_ping, self._on_ping_timer, context=self.context)

    def _on_ping_timer(self) -> None:
        self._ping_handle = None
        if self.phase != _PRODUCING:
            return
        loop = self.loop
        if self.ping_when_idle and self._last_send + self.ping > loop.time():
            # data went out meanwhile: the idle period starts at the last send
            self._next_ping = self._last_send + self.ping
        else:
            self._next_ping += self.ping
            try:
                data = self._ping_bytes()
            except Exception as exc:  # a ping_message_factory that fails ends the stream, loudly
                self.fail(exc)
                return
            self.buffer.append_ping(data)
            self.buffer.notify()
        self._ping_handle = loop.call_at(self._next_ping, self._on_ping_timer, context=self.context)

    def _ping_bytes(self) -> bytes:
        factory = self.ping_factory
        if factory is None:
            return default_ping(self.sep)
        return _encoder.encode_item(factory(), self.sep)

    def _on_deadline(self) -> None:
        self._deadline = None
        started = self.buffer.send_started
        if started is None:
            return  # no send pending: disarmed until the next one
        due = started + self.send_timeout  # type: ignore[operator]
        if self.loop.time() + 0.001 < due:
            # a later send is pending: its own deadline
            self._deadline = self.loop.call_at(due, self._on_deadline)
            return
        self.fail(timeout_error(self.send_timeout))

    def close(self) -> None:
        """Disarm the timers and cancel the writer task (the stream is over)."""
        self.phase = _DONE
        self._sync()
        if self._ping_handle is not None:
            self._ping_handle.cancel()
            self._ping_handle = None
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        if self._flush_deadline is not None:
            self._flush_deadline.cancel()
            self._flush_deadline = None
        if self.grace_handle is not None:
            self.grace_handle.cancel()
            self.grace_handle = None
        self._cancel_writer()

    # -- metrics ------------------------------------------------------------------

    def _arm_stats(self) -> None:
        self._stats_timer = self.loop.call_later(STATS_FLUSH_SECONDS, self.flush_stats)

    def flush_stats(self) -> None:
        """Hand the counts of the sends completed since the last call to ``stats`` (the timer's job; the response's at the end)."""
        timer = self._stats_timer
        if timer is not None:
            timer.cancel()  # a no-op when it is the timer calling
            self._stats_timer = None
        sb = self.buffer
        now = (sb.sends, sb.sent_bytes, sb.sent_events, sb.sent_pings)
        sends, nbytes, events, pings = (a - b for a, b in zip(now, self._flushed, strict=True))
        if sends:
            self._flushed = now
            self.stats.sent(nbytes, events, pings, sends)

    # -- sends from other tasks: the producer's own, a broadcast fan-out's --------

    @property
    def sent_bytes(self) -> int:
        """Body bytes whose send completed (pings included)."""
        return self.buffer.sent_bytes

    @property
    def sends(self) -> int:
        """``http.response.body`` messages with data whose send completed."""
        return self.buffer.sends

    # The buffer's ``start_send`` sends from the calling task (the producer's
    # own send, a fan-out's: issue 16); these are the hooks it calls.

    def _timed_start(self) -> None:
        # ``StreamBuffer.on_start`` (with a send_timeout): the deadline of the send starting now
        loop = self.loop
        started = self.buffer.send_started = loop.time()
        if self._deadline is None:
            self._deadline = loop.call_at(started + self.send_timeout, self._on_deadline)  # type: ignore[operator]

    def _after_send(self) -> None:
        # ``StreamBuffer.on_sent`` (with ping_when_idle or stats): a send completed
        if self.ping_when_idle:
            self._last_send = self.loop.time()
        if self.stats is not None and self._stats_timer is None:
            self._arm_stats()

    def send_failed(self, exc: Exception) -> None:
        """``StreamBuffer`` hook: a send outside the writer task failed with ``exc``."""
        if isinstance(exc, OSError):
            self.stop(STOP_DISCONNECT)  # ASGI 2.4: send() raises OSError once the client is gone
        else:
            self.fail(exc)

    async def finish_send(self, aw: Any, waiting: Any, size: int, events: int, turn: int,
                          context: contextvars.Context | None) -> None:
        """``StreamBuffer`` hook: the rest of a send that suspended in its first step, in the same task."""
        sb = self.buffer
        try:
            await _run_in(context, aw, waiting)
        except Exception as exc:
            sb.send_started = None
            sb.own_send = False
            self.send_failed(exc)
            return
        except BaseException:
            sb.send_started = None
            sb.own_send = False
            raise
        sb.send_done(size, events, turn, context)

    async def _finish_claimed(self, rest: Awaitable[None] | None, fanout: Any, task: asyncio.Task[Any]) -> None:
        """A fan-out's send for this stream suspended in ``task`` (the caller): finish it, then drain the buffer.

        A disconnect or the send deadline cancels it (``_cut_foreign_send``);
        that cancellation ends here and the fan-out goes on. A cancellation of
        ``task`` by anyone else propagates.
        """
        self._send_task = (task, fanout)
        self._send_cut = False
        sb = self.buffer
        try:
            while rest is not None:
                await rest
                rest = sb.drain()
        except asyncio.CancelledError:
            if not self._send_cut:
                raise
            task.uncancel()  # cancelled by this stream's stop: the fan-out goes on
        finally:
            self._send_task = None

    # -- the writer task ------------------------------------------------------

    async def _write_loop(self) -> None:
        sb = self.buffer
        send = self.send
        loop = self.loop
        timeout = self.send_timeout
        stats = self.stats
        try:
            while True:
                if not len(sb) or sb.own_send:
                    if sb.closing and not len(sb) and not sb.own_send:
                        return
                    # (while a send outside this task is in flight, a ping waits for it to end)
                    fut = sb.wake = loop.create_future()
                    try:
                        await fut
                    finally:
                        sb.wake = None
                    continue
                body = sb.take()
                size = len(body)
                sb.inflight = size
                if timeout is not None:
                    started = sb.send_started = loop.time()
                    if self._deadline is None:
                        self._deadline = loop.call_at(started + timeout, self._on_deadline)
                await send({"type": "http.response.body", "body": body, "more_body": True})
                sb.send_started = None
                if self.error is not None or self.stop_reason == STOP_DISCONNECT:
                    return  # a send that could not be cancelled returned after its deadline or the disconnect
                sb.inflight = 0
                sb.sent_bytes += size
                sb.sends += 1
                if self.ping_when_idle:
                    self._last_send = loop.time()
                sb.room_made()  # also counts the batch's events and pings
                if not len(sb):
                    sb.slow = False  # caught up: the producer may send its own events again
                if stats is not None and self._stats_timer is None:
                    # the metrics get this send's counts at most STATS_FLUSH_SECONDS later
                    self._arm_stats()
        except asyncio.CancelledError:
            if self.stop_reason is None:
                raise  # the stream is being torn down: not ours to absorb
        except OSError:
            # ASGI 2.4: send() raises OSError once the client is gone
            self.stop(STOP_DISCONNECT)
        except Exception as exc:
            self.fail(exc)
        finally:
            sb.send_started = None

    # -- the producer, in the response's task ----------------------------------

    async def run(self, start: dict[str, Any], iterator: Any) -> None:
        """Send ``start``, stream ``iterator``, end the body; return when done or stopped.

        Runs in the response's task, which becomes the producer's task.

        Raises:
            SendTimeoutError: a send did not complete within ``send_timeout``.
            Whatever the iterator, the encoder, ``send`` or the ping factory
            raises; the events produced before an iterator error are sent first.
            CancelledError: the task was cancelled by someone else.
        """
        self.task = asyncio.current_task(self.loop)
        sb = self.buffer
        failure: Exception | None = None
        producing = False
        # one scope for the start and the events: a disconnect cancels either
        with self._enter(_STARTING):
            await self.send(start)
            if self.stop_reason is None:
                producing = True
                sb.wake = _WriterNotStarted(self)  # the writer task starts when first needed
                self._arm_ping()
                self.phase = _PRODUCING
                self._sync()
                # an item counts as awaited (sent in this task) only once the producer has suspended
                # since the start too: a producer with items ready at once is batched from the first
                sb.stamp = sb.clock.stamp(self.loop)
                try:
                    await _encoder.produce(iterator, sb)
                except Exception as exc:
                    failure = exc
        if producing:
            self.phase = _FLUSHING
            self._sync()
            self._scope = None
            sb.closing = True
            writer = self.writer_task
            if writer is None and not len(sb) and not sb.own_send:
                sb.wake = None  # nothing was ever left to the writer task: it never starts
            else:
                sb.notify()  # (starts it when a fan-out's send is still in flight)
                writer = self.writer_task
            if writer is not None and not writer.done():
                await asyncio.wait((writer,))
            if self.error is not None:
                raise self.error
            if failure is not None:
                raise failure
        if self.stop_reason == STOP_DISCONNECT:
            return
        try:
            with self._enter(_FINAL):
                await self.send_final({"type": "http.response.body", "body": b"", "more_body": False})
        except SendTimeoutError:
            raise
        except OSError:
            pass  # the client left meanwhile
        finally:
            self.phase = _DONE
            self._sync()
            self._scope = None

    def _enter(self, phase: int) -> anyio.CancelScope:
        """The cancel scope of the stream from ``phase`` on: two per stream (start and events; the final send), never one per event."""
        self.phase = phase
        self._sync()
        scope = self._scope = _asyncio_cancel_scope()
        if self.stop_reason == STOP_DISCONNECT:
            scope.cancel()  # the client left meanwhile
        return scope

    async def send_final(self, message: dict[str, Any]) -> None:
        """``send(message)`` within ``send_timeout`` seconds (for the few sends outside the writer task).

        Raises:
            SendTimeoutError: the send did not complete in time.
        """
        await send_within(self.send, message, self.send_timeout)


_scope_class: Any = None


def _asyncio_cancel_scope() -> anyio.CancelScope:
    """A new ``anyio.CancelScope`` of anyio's asyncio backend (call only on an asyncio loop).

    ``anyio.CancelScope()`` asks sniffio which library runs on each call (about 1.7 us, most of
    a scope's cost when a stream opens: issue 16); on asyncio the answer is always the asyncio
    backend's class, which is remembered from the first call and built directly.
    """
    global _scope_class
    cls = _scope_class
    if cls is None:
        scope = anyio.CancelScope()
        _scope_class = type(scope)
        return scope
    return cls()


def _direct(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


@types.coroutine
def _run_in(context: contextvars.Context | None, coro: Any, waiting: Any) -> Any:
    """The rest of ``await coro``, whose first step (``_encoder.first_step``) yielded ``waiting``.

    Each later step runs in ``context`` (the stream's, not the calling task's;
    ``None``: the task's). A generator-based coroutine: what ``coro`` yields
    goes to the calling task as it is, what the task sends or throws in goes
    back to ``coro``, as ``await`` does; only the context differs. Used for
    the server's ``send()`` only, never for user code, and from start to end
    in one task (so a cancel scope or a timeout inside ``send`` is entered and
    left in the same task).
    """
    run = _direct if context is None else context.run
    while True:
        try:
            value = yield waiting
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:
            try:
                waiting = run(coro.throw, exc)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                waiting = run(coro.send, value)
            except StopIteration as stop:
                return stop.value
