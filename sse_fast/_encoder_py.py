"""Pure-Python event encoder: the reference twin of ``_encoder_c.pyx``.

Turns the fields of one event into the bytes of the WHATWG HTML event stream
format (section 9.2 "Server-sent events", "Parsing an event stream"): comment
lines, then ``id``, ``event``, the ``data`` lines and ``retry``, each line ended
by the separator, and one empty line that makes the client dispatch the event.
The field order and splitting rules are sse-starlette's, so the bytes on the
wire are the same.

Both twins expose the same names with the same behaviour; tests run every case
on both (``tests/conftest.py``).
"""

from __future__ import annotations

import types
from typing import Any

__all__ = [
    "SEPARATORS",
    "EventBuffer",
    "encode_fields",
    "encode_item",
    "check_sep",
    "check_fields",
    "retry_type_error",
    "set_event_class",
    "ensure_bytes",
    "StreamBuffer",
    "LoopTurns",
    "produce",
    "SENT",
    "first_step",
    "PHASES",
]

#: a stream's phases, in order (``StreamBuffer.phase``, the stream writer's)
STARTING, PRODUCING, FLUSHING, FINAL, DONE = PHASES = tuple(range(5))

_event_class: Any = None
_event_encode: Any = None


def set_event_class(cls: type) -> None:
    """Tell the encoder which class is ``ServerSentEvent`` (set by ``sse_fast.event``).

    Instances whose class keeps ``ServerSentEvent.encode`` are encoded from
    their fields directly; a subclass that overrides ``encode`` is honoured.
    """
    global _event_class, _event_encode
    _event_class = cls
    _event_encode = cls.encode

#: The three line terminators of the event stream format; the only valid ``sep``.
SEPARATORS = ("\r\n", "\r", "\n")


def check_sep(sep: str) -> str:
    """Return ``sep`` if it is a valid event stream line terminator.

    Raises:
        ValueError: ``sep`` is not one of ``"\\r\\n"``, ``"\\r"``, ``"\\n"``.
    """
    if sep != "\r\n" and sep != "\n" and sep != "\r":
        raise ValueError(f"sep must be one of '\\r\\n', '\\r', '\\n', got {sep!r}")
    return sep


def _split(text: str) -> list[str]:
    # every line terminator of the spec (CRLF, CR, LF) splits; nothing else does
    # (str.splitlines would also split on U+2028, U+0085, ...)
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text.split("\n")


def _single_line(text: str) -> str:
    if "\r" in text or "\n" in text:
        return text.replace("\r", "").replace("\n", "")
    return text


def retry_type_error(retry: Any) -> TypeError:
    """The ``TypeError`` for a ``retry`` that is not an ``int``.

    Its message is exactly sse-starlette's, which callers compare with ``==``;
    the value given and the unit ride along as an exception note (shown in
    tracebacks).
    """
    exc = TypeError("retry argument must be int")
    exc.add_note(f"retry is the reconnection time in milliseconds; got {retry!r}")
    return exc


def check_fields(event: Any, id: Any, retry: Any) -> None:
    """Check the typed fields of an event; ``None`` means absent and passes.

    Raises:
        TypeError: ``retry`` is not an ``int`` (``bool`` refused), or ``id`` /
            ``event`` is not a ``str``.
        ValueError: ``retry`` is negative (a client ignores a ``retry`` field
            that is not all digits, WHATWG HTML 9.2.6).
    """
    if retry is not None:
        if type(retry) is not int and (isinstance(retry, bool) or not isinstance(retry, int)):
            raise retry_type_error(retry)
        if retry < 0:
            raise ValueError(f"retry must be >= 0 (milliseconds), got {retry!r}")
    if id is not None and not isinstance(id, str):
        raise TypeError(f"id must be a str, got {id!r}")
    if event is not None and not isinstance(event, str):
        raise TypeError(f"event must be a str, got {event!r}")


def _fields_str(data: Any, event: Any, id: Any, retry: Any, comment: Any, sep: str) -> str:
    check_fields(event, id, retry)
    parts: list[str] = []
    if comment is not None:
        for line in _split(comment if type(comment) is str else str(comment)):
            parts.append(": " + line + sep)
    if id is not None:
        parts.append("id: " + _single_line(id) + sep)
    if event is not None:
        parts.append("event: " + _single_line(event) + sep)
    if data is not None:
        text = data if type(data) is str else str(data)
        if "\r" in text or "\n" in text:
            for line in _split(text):
                parts.append("data: " + line + sep)
        else:
            parts.append("data: " + text + sep)
    if retry is not None:
        parts.append("retry: " + str(retry) + sep)
    parts.append(sep)
    return "".join(parts)


def encode_fields(
    data: Any = None,
    event: str | None = None,
    id: str | None = None,
    retry: int | None = None,
    comment: Any = None,
    sep: str = "\r\n",
) -> bytes:
    """Encode one event's fields as UTF-8 event stream bytes.

    Args:
        data: any object; ``str(data)`` is split on every line terminator into
            one ``data:`` line per piece. ``None`` writes no ``data`` field.
        event: event type; line terminators are removed.
        id: last event ID; line terminators are removed.
        retry: reconnection time in milliseconds, a non-negative ``int``.
        comment: any object; ``str(comment)`` becomes one ``:`` line per piece.
        sep: line terminator, one of ``SEPARATORS`` (not checked here: callers
            check it once, at construction).

    Returns:
        The event's bytes, ending with an empty line (``sep`` alone when no
        field is set).

    Raises:
        TypeError: ``retry`` is not an ``int`` (``bool`` included), or ``id`` /
            ``event`` is not a ``str``.
        ValueError: ``retry`` is negative (a client ignores a ``retry`` field
            that is not all digits, WHATWG HTML 9.2.6).
        UnicodeEncodeError: a field holds a lone surrogate.
    """
    return _fields_str(data, event, id, retry, comment, sep).encode("utf-8")


def _dict_str(item: dict, sep: str) -> str:
    if len(item) == 1 and "data" in item:
        data = item["data"]
        text = data if type(data) is str else ("" if data is None else str(data))
        if data is not None and "\r" not in text and "\n" not in text:
            return "data: " + text + sep + sep
    get = item.get
    for key in item:
        if key not in _DICT_KEYS:
            # the same TypeError as ServerSentEvent(**item) would raise
            raise TypeError(
                f"event dict has an unexpected key {key!r}; allowed: data, event, id, retry, comment (and sep, ignored)"
            )
    return _fields_str(get("data"), get("event"), get("id"), get("retry"), get("comment"), sep)


# "sep" is accepted and ignored: the response's separator wins, as in
# sse-starlette 3.7's ``ServerSentEvent(**{**item, "sep": sep})``
_DICT_KEYS = frozenset(("data", "event", "id", "retry", "comment", "sep"))


def _item_str(item: Any, sep: str) -> str:
    """Encode a non-bytes item to str (see ``encode_item``)."""
    tp = type(item)
    if tp is dict:
        return _dict_str(item, sep)
    if tp is str:
        if "\r" in item or "\n" in item:
            return _fields_str(item, None, None, None, None, sep)
        return "data: " + item + sep + sep
    if _event_class is not None and isinstance(item, _event_class):
        return _fields_str(item.data, item.event, item.id, item.retry, item.comment, item._sep)
    if isinstance(item, dict):
        return _dict_str(item, sep)
    return _fields_str(str(item), None, None, None, None, sep)


def encode_item(item: Any, sep: str = "\r\n") -> bytes:
    """Turn one item of a response's content into event stream bytes.

    The rules of sse-starlette's ``ensure_bytes``:

    - ``bytes``, ``bytearray``, ``memoryview``: sent as they are (``bytes``);
    - a ``ServerSentEvent``: encoded with its own separator;
    - a ``dict``: its keys are ``ServerSentEvent``'s fields (``data``,
      ``event``, ``id``, ``retry``, ``comment``), encoded with ``sep``;
      the dict is not modified;
    - anything else: ``str(item)`` as the ``data`` of an event.

    Raises:
        TypeError: a dict key that is not a field, or a bad field type (see
            ``encode_fields``).
    """
    tp = type(item)
    if tp is bytes:
        return item
    if tp is bytearray or tp is memoryview:
        return bytes(item)
    if _event_class is not None and isinstance(item, _event_class) and tp.encode is not _event_encode:
        return bytes(item.encode())  # a subclass with its own encode()
    return _item_str(item, sep).encode("utf-8")


class EventBuffer:
    """Bytes of whole events waiting to be sent as one ``http.response.body``.

    Every ``append*`` method adds complete events only, so a flush can never
    split an event (or put a ping inside one).

    Args:
        sep: line terminator for items that do not carry their own.
    """

    __slots__ = ("_parts", "_size", "sep", "count", "pings", "last_events", "last_pings")

    def __init__(self, sep: str = "\r\n") -> None:
        self.sep = check_sep(sep)
        self._parts: list[bytes] = []
        self._size = 0
        #: number of items (events) appended since the last ``take()``, pings not included
        self.count = 0
        #: number of pings appended (``append_ping``) since the last ``take()``
        self.pings = 0
        #: ``count`` and ``pings`` of what the last ``take()`` returned
        self.last_events = 0
        self.last_pings = 0

    def __len__(self) -> int:
        """Bytes waiting to be taken."""
        return self._size

    def append(self, item: Any) -> None:
        """Append one content item, encoded as ``encode_item`` does."""
        b = item if type(item) is bytes else encode_item(item, self.sep)
        self._parts.append(b)
        self._size += len(b)
        self.count += 1

    def append_bytes(self, data: bytes) -> None:
        """Append preformatted bytes (``bytes``, ``bytearray`` or ``memoryview``)."""
        b = bytes(data)
        self._parts.append(b)
        self._size += len(b)
        self.count += 1

    def append_ping(self, data: bytes) -> None:
        """Append a ping's preformatted bytes; counted in ``pings``, not in ``count``."""
        b = bytes(data)
        self._parts.append(b)
        self._size += len(b)
        self.pings += 1

    def append_str(self, text: Any) -> None:
        """Append ``str(text)`` as the ``data`` of one event."""
        self.append_fields(text)

    def append_dict(self, item: dict) -> None:
        """Append a dict of event fields (see ``encode_item``)."""
        b = _dict_str(item, self.sep).encode("utf-8")
        self._parts.append(b)
        self._size += len(b)
        self.count += 1

    def append_event(self, event: Any) -> None:
        """Append a ``ServerSentEvent`` (encoded with its own separator)."""
        self.append(event)

    def append_fields(self, data=None, event=None, id=None, retry=None, comment=None, sep=None) -> None:
        """Append one event built from its fields (see ``encode_fields``)."""
        b = _fields_str(data, event, id, retry, comment, self.sep if sep is None else sep).encode("utf-8")
        self._parts.append(b)
        self._size += len(b)
        self.count += 1

    def take(self) -> bytes:
        """Return everything appended so far as one ``bytes`` and empty the buffer."""
        parts = self._parts
        if len(parts) == 1:
            out = parts[0]
        else:
            out = b"".join(parts)
        self._parts = []
        self._size = 0
        self.last_events = self.count
        self.last_pings = self.pings
        self.count = 0
        self.pings = 0
        return out

    def clear(self) -> None:
        """Drop what is waiting (used only when the stream is being torn down)."""
        self._parts = []
        self._size = 0
        self.count = 0
        self.pings = 0


def ensure_bytes(data: Any, sep: str) -> bytes:
    """Turn one content item into event stream bytes (``sse_starlette.sse.ensure_bytes``).

    ``bytes``/``bytearray``/``memoryview`` pass through as ``bytes``; a
    ``ServerSentEvent`` is encoded with its own separator; a ``dict`` is taken
    as ``ServerSentEvent(**data, sep=sep)`` (a ``sep`` key in it is overridden,
    the dict is not modified); anything else becomes
    ``ServerSentEvent(str(data), sep=sep)``.

    Raises:
        ValueError: ``sep`` is not one of ``"\\r\\n"``, ``"\\r"``, ``"\\n"``.
        TypeError: a dict key that is not an event field, or a bad field value.
    """
    if sep != "\r\n" and sep != "\n" and sep != "\r":
        check_sep(sep)
    return encode_item(data, sep)


class StreamBuffer(EventBuffer):
    """An ``EventBuffer`` shared by one stream's producer and its writer task.

    The producer (``produce``, in the response's task) appends events; the
    writer task takes everything buffered and sends it as one
    ``http.response.body``. All of it runs on the event loop's thread, so
    there is no lock: the fields below are the whole protocol.

    Args:
        sep: line terminator for items without their own.
        high: bytes (buffered plus ``inflight``) at which the producer awaits
            room: the bound on what one stream holds (``max_buffer_bytes``).
        loop: the event loop the futures belong to.

    Attributes:
        inflight: bytes of the ``send()`` in progress (set by the writer).
        sent_events: events of the batches whose send completed (``room_made``
            adds the last ``take()``'s; the writer adds the ones it sends itself).
        sent_pings: pings of the batches whose send completed.
        wake: the writer's idle future while it waits for data, else ``None``.
        room: the producer's future while it awaits room, else ``None``.
        closing: set when nothing more will be appended; the writer ends once
            the buffer is empty.
        clock: the loop's ``LoopTurns`` (set by the stream writer), or ``None``.
        stamp: ``clock``'s turn when the producer last appended: an item that
            finds the buffer idle and the clock past ``stamp`` comes from a
            producer that suspended since its previous item (it awaits between
            events), and is sent in the producer's task.
        slow: the producer's last own send suspended (the client is slower
            than the producer): items go to the writer task, which batches
            them, until it has sent everything (issue 16).
        send: the ASGI ``send`` callable for sends outside the writer task
            (the producer's own, a fan-out's), or ``None``: always batch.
        context: the stream's ``contextvars.Context`` (a fan-out's sends run in it).
        own_send: a send outside the writer task is claimed or in flight; the
            writer task waits for it.
        phase: the stream writer's phase (``PHASES``); stopped: a stop was
            requested; cut: a send's completion no longer counts (the stream
            failed or the client left). All three set by the stream writer.
        sent_bytes, sends: body bytes and ``http.response.body`` messages whose
            send completed.
        send_started: loop time the pending send started, while a
            ``send_timeout`` applies, else ``None``.
        on_start, on_sent: the stream writer's hooks called as a send outside
            the writer task starts and completes (see ``start_send``), or
            ``None`` when there is nothing to do (no ``send_timeout``; no
            stats, no ``ping_when_idle``).
        owner: the stream writer; its ``send_failed(exc)``,
            ``interrupt_producer()`` and ``finish_send(...)`` are called for
            a failed send, a stop that waited for a send, a send that
            suspended. One reference, not three bound methods per stream:
            fewer objects per open stream for the garbage collector.
    """

    __slots__ = ("high", "inflight", "wake", "room", "closing", "loop", "sent_events", "sent_pings",
                 "clock", "stamp", "slow", "send", "context", "own_send", "phase", "stopped", "cut",
                 "sent_bytes", "sends", "send_started", "on_start", "on_sent", "owner")

    def __init__(self, sep: str = "\r\n", high: int = 65536, loop: Any = None) -> None:
        super().__init__(sep)
        self.high = high
        self.inflight = 0
        self.wake: Any = None
        self.room: Any = None
        self.closing = False
        self.loop = loop
        self.sent_events = 0
        self.sent_pings = 0
        self.clock: Any = None
        self.stamp = -1
        self.slow = False
        self.send: Any = None
        self.context: Any = None
        self.own_send = False
        self.phase = STARTING
        self.stopped = False
        self.cut = False
        self.sent_bytes = 0
        self.sends = 0
        self.send_started: Any = None
        self.on_start: Any = None
        self.on_sent: Any = None
        self.owner: Any = None

    def notify(self) -> None:
        """Wake the writer task if it is waiting for data (it runs once the caller suspends)."""
        fut = self.wake
        if fut is not None:
            self.wake = None
            if not fut.done():
                fut.set_result(None)

    def room_made(self) -> None:
        """The send of the last ``take()`` completed: count its events and pings, wake the producer if it awaits room."""
        self.sent_events += self.last_events
        self.sent_pings += self.last_pings
        self.last_events = self.last_pings = 0
        fut = self.room
        if fut is not None:
            self.room = None
            if not fut.done():
                fut.set_result(None)

    # -- sends outside the writer task (issue 16) --------------------------------

    def claim(self, data: bytes) -> bool:
        """Reserve the stream's next send for ``data`` if the stream is idle; return whether it was.

        Idle: producing, not stopped, nothing buffered or in flight, the writer
        task waiting for data, the client not slow. Claimed, the stream is busy
        until ``send_claimed``: what comes meanwhile is buffered, and the
        writer task waits, so the order on the wire is the order of the claims.
        """
        if (self.phase == PRODUCING and not self.stopped and not self.inflight and not len(self)
                and self.wake is not None and not self.slow and self.send is not None):
            self.inflight = len(data)
            self.own_send = True
            return True
        return False

    def release_claim(self) -> None:
        """Give up a claim that will not be sent (the fan-out is closing, the stream ended)."""
        self.own_send = False
        if not self.cut:
            self.inflight = 0
        if len(self) or self.closing:
            self.notify()

    def send_claimed(self, data: bytes) -> Any:
        """Send ``data``, claimed by ``claim``, then what was buffered meanwhile, in the calling task.

        Returns ``None`` when all of it completed here, else the awaitable of
        a send that suspended (``owner.finish_send``'s), which the caller awaits at once,
        then calls ``drain``. A stopped stream still sends unless ``cut``
        (a shutdown flushes).
        """
        if (self.stopped or self.phase != PRODUCING) and (self.cut or self.phase >= DONE):
            self.release_claim()
            return None
        rest = self.start_send(data, 1, self.context)
        if rest is None:
            return self.drain()
        return rest

    def drain(self) -> Any:
        """Send what was buffered while a fan-out send was pending, in the calling task, while no send suspends.

        Returns ``None`` when done (the writer task is notified of what is
        left, or of the end), else the awaitable of the send that suspended.
        """
        context = self.context
        while len(self) and not self.slow and not self.stopped:
            rest = self.start_send(self.take(), -1, context)
            if rest is not None:
                return rest
        if len(self) or self.closing:
            self.notify()
        return None

    def start_send(self, body: bytes, events: int, context: Any) -> Any:
        """Start the send of ``body`` in the calling task; the server's ``send()`` takes its first step here.

        Args:
            body: the bytes of the ``http.response.body`` message.
            events: how many events it carries; ``-1``: the last ``take()``
                (counted by ``room_made``).
            context: the stream's context, for a fan-out's send; ``None``: the
                producer's own send, in its task (the writer task is then
                notified of what came meanwhile; a fan-out drains that itself).

        Returns:
            ``None`` when the send completed, or failed (``owner.send_failed`` stopped
            the stream), in this call; else an awaitable (``owner.finish_send``'s) that
            the caller must await at once, in the same task, to finish it.

        Raises:
            A ``BaseException`` that is not an ``Exception`` (a cancellation)
            raised by ``send()`` itself.
        """
        self.inflight = size = len(body)
        self.own_send = True
        turn = self.clock.stamp(self.loop)  # a later turn after the send: it suspended
        if self.on_start is not None:
            self.on_start()  # the send deadline
        try:
            aw = self.send({"type": "http.response.body", "body": body, "more_body": True})
            if type(aw) is not _COROUTINE:
                aw = aw.__await__()  # a future, or another awaitable: its iterator
            waiting = first_step(aw, context)
        except Exception as exc:
            self.send_started = None
            self.own_send = False
            self.owner.send_failed(exc)
            return None
        except BaseException:
            self.send_started = None
            self.own_send = False
            raise
        if waiting is SENT:
            self.send_done(size, events, turn, context)
            return None
        return self.owner.finish_send(aw, waiting, size, events, turn, context)

    def send_done(self, size: int, events: int, turn: int, context: Any) -> None:
        """A send started by ``start_send`` completed: count it (``events``, ``context`` as there)."""
        self.send_started = None
        self.own_send = False
        if self.stopped:
            self.owner.interrupt_producer()  # a shutdown that waited for this send (``StreamWriter.stop``)
        if self.cut:
            return  # a send that could not be cancelled returned after its deadline or the disconnect
        self.inflight = 0
        self.sent_bytes += size
        self.sends += 1
        if events < 0:
            self.room_made()
        else:
            self.sent_events += events
        if self.clock.turn != turn:
            self.slow = True  # the send suspended: the client is slower than the producer or publisher
        if self.on_sent is not None:
            self.on_sent()
        if context is None and (len(self) or self.closing):
            self.notify()  # pings that came meanwhile; or the end, which waited for this send


class LoopTurns:
    """Counts the turns of one event loop, for whoever needs to know that its task suspended.

    ``stamp(loop)`` returns the current turn and makes sure one ``tick``
    callback is pending; the loop runs that callback only once the running
    task has suspended, so a later ``turn`` than a stamp proves the task gave
    the loop a turn since. One callback per loop turn at most, shared by every
    stream of the loop (a callback per event would cost more than the send it
    saves, ~1.5 us on uvloop).
    """

    __slots__ = ("turn", "pending", "_tick")

    def __init__(self) -> None:
        self.turn = 0
        self.pending = False
        self._tick = self.tick

    def tick(self) -> None:
        """The loop callback: one more turn has run."""
        self.turn += 1
        self.pending = False

    def stamp(self, loop: Any) -> int:
        """The current turn; a later value means the loop has run callbacks since (the caller suspended)."""
        if not self.pending:
            self.pending = True
            loop.call_soon(self._tick)
        return self.turn


_COROUTINE = types.CoroutineType


class _Sent:
    __slots__ = ()

    def __repr__(self) -> str:
        return "SENT"


#: what ``first_step`` returns for an awaitable that completed in its first step
SENT: Any = _Sent()


def first_step(awaitable: Any, context: Any) -> Any:
    """Run the first step of ``awaitable`` (the server's ``send()``) in the calling task.

    Args:
        awaitable: a coroutine, or an iterator with ``send``/``throw`` (what
            ``__await__`` returns: a future's, say).
        context: the ``contextvars.Context`` to run the step in, or ``None``
            for the caller's.

    Returns:
        ``SENT`` when it completed in that step (its result is dropped), else
        what it yielded to the task (a future, or ``None`` for a bare yield),
        which the caller must hand on to its task, then go on driving it
        (``_writer._run_in``). A plain ``await`` does the same; this saves a
        coroutine frame per send when the send does not suspend (issue 16).

    Raises:
        Whatever the step raises.
    """
    try:
        if context is None:
            return awaitable.send(None)
        return context.run(awaitable.send, None)
    except StopIteration:
        return SENT


async def produce(iterator: Any, sb: StreamBuffer) -> None:
    """Consume ``iterator`` with ``async for`` into ``sb``, under the caller's task.

    An item that finds the writer idle (nothing buffered, nothing in flight,
    the writer task waiting) from a producer that suspended since its last
    item (``sb.clock`` past ``sb.stamp``) is sent at once by ``sb.start_send`` in this task: no
    future, no task woken, as a hand-written ``await send()`` loop (issue 16).
    Any other item is encoded into the buffer and the writer task is notified;
    the writer runs when this task next suspends, so items that are ready
    together leave in one send. At ``sb.high`` bytes (buffered plus in flight)
    this coroutine awaits room. It returns when the iterator is exhausted; a stop
    request reaches it as a cancellation of its task.

    Raises:
        Whatever the iterator or the encoder raises; ``CancelledError`` when
        the task is cancelled while waiting (in the iterator or for room).
    """
    append = sb.append
    async for item in iterator:
        idle = (not len(sb) and not sb.slow and not sb.inflight and sb.wake is not None
                and sb.send is not None and sb.clock.turn != sb.stamp)
        append(item)
        if sb.clock is not None:
            sb.stamp = sb.clock.stamp(sb.loop)
        if idle:
            rest = sb.start_send(sb.take(), -1, None)
            if rest is not None:
                await rest  # the send suspended: finish it here, as a plain ``await send()`` would
            continue
        fut = sb.wake
        if fut is not None:
            sb.wake = None
            if not fut.done():
                fut.set_result(None)
        if len(sb) + sb.inflight >= sb.high:
            fut = sb.room = sb.loop.create_future()
            await fut
