"""Broadcast: topics, encode once, replay after ``Last-Event-ID``, fan-out near the ASGI ceiling.

An event published to a topic is given an id (unless it has one), encoded
once per line separator, kept in the topic's history (a ring bounded by count,
bytes and optionally age) and handed to every subscriber as the same bytes
object:

- a subscriber streamed by sse_fast's ``EventSourceResponse`` on asyncio is
  *attached* to its stream's writer: when that writer is idle, the event goes
  to the fan-out (``_fanout.FanOut``: one task per round of publishing awaits
  every idle stream's ``send()`` in turn; no stream's task is woken; a send
  that suspends keeps its task, the rest of the round moves on); otherwise
  the bytes are appended to the stream's buffer and its writer is woken;
- any other consumer (trio, a wrapping generator, another response class)
  iterates the subscription as a plain async iterator of ``bytes``.

A subscriber that falls more than ``max_subscriber_bytes`` behind is cut (it
reconnects with ``Last-Event-ID`` and replay fills the hole) or, with
``on_slow="drop"``, loses what it had not been sent yet, with a gap event in
its place. A client whose ``Last-Event-ID`` is older than the history (or
unknown) first receives a gap event (``event: <gap_event>``, data: JSON with
the ``last_event_id`` it sent and the ``oldest`` id still kept), or what
``on_gap`` returns instead (a snapshot of the state, say).

Where events come from is the backend's business (``backends``): the memory
backend hands a publish to ``_dispatch`` at once; the Redis backend publishes
to a Redis Stream and its one reader per process calls ``_dispatch`` for every
entry, so the fan-out above is the same on both.
"""

from __future__ import annotations

import asyncio
import json
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from .. import _encoder
from .. import metrics as _metrics
from .._writer import STOP_SHUTDOWN
from ..event import ServerSentEvent
from ._fanout import FanOut
from .backends import backend_for_url

__all__ = ["Broadcast", "Subscription"]

_SEPS = ("\r\n", "\n", "\r")


class _Entry:
    """One published event: its id and its bytes per separator (encoded on first need)."""

    __slots__ = ("id", "seq", "item", "encoded", "size", "time")

    def __init__(self, seq: int, id: str | None, item: Any, now: float) -> None:
        self.seq = seq
        self.id = id
        self.item = item
        self.encoded: dict[str, bytes] = {}
        self.time = now
        self.size = len(self.bytes_for("\r\n"))

    def bytes_for(self, sep: str) -> bytes:
        data = self.encoded.get(sep)
        if data is None:
            data = self.encoded[sep] = _encode(self.item, self.id, sep)
        return data


def _encode(item: Any, id: str | None, sep: str) -> bytes:
    if isinstance(item, (bytes, bytearray, memoryview)):
        return bytes(item)  # preformatted: sent as it is
    if isinstance(item, ServerSentEvent):
        return _encoder.encode_fields(item.data, item.event, id if item.id is None else item.id,
                                      item.retry, item.comment, sep)
    if isinstance(item, dict):
        if id is not None and item.get("id") is None:
            item = {**item, "id": id}
        return _encoder.encode_item(item, sep)
    return _encoder.encode_fields(str(item), None, id, None, None, sep)


def _item_id(item: Any) -> str | None:
    if isinstance(item, ServerSentEvent):
        return item.id
    if isinstance(item, dict):
        value = item.get("id")
        if value is not None and not isinstance(value, str):
            raise TypeError(f"an event's id must be a str, got {value!r}")
        return value
    return None


def _metrics_register(broadcast: Broadcast) -> None:
    # subscribers per topic are read at scrape time (a weak reference; metrics enabled now or later)
    _metrics.register_broadcast(broadcast)


class _Topic:
    __slots__ = ("name", "history", "by_id", "history_bytes", "subscribers", "next_seq")

    def __init__(self, name: str) -> None:
        self.name = name
        self.history: deque[_Entry] = deque()
        self.by_id: dict[str, _Entry] = {}
        self.history_bytes = 0
        self.subscribers: set[Subscription] = set()
        self.next_seq = 1


class Broadcast:
    """Publish events to topics; every subscriber of a topic gets each event, encoded once.

    Args:
        history: events kept per topic for replay (count), >= 0.
        history_bytes: bytes of events kept per topic for replay, >= 0.
        history_seconds: drop events older than this from the history, or ``None``.
        max_subscriber_bytes: bytes a subscriber may fall behind (buffered plus
            in flight) before ``on_slow`` applies; >= 1.
        on_slow: ``"disconnect"`` (end its stream; it comes back with
            ``Last-Event-ID``) or ``"drop"`` (lose what was not sent, send a gap event).
        gap_event: the event type that signals a gap (replay impossible, or events dropped).
        on_gap: ``(topic, last_event_id) -> iterable of events`` sent instead of
            the gap event and the history when replay is impossible (a full
            state snapshot; live events follow it), or ``None``.
        inline_sends: deprecated, no effect (a ``DeprecationWarning``): the
            default fan-out reaches the ASGI ceiling without starting sends in
            the publisher's task (issue 16).
        url: the backend: ``None`` or ``"memory://"`` (this process only), or
            a Redis URL (``redis://host:6379/0``, ``rediss://...``,
            ``unix:///path``): every process and machine using the same Redis
            and ``key_prefix`` shares the topics and their history (Redis
            Streams; needs ``sse_fast[redis]``; asyncio only). See
            ``sse_fast.broadcast.backends.redis``.
        key_prefix: Redis only: the stream key of topic ``T`` is ``key_prefix + T``.
        publish_timeout: Redis only: seconds a publish may take before it
            fails with ``PublishError`` (> 0).

    Raises:
        ValueError, TypeError: an argument out of range or of the wrong type,
            an unknown URL scheme, or (Redis) ``history`` < 1.
        ImportError: a Redis URL without redis-py installed.

    One broadcast belongs to one event loop (the one it is first used on);
    ``publish_threadsafe`` reaches it from other threads. With Redis, each
    process holds one reader for all its topics, whatever its number of
    subscribers; ``await aclose()`` releases it.
    """

    def __init__(
        self,
        *,
        history: int = 1000,
        history_bytes: int = 1 << 20,
        history_seconds: float | None = None,
        max_subscriber_bytes: int = 256 * 1024,
        on_slow: str = "disconnect",
        gap_event: str = "sse_fast.gap",
        on_gap: Callable[[str, str], Iterable[Any]] | None = None,
        inline_sends: bool | None = None,
        url: str | None = None,
        key_prefix: str = "sse_fast:",
        publish_timeout: float = 5.0,
    ) -> None:
        for name, value, low in (("history", history, 0), ("history_bytes", history_bytes, 0),
                                 ("max_subscriber_bytes", max_subscriber_bytes, 1)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {value!r}")
            if value < low:
                raise ValueError(f"{name} must be >= {low}, got {value!r}")
        if history_seconds is not None and (isinstance(history_seconds, bool)
                                            or not isinstance(history_seconds, (int, float))
                                            or not history_seconds > 0):
            raise ValueError(f"history_seconds must be a number of seconds > 0 or None, got {history_seconds!r}")
        if on_slow not in ("disconnect", "drop"):
            raise ValueError(f"on_slow must be 'disconnect' or 'drop', got {on_slow!r}")
        if not isinstance(gap_event, str) or not gap_event or "\n" in gap_event or "\r" in gap_event:
            raise ValueError(f"gap_event must be a non-empty single-line str, got {gap_event!r}")
        if on_gap is not None and not callable(on_gap):
            raise TypeError(f"on_gap must be callable, got {on_gap!r}")
        self.history = history
        self.history_bytes = history_bytes
        self.history_seconds = history_seconds
        self.max_subscriber_bytes = max_subscriber_bytes
        self.on_slow = on_slow
        self.gap_event = gap_event
        self.on_gap = on_gap
        if inline_sends is not None:
            warnings.warn("Broadcast(inline_sends=...) is deprecated and has no effect: idle streams are "
                          "sent to by the fan-out task (issue 16)", DeprecationWarning, stacklevel=2)
        self._fanout: FanOut | None = None
        self._topics: dict[str, _Topic] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        options = {} if not isinstance(url, str) or url.startswith("memory:") else {
            "key_prefix": key_prefix, "publish_timeout": publish_timeout}
        #: where events come from: ``backends.memory.MemoryBackend`` or ``backends.redis.RedisBackend``
        self.backend = backend_for_url(self, url, **options)
        _metrics_register(self)

    # -- publishing -------------------------------------------------------------

    def publish(self, event: Any, topic: str = "default") -> Any:
        """Publish ``event`` to every subscriber of ``topic``; call it from the event loop's thread.

        Args:
            event: a ``ServerSentEvent``, a dict of fields (``data``, ``event``,
                ``id``, ``retry``, ``comment``), preformatted ``bytes`` (sent as
                they are, without an id), or any object (sent as ``data``).
            topic: the topic's name.

        Returns:
            Memory backend: the event's id (``str``): the one it carries, or
            the next number of the topic. Redis backend: an ``asyncio.Future``
            of the id (the one it carries, or the stream entry id); it fails
            with ``PublishError`` after ``publish_timeout`` seconds without
            Redis, and the failure is logged. ``await apublish(...)`` returns
            the id on both.

        Raises:
            TypeError, ValueError: the event cannot be encoded (nothing is sent).
        """
        self._bind()
        return self.backend.publish(event, topic)

    async def apublish(self, event: Any, topic: str = "default") -> str:
        """Publish and return the event's id once every process can see it (the same code on every backend).

        Raises:
            TypeError, ValueError: the event cannot be encoded (nothing is sent).
            PublishError: Redis did not take the event within ``publish_timeout`` seconds.
        """
        self._bind()
        return await self.backend.apublish(event, topic)

    async def aclose(self) -> None:
        """Release the backend's connections and tasks (Redis); open streams keep what they have."""
        await self.backend.aclose()

    def topic_subscriber_counts(self) -> dict[str, int]:
        """``{topic: subscribers now}`` for every topic with a subscriber (for metrics)."""
        return {name: len(t.subscribers) for name, t in list(self._topics.items()) if t.subscribers}

    def publish_threadsafe(self, event: Any, topic: str = "default") -> None:
        """``publish`` from any thread (sync code, a worker thread); returns at once.

        Raises:
            RuntimeError: the broadcast has not been used on an event loop yet,
                or that loop is closed.
        """
        if self.loop is None:
            raise RuntimeError("publish_threadsafe: the broadcast is not bound to an event loop yet "
                               "(subscribe or publish on the loop first)")
        schedule = getattr(self.loop, "call_soon_threadsafe", None) or self.loop.run_sync_soon  # trio token
        schedule(self.publish, event, topic)

    # -- subscribing ------------------------------------------------------------

    def subscribe(self, topic: str = "default", last_event_id: str | None = None, *,
                  retry: int | None = None) -> Subscription:
        """A subscription to ``topic``, to give to ``EventSourceResponse`` as its content.

        Args:
            topic: the topic's name.
            last_event_id: the ``Last-Event-ID`` the client sent: the events
                after it are replayed first, in order, then live ones.
            retry: a reconnection time (milliseconds) sent first, or ``None``.

        Raises:
            TypeError: ``last_event_id`` is not a str, or ``retry`` not an int.
            ValueError: ``retry`` is negative.
        """
        return Subscription(self, topic, last_event_id, retry=retry)

    def response(self, request: Any, topic: str = "default", *, retry: int | None = None, **kwargs: Any) -> Any:
        """``EventSourceResponse(self.subscribe(topic, <request's Last-Event-ID>, retry=retry), **kwargs)``.

        Args:
            request: a Starlette ``Request`` (its ``Last-Event-ID`` header is read).
            retry: a reconnection time (milliseconds) sent first, or ``None``.
            kwargs: ``EventSourceResponse``'s arguments (ping, send_timeout, ...).
        """
        from ..response import EventSourceResponse

        last = request.headers.get("last-event-id")
        return EventSourceResponse(self.subscribe(topic, last, retry=retry), **kwargs)

    def subscribers(self, topic: str = "default") -> int:
        """How many subscribers ``topic`` has now."""
        t = self._topics.get(topic)
        return 0 if t is None else len(t.subscribers)

    # -- internals --------------------------------------------------------------

    def _bind(self) -> None:
        if self.loop is None:
            try:
                self.loop = asyncio.get_running_loop()
            except RuntimeError:
                try:
                    import trio

                    self.loop = trio.lowlevel.current_trio_token()  # type: ignore[assignment]
                except (ImportError, RuntimeError):
                    pass

    def _topic(self, name: str) -> _Topic:
        t = self._topics.get(name)
        if t is None:
            if not isinstance(name, str):
                raise TypeError(f"topic must be a str, got {name!r}")
            t = self._topics[name] = _Topic(name)
        return t

    def _dispatch(self, t: _Topic, entry: _Entry, published_wall: float | None = None) -> None:
        """Remember ``entry`` and hand it to every subscriber of ``t`` (the backends call this)."""
        self._remember(t, entry)
        for sub in list(t.subscribers):
            sub._deliver(entry)
        m = _metrics.ACTIVE
        if m is not None:
            # publish-to-deliver (every subscriber here has it): from the publisher's clock
            # (Redis: another process, perhaps another machine) or from the publish call
            since = time.time() - published_wall if published_wall is not None else time.monotonic() - entry.time
            m.broadcast_delivery_seconds.observe(max(0.0, since))

    def _signal_gap(self, t: _Topic) -> None:
        """Tell every subscriber of ``t`` that events were lost (the backend could not deliver them).

        The gap event is encoded once per line separator, as a published event is.
        """
        by_sep: dict[str, list[bytes]] = {}
        signalled = 0
        for sub in list(t.subscribers):
            if sub._closed:
                continue
            gap = by_sep.get(sub._sep)
            if gap is None:
                gap = by_sep[sub._sep] = self._gap_events(t, None, sub._sep)
            sub._send_gap(gap)
            signalled += 1
        m = _metrics.ACTIVE
        if m is not None and signalled:
            m.broadcast_gaps.inc(signalled)

    def _remember(self, t: _Topic, entry: _Entry) -> None:
        if self.history == 0 or self.history_bytes == 0:
            return
        t.history.append(entry)
        t.history_bytes += entry.size
        if entry.id is not None:
            t.by_id[entry.id] = entry
        self._trim(t)

    def _trim(self, t: _Topic) -> None:
        h = t.history
        oldest_kept = None if self.history_seconds is None else time.monotonic() - self.history_seconds
        while h and (len(h) > self.history or t.history_bytes > self.history_bytes
                     or (oldest_kept is not None and h[0].time < oldest_kept)):
            old = h.popleft()
            t.history_bytes -= old.size
            if old.id is not None and t.by_id.get(old.id) is old:
                del t.by_id[old.id]

    def _replay(self, t: _Topic, last_event_id: str | None, sep: str) -> list[bytes]:
        """What a subscriber that saw ``last_event_id`` has missed, as bytes, gap first if any."""
        if last_event_id is None:
            return []
        self._trim(t)
        m = _metrics.ACTIVE
        entry = t.by_id.get(last_event_id)
        if entry is not None:
            out = [e.bytes_for(sep) for e in t.history if e.seq > entry.seq]
            if m is not None:
                m.broadcast_replayed_events.inc(len(out))
            return out
        # unknown or older than the history: a gap the client can see, then what
        # is kept; or the app's snapshot of the whole state, which the history
        # must not be applied to again
        out = self._gap(t, last_event_id, sep)
        if self.on_gap is None:
            out.extend(e.bytes_for(sep) for e in t.history)
            if m is not None:
                m.broadcast_replayed_events.inc(len(t.history))
        return out

    def _gap(self, t: _Topic, last_event_id: str | None, sep: str) -> list[bytes]:
        """``_gap_events``, counted as one gap signalled to a subscriber."""
        m = _metrics.ACTIVE
        if m is not None:
            m.broadcast_gaps.inc()
        return self._gap_events(t, last_event_id, sep)

    def _gap_events(self, t: _Topic, last_event_id: str | None, sep: str) -> list[bytes]:
        """The gap event's bytes (or ``on_gap``'s events for a reconnecting ``last_event_id``)."""
        if self.on_gap is not None and last_event_id is not None:
            return [_encoder.encode_item(item, sep) for item in self.on_gap(t.name, last_event_id)]
        oldest = t.history[0].id if t.history else None
        data = json.dumps({"last_event_id": last_event_id, "oldest": oldest}, separators=(",", ":"))
        return [_encoder.encode_fields(data, self.gap_event, None, None, None, sep)]


class Subscription:
    """One subscriber of a topic: the content of an ``EventSourceResponse``, or an async iterator of bytes.

    Made by ``Broadcast.subscribe``. Under sse_fast's response on asyncio it
    attaches to the stream's writer (see the module docstring); iterated by
    anything else it yields the encoded events (``bytes``, separator
    ``"\\r\\n"``). It unregisters itself when the stream ends (disconnect,
    shutdown, ``aclose()``).
    """

    def __init__(self, broadcast: Broadcast, topic: str, last_event_id: str | None, *,
                 retry: int | None = None) -> None:
        if last_event_id is not None and not isinstance(last_event_id, str):
            raise TypeError(f"last_event_id must be a str or None, got {last_event_id!r}")
        if not isinstance(topic, str):
            raise TypeError(f"topic must be a str, got {topic!r}")
        if retry is not None:
            _encoder.encode_fields(retry=retry)  # the encoder's own check, early
        self.retry = retry
        self._allowance = 0  # the replay backlog's bytes, allowed on top of max_subscriber_bytes
        self._wait: Any = None  # the attached stream's task waits on it; aclose() resolves it
        self.broadcast = broadcast
        self.topic = topic
        self.last_event_id = last_event_id
        self._writer: Any = None  # the attached stream writer
        self._sep = "\r\n"
        self._queue: deque[bytes] | None = None  # not attached: what waits for __anext__
        self._queued = 0
        self._ready: Any = None
        self._live = False
        self._closed = False

    # the response attaches its writer before streaming (sse_fast.response)
    def _sse_fast_attach(self, writer: Any) -> None:
        self._writer = writer
        self._sep = writer.sep

    # the generic (trio) path tells its separator only
    def _sse_fast_use_sep(self, sep: str) -> None:
        self._sep = sep

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> bytes:
        if not self._live:
            backend = self.broadcast.backend
            if backend.needs_prepare and not self._closed:
                # Redis: the topic's shared history is loaded (and, for a Last-Event-ID this
                # process has not seen yet, caught up) before going live in one step below
                await backend.prepare(self.topic, self.last_event_id)
            self._go_live()
        if self._writer is not None:
            # attached: the publisher delivers straight to the stream; this task
            # only waits until the stream ends (its cancellation unregisters)
            if not self._closed:
                self._wait = asyncio.get_running_loop().create_future()
                try:
                    await self._wait
                finally:
                    self._wait = None
                    self._leave()
            raise StopAsyncIteration
        return await self._next_queued()

    async def aclose(self) -> None:
        """Unregister and end the iteration (an attached stream then ends cleanly)."""
        self._leave()
        if self._ready is not None:
            self._ready.set()
        if self._wait is not None and not self._wait.done():
            self._wait.set_result(None)

    def _go_live(self) -> None:
        self._live = True
        if self._closed:
            return  # closed before it started: never registered
        b = self.broadcast
        b._bind()
        t = b._topic(self.topic)
        backlog = b._replay(t, self.last_event_id, self._sep)
        if self.retry is not None:
            backlog.insert(0, _encoder.encode_fields(retry=self.retry, sep=self._sep))
        # a reconnecting client's replay (at most history_bytes) must not count as falling behind
        self._allowance = sum(len(d) for d in backlog)
        # replay and registration in one step of the loop: no gap, no duplicate at the seam
        if self._writer is not None:
            sb = self._writer.buffer
            for data in backlog:
                sb.append_bytes(data)
            if backlog:
                sb.notify()
        else:
            self._queue = deque(backlog)
            self._queued = sum(len(d) for d in backlog)
        t.subscribers.add(self)

    def _leave(self) -> None:
        if not self._closed:
            self._closed = True
            t = self.broadcast._topics.get(self.topic)
            if t is not None:
                t.subscribers.discard(self)

    def _deliver(self, entry: _Entry) -> None:
        data = entry.bytes_for(self._sep)
        w = self._writer
        if w is not None:
            sb = w.buffer
            if sb.claim(data):
                # the stream was idle: the fan-out sends it (no writer task woken)
                fan = self.broadcast._fanout
                if fan is None or fan.loop is not w.loop:
                    fan = self.broadcast._fanout = FanOut(w.loop)
                fan.add(w, data)
                return
            if sb.stopped:
                return
            pending = len(sb) + sb.inflight
            # an event larger than the bound still goes to a subscriber that is keeping up
            if pending and pending + len(data) > self.broadcast.max_subscriber_bytes + self._allowance:
                self._slow(data)
                return
            sb.append_bytes(data)
            if not sb.own_send:
                # (else the send in flight wakes the writer when it ends: no wake per event)
                sb.notify()
            return
        q = self._queue
        if q is None:
            return
        if self._queued and self._queued + len(data) > self.broadcast.max_subscriber_bytes + self._allowance:
            self._slow(data)
            return
        q.append(data)
        self._queued += len(data)
        if self._ready is not None:
            self._ready.set()

    def _send_gap(self, gap: list[bytes]) -> None:
        """``gap`` (the gap event, encoded with this subscriber's separator) now, in order with what is queued."""
        w = self._writer
        if w is not None:
            if w.stop_reason is None:
                for g in gap:
                    w.buffer.append_bytes(g)
                w.buffer.notify()
        elif self._queue is not None:
            self._queue.extend(gap)
            self._queued += sum(len(g) for g in gap)
            if self._ready is not None:
                self._ready.set()

    def _slow(self, data: bytes) -> None:
        b = self.broadcast
        t = b._topics.get(self.topic)
        m = _metrics.ACTIVE
        if m is not None:
            m.broadcast_slow_subscribers.labels(action=b.on_slow).inc()
        if b.on_slow == "disconnect":
            self._leave()
            if self._writer is not None:
                # end the stream; the client reconnects with Last-Event-ID and replays
                self._writer.buffer.clear()
                self._writer.stop(STOP_SHUTDOWN)
            else:
                self._queue = None
                if self._ready is not None:
                    self._ready.set()
            return
        # "drop": what was not sent yet is lost, a gap event says so
        gap = b._gap(t, None, self._sep) if t is not None else []
        if self._writer is not None:
            sb = self._writer.buffer
            sb.clear()
            for g in gap:
                sb.append_bytes(g)
            sb.append_bytes(data)
            sb.notify()
        elif self._queue is not None:
            self._queue.clear()
            self._queue.extend(gap)
            self._queue.append(data)
            self._queued = sum(len(d) for d in self._queue)
            if self._ready is not None:
                self._ready.set()

    async def _next_queued(self) -> bytes:
        import anyio

        while True:
            q = self._queue
            if q is None or self._closed:
                raise StopAsyncIteration
            if q:
                data = q.popleft()
                self._queued -= len(data)
                return data
            self._ready = anyio.Event()
            try:
                await self._ready.wait()
            except BaseException:
                self._leave()
                raise

