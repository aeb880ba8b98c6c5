# cython: language_level=3
"""Compiled event encoder: the Cython twin of ``_encoder_py`` (same names, same bytes).

Text is read through CPython's cached UTF-8 view of a ``str`` (no copy for
ASCII strings) and copied once into a growable C buffer; line terminators are
found with ``memchr``-style scans over the UTF-8 bytes (CR and LF never occur
inside a multi-byte UTF-8 sequence, so byte scanning is exact).
"""

from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_Next
from cpython.mem cimport PyMem_Malloc, PyMem_Realloc, PyMem_Free
from cpython.object cimport PyObject
from cpython.ref cimport Py_XDECREF
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from libc.string cimport memcpy, memchr

from types import CoroutineType as _COROUTINE

from ._encoder_py import retry_type_error, SENT, PHASES

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object s, Py_ssize_t* size) except NULL
    Py_ssize_t PyUnicode_GET_LENGTH(object s)
    Py_UCS4 PyUnicode_READ_CHAR(object s, Py_ssize_t i)
    # -1 error (exception set), 0 returned, 1 yielded; ``*presult`` a new reference
    int PyIter_Send(object iter, object arg, PyObject** presult) except? -1
    int PyContext_Enter(object ctx) except -1
    int PyContext_Exit(object ctx) except -1

__all__ = [
    "SEPARATORS", "EventBuffer", "encode_fields", "encode_item", "check_sep", "set_event_class",
    "ensure_bytes", "StreamBuffer", "LoopTurns", "produce", "SENT", "first_step", "PHASES",
]

SEPARATORS = ("\r\n", "\r", "\n")

cdef object _event_class = None
cdef object _event_encode = None

# interned dict keys
cdef str K_DATA = "data"
cdef str K_EVENT = "event"
cdef str K_ID = "id"
cdef str K_RETRY = "retry"
cdef str K_COMMENT = "comment"
cdef str K_SEP = "sep"


def set_event_class(cls):
    """Tell the encoder which class is ``ServerSentEvent`` (see ``_encoder_py``)."""
    global _event_class, _event_encode
    _event_class = cls
    _event_encode = cls.encode


cdef load_event_class():
    # this module was imported directly (a test, a benchmark), not through the
    # chooser that registers the class: register it now
    import sys
    event = sys.modules.get("sse_fast.event")
    if event is not None:
        set_event_class(event.ServerSentEvent)


def check_sep(sep):
    """Return ``sep`` if it is a valid line terminator, else raise ``ValueError``."""
    if sep != "\r\n" and sep != "\n" and sep != "\r":
        raise ValueError(f"sep must be one of '\\r\\n', '\\r', '\\n', got {sep!r}")
    return sep


cdef enum:
    STACK_BYTES = 1024
    # capacity an emptied buffer may keep: above it, take() frees the memory, so
    # an idle or stalled stream holds no more than what waits or is in flight
    RETAIN_BYTES = 4096


cdef struct Buf:
    char* data
    Py_ssize_t size
    Py_ssize_t cap
    bint on_stack  # ``data`` is a caller's stack array: copy out on growth, never free


cdef int buf_grow(Buf* b, Py_ssize_t extra) except -1:
    cdef Py_ssize_t need = b.size + extra
    cdef Py_ssize_t cap
    cdef char* p
    if need <= b.cap:
        return 0
    cap = b.cap * 2 if b.cap else 256
    while cap < need:
        cap *= 2
    if b.on_stack:
        p = <char*>PyMem_Malloc(cap)
        if p == NULL:
            raise MemoryError()
        memcpy(p, b.data, b.size)
        b.on_stack = 0
    else:
        p = <char*>PyMem_Realloc(b.data, cap)
        if p == NULL:
            raise MemoryError()
    b.data = p
    b.cap = cap
    return 0


cdef inline int buf_write(Buf* b, const char* p, Py_ssize_t n) except -1:
    if b.size + n > b.cap:
        buf_grow(b, n)
    memcpy(b.data + b.size, p, n)
    b.size += n
    return 0


cdef inline const char* next_break(const char* p, const char* end,
                                   const char** nl, const char** cr):
    """The first CR or LF at or after ``p`` (or ``end``), memchr'd, positions cached."""
    if nl[0] != end and nl[0] < p:
        nl[0] = <const char*>memchr(p, b'\n', end - p)
        if nl[0] == NULL:
            nl[0] = end
    if cr[0] != end and cr[0] < p:
        cr[0] = <const char*>memchr(p, b'\r', end - p)
        if cr[0] == NULL:
            cr[0] = end
    return nl[0] if nl[0] < cr[0] else cr[0]


cdef int write_lines(Buf* b, const char* prefix, Py_ssize_t plen, str text,
                     const char* sep, Py_ssize_t seplen) except -1:
    """One ``prefix + piece + sep`` line per piece of ``text`` split on CRLF, CR, LF."""
    cdef Py_ssize_t n
    cdef const char* s = PyUnicode_AsUTF8AndSize(text, &n)
    cdef const char* end = s + n
    cdef const char* p = s
    cdef const char* brk
    # -1 sentinel pointers below ``s`` force the first memchr
    cdef const char* nl = s - 1
    cdef const char* cr = s - 1
    while True:
        brk = next_break(p, end, &nl, &cr)
        buf_grow(b, plen + (brk - p) + seplen)
        buf_write(b, prefix, plen)
        buf_write(b, p, brk - p)
        buf_write(b, sep, seplen)
        if brk == end:
            return 0
        if brk[0] == b'\r' and brk + 1 < end and brk[1] == b'\n':
            brk += 1
        p = brk + 1


cdef int write_single(Buf* b, const char* prefix, Py_ssize_t plen, str text,
                      const char* sep, Py_ssize_t seplen) except -1:
    """``prefix + text + sep`` with every CR and LF of ``text`` removed."""
    cdef Py_ssize_t n
    cdef const char* s = PyUnicode_AsUTF8AndSize(text, &n)
    cdef const char* end = s + n
    cdef const char* p = s
    cdef const char* brk
    cdef const char* nl = s - 1
    cdef const char* cr = s - 1
    buf_grow(b, plen + n + seplen)
    buf_write(b, prefix, plen)
    while True:
        brk = next_break(p, end, &nl, &cr)
        buf_write(b, p, brk - p)
        if brk == end:
            break
        p = brk + 1
    buf_write(b, sep, seplen)
    return 0


cdef inline str as_text(object o):
    if type(o) is str:
        return <str>o
    return str(o)


cdef str check_retry(object retry):
    if type(retry) is not int:
        if isinstance(retry, bool) or not isinstance(retry, int):
            raise retry_type_error(retry)
    if retry < 0:
        raise ValueError(f"retry must be >= 0 (milliseconds), got {retry!r}")
    return str(int(retry))


cdef int write_fields(Buf* b, object data, object event, object id, object retry,
                      object comment, str sep) except -1:
    # Convert every field first: str() may run user code, and no user code may
    # run while bytes are half written.
    cdef str t_comment = None
    cdef str t_id = None
    cdef str t_event = None
    cdef str t_data = None
    cdef str t_retry = None
    cdef Py_ssize_t seplen
    cdef const char* csep
    if comment is not None:
        t_comment = as_text(comment)
    if id is not None:
        if not isinstance(id, str):
            raise TypeError(f"id must be a str, got {id!r}")
        t_id = <str>id
    if event is not None:
        if not isinstance(event, str):
            raise TypeError(f"event must be a str, got {event!r}")
        t_event = <str>event
    if data is not None:
        t_data = as_text(data)
    if retry is not None:
        t_retry = check_retry(retry)
    csep = PyUnicode_AsUTF8AndSize(sep, &seplen)
    cdef Py_ssize_t start = b.size
    try:
        if t_comment is not None:
            write_lines(b, ": ", 2, t_comment, csep, seplen)
        if t_id is not None:
            write_single(b, "id: ", 4, t_id, csep, seplen)
        if t_event is not None:
            write_single(b, "event: ", 7, t_event, csep, seplen)
        if t_data is not None:
            write_lines(b, "data: ", 6, t_data, csep, seplen)
        if t_retry is not None:
            write_single(b, "retry: ", 7, t_retry, csep, seplen)
        buf_write(b, csep, seplen)
    except BaseException:
        b.size = start  # never leave half an event behind (e.g. a lone surrogate)
        raise
    return 0


cdef int write_dict(Buf* b, dict item, str sep) except -1:
    # Walk the (small) dict once; keys are usually the interned literals, so an
    # identity test settles them, with string equality as the fallback.
    cdef PyObject* k
    cdef PyObject* v
    cdef Py_ssize_t pos = 0
    cdef object data = None, event = None, id = None, retry = None, comment = None
    cdef object key
    while PyDict_Next(item, &pos, &k, &v):
        if k == <PyObject*>K_DATA:
            data = <object>v
        elif k == <PyObject*>K_ID:
            id = <object>v
        elif k == <PyObject*>K_EVENT:
            event = <object>v
        elif k == <PyObject*>K_RETRY:
            retry = <object>v
        elif k == <PyObject*>K_COMMENT:
            comment = <object>v
        elif k == <PyObject*>K_SEP:
            pass  # the response's separator wins (see _encoder_py._DICT_KEYS)
        else:
            key = <object>k
            if key == K_DATA:
                data = <object>v
            elif key == K_ID:
                id = <object>v
            elif key == K_EVENT:
                event = <object>v
            elif key == K_RETRY:
                retry = <object>v
            elif key == K_COMMENT:
                comment = <object>v
            elif key == K_SEP:
                pass
            else:
                raise TypeError(
                    f"event dict has an unexpected key {key!r}; allowed: data, event, id, retry, comment (and sep, ignored)"
                )
    return write_fields(b, data, event, id, retry, comment, sep)


cdef int write_bytes_like(Buf* b, object item) except -1:
    cdef Py_buffer view
    if type(item) is bytes:
        buf_write(b, PyBytes_AS_STRING(item), PyBytes_GET_SIZE(item))
        return 0
    PyObject_GetBuffer(item, &view, PyBUF_SIMPLE)
    try:
        buf_write(b, <const char*>view.buf, view.len)
    finally:
        PyBuffer_Release(&view)
    return 0


cdef int write_item(Buf* b, object item, str sep) except -1:
    cdef type tp = type(item)
    if tp is bytes or tp is bytearray or tp is memoryview:
        return write_bytes_like(b, item)
    if tp is dict:
        return write_dict(b, <dict>item, sep)
    if tp is str:
        return write_fields(b, item, None, None, None, None, sep)
    if _event_class is None:
        load_event_class()
    if _event_class is not None and isinstance(item, _event_class):
        if tp.encode is _event_encode:
            return write_fields(b, item.data, item.event, item.id, item.retry, item.comment, item._sep)
        return write_bytes_like(b, bytes(item.encode()))
    if isinstance(item, dict):
        return write_dict(b, dict(item), sep)
    return write_fields(b, str(item), None, None, None, None, sep)


cdef class EventBuffer:
    """Bytes of whole events waiting to be sent as one ``http.response.body``.

    See ``_encoder_py.EventBuffer``; this twin appends straight into one C buffer.
    """
    cdef Buf buf
    cdef public str sep
    cdef public Py_ssize_t count
    cdef public Py_ssize_t pings
    cdef public Py_ssize_t last_events
    cdef public Py_ssize_t last_pings

    def __cinit__(self, *args, **kwargs):
        self.buf.data = NULL
        self.buf.size = 0
        self.buf.cap = 0
        self.buf.on_stack = 0
        self.count = 0
        self.pings = 0
        self.last_events = 0
        self.last_pings = 0

    def __init__(self, sep="\r\n"):
        self.sep = check_sep(sep)

    def __dealloc__(self):
        if self.buf.data != NULL:
            PyMem_Free(self.buf.data)
            self.buf.data = NULL

    def __len__(self):
        """Bytes waiting to be taken."""
        return self.buf.size

    cpdef append(self, item):
        """Append one content item, encoded as ``encode_item`` does."""
        write_item(&self.buf, item, self.sep)
        self.count += 1

    def append_bytes(self, data):
        """Append preformatted bytes (``bytes``, ``bytearray`` or ``memoryview``)."""
        write_bytes_like(&self.buf, data)
        self.count += 1

    def append_ping(self, data):
        """Append a ping's preformatted bytes; counted in ``pings``, not in ``count``."""
        write_bytes_like(&self.buf, data)
        self.pings += 1

    def append_str(self, text):
        """Append ``str(text)`` as the ``data`` of one event."""
        write_fields(&self.buf, text, None, None, None, None, self.sep)
        self.count += 1

    def append_dict(self, dict item):
        """Append a dict of event fields (see ``encode_item``)."""
        write_dict(&self.buf, item, self.sep)
        self.count += 1

    def append_event(self, event):
        """Append a ``ServerSentEvent`` (encoded with its own separator)."""
        write_item(&self.buf, event, self.sep)
        self.count += 1

    def append_fields(self, data=None, event=None, id=None, retry=None, comment=None, sep=None):
        """Append one event built from its fields (see ``encode_fields``)."""
        write_fields(&self.buf, data, event, id, retry, comment, self.sep if sep is None else sep)
        self.count += 1

    cpdef bytes take(self):
        """Return everything appended so far as one ``bytes`` and empty the buffer."""
        cdef bytes out = PyBytes_FromStringAndSize(self.buf.data, self.buf.size)
        self.buf.size = 0
        self.last_events = self.count
        self.last_pings = self.pings
        self.count = 0
        self.pings = 0
        if self.buf.cap > RETAIN_BYTES:
            # give a batch's memory back instead of holding it for the stream's life
            PyMem_Free(self.buf.data)
            self.buf.data = NULL
            self.buf.cap = 0
        return out

    def clear(self):
        """Drop what is waiting (used only when the stream is being torn down)."""
        self.buf.size = 0
        self.count = 0
        self.pings = 0


cdef enum:
    MODE_ITEM = 0
    MODE_FIELDS = 1
    MODE_DICT = 2


cdef inline bytes encode_into_bytes(object item, object data, object event, object id,
                                     object retry, object comment, str sep, int mode):
    # a small event is written on the C stack: no malloc/free per call
    cdef char stack[STACK_BYTES]
    cdef Buf b
    b.data = stack
    b.size = 0
    b.cap = STACK_BYTES
    b.on_stack = 1
    try:
        if mode == MODE_DICT:
            write_dict(&b, <dict>item, sep)
        elif mode == MODE_FIELDS:
            write_fields(&b, data, event, id, retry, comment, sep)
        else:
            write_item(&b, item, sep)
        return PyBytes_FromStringAndSize(b.data, b.size)
    finally:
        if not b.on_stack and b.data != NULL:
            PyMem_Free(b.data)


def encode_fields(data=None, event=None, id=None, retry=None, comment=None, str sep="\r\n"):
    """Encode one event's fields as UTF-8 event stream bytes (see ``_encoder_py.encode_fields``)."""
    return encode_into_bytes(None, data, event, id, retry, comment, sep, MODE_FIELDS)


def encode_item(item, str sep="\r\n"):
    """Turn one content item into event stream bytes (see ``_encoder_py.encode_item``)."""
    return encode_item_c(item, sep)


cdef inline object encode_item_c(object item, str sep):
    cdef type tp = type(item)
    # the common items first: no isinstance walk, no second dispatch
    if tp is dict:
        return encode_into_bytes(item, None, None, None, None, None, sep, MODE_DICT)
    if tp is str:
        return encode_into_bytes(None, item, None, None, None, None, sep, MODE_FIELDS)
    if tp is bytes:
        return item
    if tp is bytearray or tp is memoryview:
        return bytes(item)
    if _event_class is None:
        load_event_class()
    if _event_class is not None and isinstance(item, _event_class) and tp.encode is not _event_encode:
        return bytes(item.encode())
    return encode_into_bytes(item, None, None, None, None, None, sep, MODE_ITEM)


cdef inline bint is_line_terminator(object sep):
    # "\r\n", "\r" or "\n", read as code points (no rich comparisons)
    cdef Py_ssize_t n
    cdef Py_UCS4 c0
    if type(sep) is not str:
        return False
    n = PyUnicode_GET_LENGTH(sep)
    if n == 1:
        c0 = PyUnicode_READ_CHAR(sep, 0)
        return c0 == 10 or c0 == 13
    return n == 2 and PyUnicode_READ_CHAR(sep, 0) == 13 and PyUnicode_READ_CHAR(sep, 1) == 10


def ensure_bytes(data, sep):
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
    if not is_line_terminator(sep):
        check_sep(sep)
    return encode_item_c(data, <str>sep)


cdef class LoopTurns:
    """Counts the turns of one event loop, for whoever needs to know that its task suspended.

    See ``_encoder_py.LoopTurns``.
    """
    cdef public Py_ssize_t turn
    cdef public bint pending
    cdef object _tick

    def __init__(self):
        self.turn = 0
        self.pending = False
        self._tick = self.tick

    def tick(self):
        """The loop callback: one more turn has run."""
        self.turn += 1
        self.pending = False

    cpdef Py_ssize_t stamp(self, loop):
        """The current turn; a later value means the loop has run callbacks since (the caller suspended)."""
        if not self.pending:
            self.pending = True
            loop.call_soon(self._tick)
        return self.turn


cdef enum:
    # the stream writer's phases (``_encoder_py.PHASES``)
    PH_STARTING = 0
    PH_PRODUCING = 1
    PH_DONE = 4


cdef class StreamBuffer(EventBuffer):
    """An ``EventBuffer`` shared by one stream's producer and writer task (see ``_encoder_py.StreamBuffer``)."""
    cdef public Py_ssize_t high
    cdef public Py_ssize_t inflight
    cdef public object wake
    cdef public object room
    cdef public bint closing
    cdef public object loop
    cdef public Py_ssize_t sent_events
    cdef public Py_ssize_t sent_pings
    cdef public object clock
    cdef public Py_ssize_t stamp
    cdef public bint slow
    cdef public object send
    cdef public object context
    cdef public bint own_send
    cdef public int phase
    cdef public bint stopped
    cdef public bint cut
    cdef public Py_ssize_t sent_bytes
    cdef public Py_ssize_t sends
    cdef public object send_started
    cdef public object on_start
    cdef public object on_sent
    cdef public object owner

    def __init__(self, sep="\r\n", high=65536, loop=None):
        self.sep = check_sep(sep)
        self.high = high
        self.inflight = 0
        self.wake = None
        self.room = None
        self.closing = False
        self.loop = loop
        self.sent_events = 0
        self.sent_pings = 0
        self.clock = None
        self.stamp = -1
        self.slow = False
        self.send = None
        self.context = None
        self.own_send = False
        self.phase = PH_STARTING
        self.stopped = False
        self.cut = False
        self.sent_bytes = 0
        self.sends = 0
        self.send_started = None
        self.on_start = None
        self.on_sent = None
        self.owner = None

    cpdef notify(self):
        """Wake the writer task if it is waiting for data (it runs once the caller suspends)."""
        cdef object fut = self.wake
        if fut is not None:
            self.wake = None
            if not fut.done():
                fut.set_result(None)

    cpdef room_made(self):
        """The send of the last ``take()`` completed: count its events and pings, wake the producer if it awaits room."""
        cdef object fut = self.room
        self.sent_events += self.last_events
        self.sent_pings += self.last_pings
        self.last_events = 0
        self.last_pings = 0
        if fut is not None:
            self.room = None
            if not fut.done():
                fut.set_result(None)

    cpdef bint claim(self, bytes data):
        """Reserve the stream's next send for ``data`` if the stream is idle (see ``_encoder_py``)."""
        if (self.phase == PH_PRODUCING and not self.stopped and self.inflight == 0 and self.buf.size == 0
                and self.wake is not None and not self.slow and self.send is not None):
            self.inflight = PyBytes_GET_SIZE(data)
            self.own_send = True
            return True
        return False

    cpdef release_claim(self):
        """Give up a claim that will not be sent (see ``_encoder_py``)."""
        self.own_send = False
        if not self.cut:
            self.inflight = 0
        if self.buf.size or self.closing:
            self.notify()

    cpdef send_claimed(self, bytes data):
        """Send ``data``, claimed by ``claim``, then what was buffered meanwhile (see ``_encoder_py``)."""
        cdef object rest
        if (self.stopped or self.phase != PH_PRODUCING) and (self.cut or self.phase >= PH_DONE):
            self.release_claim()
            return None
        rest = self.start_send(data, 1, self.context)
        if rest is None:
            return self.drain()
        return rest

    cpdef drain(self):
        """Send what was buffered while a fan-out send was pending, while no send suspends (see ``_encoder_py``)."""
        cdef object context = self.context
        cdef object rest
        while self.buf.size and not self.slow and not self.stopped:
            rest = self.start_send(self.take(), -1, context)
            if rest is not None:
                return rest
        if self.buf.size or self.closing:
            self.notify()
        return None

    cpdef start_send(self, bytes body, Py_ssize_t events, object context):
        """Start the send of ``body`` in the calling task (see ``_encoder_py.StreamBuffer.start_send``)."""
        cdef Py_ssize_t size = PyBytes_GET_SIZE(body)
        cdef Py_ssize_t turn
        cdef object aw
        cdef object waiting
        self.inflight = size
        self.own_send = True
        turn = (<LoopTurns?>self.clock).stamp(self.loop)
        if self.on_start is not None:
            self.on_start()
        try:
            aw = self.send({"type": "http.response.body", "body": body, "more_body": True})
            if type(aw) is not _COROUTINE:
                aw = aw.__await__()
            waiting = first_step_c(aw, context)
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

    cpdef send_done(self, Py_ssize_t size, Py_ssize_t events, Py_ssize_t turn, object context):
        """A send started by ``start_send`` completed: count it (see ``_encoder_py``)."""
        self.send_started = None
        self.own_send = False
        if self.stopped:
            self.owner.interrupt_producer()
        if self.cut:
            return
        self.inflight = 0
        self.sent_bytes += size
        self.sends += 1
        if events < 0:
            self.room_made()
        else:
            self.sent_events += events
        if (<LoopTurns?>self.clock).turn != turn:
            self.slow = True
        if self.on_sent is not None:
            self.on_sent()
        if context is None and (self.buf.size or self.closing):
            self.notify()


cdef object first_step_c(object awaitable, object context):
    cdef PyObject* result = NULL
    cdef int r
    cdef object value
    if context is not None:
        PyContext_Enter(context)
    try:
        r = PyIter_Send(awaitable, None, &result)
    finally:
        if context is not None:
            PyContext_Exit(context)
    if r == 1:
        value = <object>result
        Py_XDECREF(result)
        return value
    Py_XDECREF(result)
    return SENT


def first_step(awaitable, context):
    """Run the first step of ``awaitable`` in the calling task (see ``_encoder_py.first_step``).

    ``PyIter_Send``: a send that completes returns without a ``StopIteration``.
    """
    return first_step_c(awaitable, context)


async def produce(iterator, StreamBuffer sb):
    """Consume ``iterator`` with ``async for`` into ``sb``, under the caller's task (see ``_encoder_py.produce``).

    One coroutine, the loop inside: each level of coroutine between the task and the producer
    costs a pass on every suspension and resumption of an awaiting producer (issue 16).
    """
    cdef object fut
    cdef bint idle
    try:
        async for item in iterator:
            # see _encoder_py.produce: an awaiting producer's event goes out in this task
            idle = (sb.buf.size == 0 and not sb.slow and sb.inflight == 0 and sb.wake is not None
                    and sb.send is not None and (<LoopTurns?>sb.clock).turn != sb.stamp)
            write_item(&sb.buf, item, sb.sep)
            sb.count += 1
            if sb.clock is not None:
                sb.stamp = (<LoopTurns?>sb.clock).stamp(sb.loop)
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
            if sb.buf.size + sb.inflight >= sb.high:
                fut = sb.loop.create_future()
                sb.room = fut
                await fut
    except StopAsyncIteration:
        # Cython's ``async for`` lets a StopAsyncIteration raised by a plain
        # ``def __anext__`` escape, where Python's ends the loop
        return
