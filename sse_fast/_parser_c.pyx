# cython: language_level=3
"""Compiled event stream parser: the Cython twin of ``_parser_py`` (same names, same events).

One pass over each chunk's bytes in C: lines are found by scanning for CR and
LF, fields are matched on the raw bytes, and only what an event carries is
decoded (``data`` once per event, ``id`` once per ``id`` field, the event type
once per distinct name). A line split across chunks is carried in a growable C
buffer; a line inside one chunk is never copied. See ``_parser_py`` for the
rules (WHATWG HTML 9.2.6).
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.string cimport memchr, memcmp, memcpy

from . import _parser_py

__all__ = ["Event", "EventStreamParser"]

cdef str MESSAGE = "message"
cdef str EMPTY = ""


@cython.no_gc  # the fields hold only str / int / None: never part of a cycle
@cython.freelist(256)
cdef class Event:
    """One dispatched event: the compiled twin of ``_parser_py.Event`` (same attributes, same behaviour).

    Attributes:
        event: the event type (``str``), ``"message"`` by default.
        data: the data (``str``), lines joined by ``"\\n"``.
        id: the last event ID string at dispatch (``str``).
        retry: the reconnection time in milliseconds (``int``) or ``None``.

    Raises:
        TypeError: ``event``, ``data`` or ``id`` is not a ``str``, or ``retry``
            is neither an ``int`` nor ``None``.
    """

    cdef public str event
    cdef public str data
    cdef public str id
    cdef object _retry

    def __init__(self, str event not None="message", str data not None="", str id not None="", retry=None):
        self.event = event
        self.data = data
        self.id = id
        self.retry = retry

    @property
    def retry(self):
        return self._retry

    @retry.setter
    def retry(self, value):
        if value is not None and type(value) is not int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"retry must be an int (milliseconds) or None, got {value!r}")
            value = int(value)
        self._retry = value

    def __eq__(self, other):
        if not isinstance(other, (Event, _parser_py.Event)):
            return NotImplemented
        return (
            self.event == other.event
            and self.data == other.data
            and self.id == other.id
            and self._retry == other.retry
        )

    def __ne__(self, other):
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    __hash__ = None

    def __repr__(self):
        return f"Event(event={self.event!r}, data={self.data!r}, id={self.id!r}, retry={self._retry!r})"

    def __reduce__(self):
        return (Event, (self.event, self.data, self.id, self._retry))

    def json(self):
        """Return ``json.loads(self.data)``.

        Raises:
            json.JSONDecodeError: ``data`` is not JSON.
        """
        import json

        return json.loads(self.data)


cdef struct Buf:
    char* data
    Py_ssize_t size
    Py_ssize_t cap


cdef int buf_add(Buf* b, const char* src, Py_ssize_t n) except -1:
    cdef Py_ssize_t need = b.size + n
    cdef Py_ssize_t cap
    cdef char* p
    if need > b.cap:
        cap = b.cap * 2 if b.cap else 256
        while cap < need:
            cap *= 2
        p = <char*>PyMem_Realloc(b.data, cap)
        if p == NULL:
            raise MemoryError()
        b.data = p
        b.cap = cap
    if n:
        memcpy(b.data + b.size, src, n)
    b.size = need
    return 0


cdef inline void buf_free(Buf* b):
    if b.data != NULL:
        PyMem_Free(b.data)
    b.data = NULL
    b.size = 0
    b.cap = 0


cdef class EventStreamParser:
    """Incremental parser of one event stream (one HTTP response body).

    Same API and behaviour as ``sse_fast._parser_py.EventStreamParser``: see
    its documentation.

    Attributes:
        last_event_id: the last event ID buffer (``str``), ``""`` initially.
        retry: reconnection time in milliseconds (``int``) or ``None``.
        events_dispatched: number of events dispatched so far.
    """

    cdef public str last_event_id
    cdef public object retry
    cdef public Py_ssize_t events_dispatched
    cdef Buf _tail      # unfinished line (never holds CR or LF)
    cdef Buf _data      # data buffer, each value followed by LF
    cdef Buf _etype     # event type buffer
    cdef Buf _etype_c   # bytes of the cached decoded event type
    cdef str _etype_s
    cdef bint _cr
    cdef bint _start
    cdef bint _has_data

    def __cinit__(self):
        self.last_event_id = EMPTY
        self.retry = None
        self.events_dispatched = 0
        self._cr = False
        self._start = True
        self._has_data = False
        self._etype_s = MESSAGE

    def __dealloc__(self):
        buf_free(&self._tail)
        buf_free(&self._data)
        buf_free(&self._etype)
        buf_free(&self._etype_c)

    cdef str _event_type(self):
        cdef Py_ssize_t n = self._etype.size
        if n == 0:
            return MESSAGE
        if n == self._etype_c.size and memcmp(self._etype.data, self._etype_c.data, n) == 0:
            return self._etype_s
        s = PyUnicode_DecodeUTF8(self._etype.data, n, "replace")
        self._etype_c.size = 0
        buf_add(&self._etype_c, self._etype.data, n)
        self._etype_s = s
        return s

    cdef int _line(self, const char* p, Py_ssize_t n, list out) except -1:
        cdef const char* c
        cdef const char* v
        cdef Py_ssize_t name_len, vlen, k
        cdef long long r
        cdef Event ev
        if n == 0:
            # blank line: dispatch
            if self._has_data:
                if out is not None:
                    text = PyUnicode_DecodeUTF8(self._data.data, self._data.size - 1, "replace")
                    ev = Event.__new__(Event)  # no __init__: fields set directly
                    ev.event = self._event_type()
                    ev.data = text
                    ev.id = self.last_event_id
                    ev._retry = self.retry
                    out.append(ev)
                else:
                    self.events_dispatched += 1
                self._data.size = 0
                self._has_data = False
            self._etype.size = 0
            return 0
        if p[0] == b':':
            return 0  # comment
        c = <const char*>memchr(p, b':', n)
        if c == NULL:
            name_len = n
            v = p + n
            vlen = 0
        else:
            name_len = c - p
            v = c + 1
            vlen = n - name_len - 1
            if vlen and v[0] == b' ':
                v += 1
                vlen -= 1
        if name_len == 4:
            if memcmp(p, b"data", 4) == 0:
                if out is not None:
                    buf_add(&self._data, v, vlen)
                    buf_add(&self._data, b"\n", 1)
                self._has_data = True
        elif name_len == 2:
            if p[0] == b'i' and p[1] == b'd':
                if vlen == 0:
                    self.last_event_id = EMPTY
                elif memchr(v, 0, vlen) == NULL:
                    self.last_event_id = PyUnicode_DecodeUTF8(v, vlen, "replace")
        elif name_len == 5:
            if memcmp(p, b"event", 5) == 0:
                self._etype.size = 0
                buf_add(&self._etype, v, vlen)
            elif memcmp(p, b"retry", 5) == 0:
                if vlen == 0:
                    return 0
                for k in range(vlen):
                    if v[k] < b'0' or v[k] > b'9':
                        return 0
                if vlen <= 18:
                    r = 0
                    for k in range(vlen):
                        r = r * 10 + (v[k] - 48)
                    self.retry = r
                else:
                    self.retry = int(v[:vlen])
        return 0

    cdef int _scan(self, const char* p, Py_ssize_t n, list out) except -1:
        cdef Py_ssize_t i = 0, j, k
        cdef char ch
        if n == 0:
            return 0
        if self._cr:
            self._cr = False
            if p[0] == b'\n':
                i = 1
        while i < n:
            j = i
            while j < n:
                ch = p[j]
                if ch == b'\n' or ch == b'\r':
                    break
                j += 1
            if j == n:
                buf_add(&self._tail, p + i, n - i)
                return 0
            if self._tail.size:
                buf_add(&self._tail, p + i, j - i)
                k = self._tail.size
                self._tail.size = 0
                self._line(self._tail.data, k, out)
            else:
                self._line(p + i, j - i, out)
            if p[j] == b'\r':
                if j + 1 < n:
                    if p[j + 1] == b'\n':
                        j += 1
                else:
                    self._cr = True
            i = j + 1
        return 0

    cdef int _feed(self, object chunk, list out) except -1:
        cdef bytes b
        cdef const char* p
        cdef Py_ssize_t n, take
        cdef char head[3]
        cdef Py_ssize_t hn
        if type(chunk) is bytes:
            b = <bytes>chunk
        elif isinstance(chunk, (bytes, bytearray, memoryview)):
            b = bytes(chunk)
        else:
            raise TypeError(
                f"chunk must be bytes, bytearray or memoryview, got {type(chunk).__name__}: {chunk!r:.80}"
            )
        p = PyBytes_AS_STRING(b)
        n = PyBytes_GET_SIZE(b)
        if n == 0:
            return 0
        if self._start:
            # a leading BOM may be split across chunks: hold up to 3 bytes
            take = 3 - self._tail.size
            if take > n:
                take = n
            buf_add(&self._tail, p, take)
            p += take
            n -= take
            if self._tail.size < 3 and memcmp(self._tail.data, b"\xef\xbb\xbf", self._tail.size) == 0:
                return 0
            self._start = False
            hn = self._tail.size
            memcpy(head, self._tail.data, hn)
            self._tail.size = 0
            if not (hn == 3 and memcmp(head, b"\xef\xbb\xbf", 3) == 0):
                self._scan(head, hn, out)
        self._scan(p, n, out)
        return 0

    def feed(self, chunk):
        """Parse the next bytes of the stream; return the list of events they dispatched.

        Raises:
            TypeError: ``chunk`` is not ``bytes``, ``bytearray`` or ``memoryview``.
        """
        cdef list out = []
        self._feed(chunk, out)
        self.events_dispatched += len(out)
        return out

    def feed_count(self, chunk):
        """Parse the next bytes of the stream; return how many events they dispatched.

        No event is built and no data is kept (see ``_parser_py``).

        Raises:
            TypeError: ``chunk`` is not ``bytes``, ``bytearray`` or ``memoryview``.
        """
        cdef Py_ssize_t before = self.events_dispatched
        self._feed(chunk, None)
        return self.events_dispatched - before

    def close(self):
        """End of the stream: discard an incomplete event and an unfinished line."""
        self._tail.size = 0
        self._data.size = 0
        self._etype.size = 0
        self._cr = False
        self._start = True
        self._has_data = False

    @property
    def pending(self):
        """``True`` when bytes of an unfinished line or an undispatched event are held."""
        return self._tail.size != 0 or self._has_data or self._etype.size != 0
