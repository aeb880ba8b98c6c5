"""Pure-Python event stream parser: the reference twin of ``_parser_c.pyx``.

Implements the client side of the WHATWG HTML event stream format (section
9.2.6, "Interpreting an event stream"), incrementally: bytes arrive in chunks of
any size, split anywhere (inside a UTF-8 sequence, between the CR and the LF of
a CRLF), and each call returns the events dispatched by the lines its chunk
completed.

The rules, in the spec's words:

- the stream is decoded as UTF-8 ("UTF-8 decode": one leading byte order mark
  is stripped, once, at the very start; invalid bytes become U+FFFD);
- lines end with CRLF, a lone CR or a lone LF (a CR at the end of one chunk and
  an LF at the start of the next are one line end);
- a blank line dispatches the event; a line starting with ``:`` is a comment
  and is ignored; otherwise the field name runs up to the first ``:`` and the
  value follows it, less one leading space (no ``:``: the whole line is the
  name and the value is empty);
- ``data`` appends the value and an LF to the data buffer; ``event`` sets the
  event type buffer; ``id`` sets the last event ID buffer unless the value
  contains U+0000 NULL; ``retry`` sets the reconnection time when the value is
  ASCII digits only (anything else, empty included, is ignored); any other
  field is ignored;
- dispatch: the last event ID string becomes the last event ID buffer; when
  the data buffer is empty nothing is dispatched (the event type buffer is
  reset); otherwise the final LF is removed from the data and an event is
  dispatched, of type ``message`` when the event type buffer is empty;
- at the end of the stream an incomplete event (no blank line after it) is
  discarded: it is never dispatched.

CR (0x0D), LF (0x0A) and ``:`` (0x3A) never occur inside a multi-byte UTF-8
sequence, so the parser splits lines and fields on the raw bytes and decodes
each value once; the result is the same as decoding the whole stream first.

Both twins expose the same names with the same behaviour and return the same
:class:`Event` class; tests run every case on both.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Event", "EventStreamParser", "set_event_class"]

_BOM = b"\xef\xbb\xbf"


class Event:
    """One dispatched event (a ``MessageEvent`` in a browser).

    Attributes:
        event: the event type, ``"message"`` when the stream gave none (or an
            empty one); in a browser, the name ``addEventListener`` listens to.
        data: the data buffer, ``data`` field values joined by ``"\\n"`` (the
            final line feed removed).
        id: the last event ID string at dispatch (``lastEventId`` in a
            browser): the value of the latest ``id`` field, which may have come
            in an earlier event; ``""`` when none was seen.
        retry: the stream's reconnection time in milliseconds, as set by the
            latest valid ``retry`` field at or before this event, or ``None``
            when none was seen.

    Events compare equal when all four attributes are equal.
    """

    __slots__ = ("event", "data", "id", "retry")

    def __init__(
        self, event: str = "message", data: str = "", id: str = "", retry: int | None = None
    ) -> None:
        self.event = event
        self.data = data
        self.id = id
        self.retry = retry

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _event_types):
            return NotImplemented
        return (
            self.event == other.event
            and self.data == other.data
            and self.id == other.id
            and self.retry == other.retry
        )

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return (
            f"Event(event={self.event!r}, data={self.data!r}, id={self.id!r}, retry={self.retry!r})"
        )

    def json(self) -> Any:
        """Return ``json.loads(self.data)``.

        Raises:
            json.JSONDecodeError: ``data`` is not JSON.
        """
        import json

        return json.loads(self.data)


#: the class this twin's parser builds events with (see ``set_event_class``)
_event_class: Any = Event
_event_types: tuple[type, ...] = (Event,)


def set_event_class(cls: type) -> None:
    """Make this twin's parser build its events with ``cls`` (called with
    ``(event, data, id, retry)``), and let :class:`Event` compare equal to it.

    The chooser (``sse_fast._parser``) passes the compiled twin's ``Event``,
    so that both twins return instances of the one class ``sse_fast._parser.Event``.
    """
    global _event_class, _event_types
    _event_class = cls
    _event_types = (Event,) if cls is Event else (Event, cls)


def _chunk_bytes(chunk: Any) -> bytes:
    if type(chunk) is bytes:
        return chunk
    if isinstance(chunk, (bytearray, memoryview)):
        return bytes(chunk)
    if isinstance(chunk, bytes):
        return bytes(chunk)
    raise TypeError(
        f"chunk must be bytes, bytearray or memoryview, got {type(chunk).__name__}: {chunk!r:.80}"
    )


class EventStreamParser:
    """Incremental parser of one event stream (one HTTP response body).

    Feed it the body's bytes as they arrive with :meth:`feed` (events) or
    :meth:`feed_count` (a count only). One parser per response: a reconnection
    starts a new stream, so use a new parser (carrying ``last_event_id`` over
    to the ``Last-Event-ID`` request header yourself).

    Attributes:
        last_event_id: the last event ID buffer (``str``), ``""`` initially. It
            is set by every ``id`` field without NULL, even one in an event that
            is not (yet) dispatched.
        retry: the reconnection time in milliseconds from the latest valid
            ``retry`` field (``int``), ``None`` until one is seen.
        events_dispatched: number of events dispatched so far (both methods).
    """

    __slots__ = (
        "last_event_id",
        "retry",
        "events_dispatched",
        "_tail",
        "_cr",
        "_start",
        "_data",
        "_has_data",
        "_etype",
        "_etype_b",
        "_etype_s",
    )

    def __init__(self) -> None:
        self.last_event_id: str = ""
        self.retry: int | None = None
        self.events_dispatched: int = 0
        self._tail = b""  # bytes of an unfinished line (never holds CR or LF)
        self._cr = False  # the last line ended with CR: skip an LF right after
        self._start = True  # no byte seen yet past a possible BOM
        self._data: list[bytes] = []
        self._has_data = False  # for feed_count, which does not keep the data
        self._etype = b""  # event type buffer
        self._etype_b = b""  # cache of the last decoded event type
        self._etype_s = "message"

    def _lines(self, chunk: Any) -> list[bytes]:
        # returns the complete lines of tail + chunk, keeps the rest as tail
        buf = _chunk_bytes(chunk)
        if not buf:
            return []
        if self._cr:
            self._cr = False
            if buf[0] == 10:
                buf = buf[1:]
                if not buf:
                    return []
        if self._tail:
            buf = self._tail + buf
        if self._start:
            if len(buf) < 3 and _BOM.startswith(buf):
                self._tail = buf  # maybe a BOM split across chunks: wait
                return []
            self._start = False
            if buf.startswith(_BOM):
                buf = buf[3:]
        if 13 in buf:
            if buf[-1] == 13:
                self._cr = True
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = buf.split(b"\n")
        self._tail = lines.pop()
        return lines

    def _field(self, line: bytes) -> None:
        i = line.find(b":")
        if i < 0:
            name = line
            value = b""
        else:
            name = line[:i]
            value = line[i + 1 :]
            if value[:1] == b" ":
                value = value[1:]
        if name == b"data":
            self._data.append(value)
            self._has_data = True
        elif name == b"event":
            self._etype = value
        elif name == b"id":
            if b"\x00" not in value:
                self.last_event_id = value.decode("utf-8", "replace")
        elif name == b"retry":
            if value.isdigit():  # bytes.isdigit: ASCII digits only, False when empty
                self.retry = int(value)
        # any other field is ignored

    def _event_type(self) -> str:
        etype = self._etype
        if not etype:
            return "message"
        if etype != self._etype_b:
            self._etype_b = etype
            self._etype_s = etype.decode("utf-8", "replace")
        return self._etype_s

    def feed(self, chunk: bytes | bytearray | memoryview) -> list[Event]:
        """Parse the next bytes of the stream.

        Args:
            chunk: the next bytes of the response body, split anywhere (may be
                empty).

        Returns:
            The events dispatched by the lines this chunk completed, in stream
            order (often an empty list).

        Raises:
            TypeError: ``chunk`` is not ``bytes``, ``bytearray`` or ``memoryview``.
        """
        out: list[Event] = []
        data = self._data
        for line in self._lines(chunk):
            if line:
                # the common field inline (no method call), the rest in _field
                if line.startswith(b"data:"):
                    value = line[5:]
                    data.append(value[1:] if value.startswith(b" ") else value)
                    self._has_data = True
                elif line[0] != 58:  # not a comment
                    self._field(line)
                continue
            # blank line: dispatch
            if self._has_data:
                text = (data[0] if len(data) == 1 else b"\n".join(data)).decode("utf-8", "replace")
                out.append(_event_class(self._event_type(), text, self.last_event_id, self.retry))
                data = self._data = []
                self._has_data = False
            self._etype = b""
        self.events_dispatched += len(out)
        return out

    def feed_count(self, chunk: bytes | bytearray | memoryview) -> int:
        """Parse the next bytes of the stream and return only how many events it dispatched.

        The fast path for load tools: no :class:`Event` is built and no data is
        decoded or kept, but ``last_event_id``, ``retry`` and
        ``events_dispatched`` are kept up to date exactly as :meth:`feed` does.
        Do not mix it with :meth:`feed` inside one event (the data of an event
        whose ``data`` lines went through ``feed_count`` is not kept).

        Returns:
            The number of events dispatched by the lines this chunk completed.

        Raises:
            TypeError: ``chunk`` is not ``bytes``, ``bytearray`` or ``memoryview``.
        """
        n = 0
        for line in self._lines(chunk):
            if line:
                c = line[0]
                if c == 100 and line.startswith(b"data") and (len(line) == 4 or line[4] == 58):
                    self._has_data = True  # data: the common case, value not kept
                elif c != 58:
                    self._field(line)
                continue
            if self._has_data:
                n += 1
                self._has_data = False
            self._data = []
            self._etype = b""
        self.events_dispatched += n
        return n

    def close(self) -> None:
        """End of the stream: discard an incomplete event and an unfinished line.

        Whatever was not followed by a blank line is never dispatched (WHATWG:
        "If the file ends in the middle of an event, before the final empty
        line, the incomplete event is not dispatched"). ``last_event_id`` and
        ``retry`` keep their values. The parser can then be fed a new stream
        (a leading BOM is stripped again).
        """
        self._tail = b""
        self._cr = False
        self._start = True
        self._data = []
        self._has_data = False
        self._etype = b""

    @property
    def pending(self) -> bool:
        """``True`` when bytes of an unfinished line or an undispatched event are held."""
        return bool(self._tail) or self._has_data or bool(self._etype)
