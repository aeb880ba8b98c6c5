"""The Redis backend: one Redis Stream per topic, shared by every process and machine.

Layout: topic ``T`` is the stream ``<key_prefix>T``. ``publish`` is an
``XADD ... MAXLEN ~ <history>`` of the event's fields (below); each process
reads every stream it has subscribers for with **one** ``XREAD BLOCK`` loop on
one connection (not one per client), and hands each entry to its local
subscribers through the same encode-once fan-out as the memory backend. Every
process therefore sees a topic's events in the stream's order.

The SSE id of an event is the id the app gave it, or else the stream entry id
(``"1732420000000-0"``), so ``Last-Event-ID`` means the same in every process.
Each process keeps a mirror of each topic's history (the last ``history``
entries, loaded with ``XREVRANGE`` when the topic gets its first subscriber
here, then kept by the reader), and replays from it, as the memory backend
does. A ``Last-Event-ID`` the mirror does not know yet (the client saw an
event on a faster process) is looked up again once this process's reader has
caught up with the stream's newest entry; only then is it a gap.

Stream entry fields (UTF-8): ``d`` data, ``e`` event type, ``i`` the app's id,
``r`` retry (decimal milliseconds), ``c`` comment, or ``b`` for preformatted
bytes (sent as they are); ``t`` the publisher's wall clock (``time.time()``,
seconds), for the lag and publish-to-deliver figures; ``n`` the topic's
ordinal: a publish is one Lua script (``PUBLISH_SCRIPT``) that increments the
topic's counter in the hash ``<key_prefix>__seq__`` and adds the entry with
it, atomically. A reader that finds ``n`` jump knows that entries were trimmed
(``MAXLEN``) before it read them, whether it was cut off or only slow, and
signals a gap to its subscribers instead of skipping them silently. Topic
names starting with ``__`` are reserved (the counters, the readers' wake-up
streams).

Faults: when Redis is unreachable the open streams stay open (their pings go
on); the reader retries with exponential backoff (0.05 s doubling to 2 s) and
resumes after the last entry it delivered, so nothing still in the stream is
lost. A publish that cannot complete within ``publish_timeout`` seconds fails
with ``PublishError``; it is never dropped silently (the failure is also
logged). Entries trimmed away before a reader read them are signalled to its
subscribers as a gap event (see ``n`` above). Not for Redis Cluster: the
script touches two keys.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

from ... import _encoder
from ... import metrics as _metrics
from ...event import ServerSentEvent
from .._core import _Entry  # loaded first (sse_fast.broadcast imports it before this module)

__all__ = ["RedisBackend", "RedisPublisher", "PublishError", "event_fields", "stream_key"]

log = logging.getLogger("sse_fast.broadcast")

#: XREAD BLOCK time (milliseconds); the reader's socket timeout is this plus a margin
BLOCK_MS = 5000
#: entries taken per XREAD
READ_COUNT = 1000
#: reconnect backoff: first wait and cap (seconds)
BACKOFF_FIRST, BACKOFF_MAX = 0.05, 2.0
#: seconds between two log lines about gaps in one topic (every gap is still signalled and counted)
GAP_LOG_SECONDS = 10.0


class PublishError(RuntimeError):
    """A publish that did not reach Redis within the time allowed; the event was not published
    (or its fate is unknown: it may have been added just before the connection failed)."""


def _import_redis() -> Any:
    try:
        import redis.asyncio as aioredis
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError("the Redis backend needs redis-py: pip install 'sse_fast[redis]'") from exc
    return aioredis


#: ``KEYS[1]`` the stream, ``KEYS[2]`` the counters' hash; ``ARGV[1]`` the topic, ``ARGV[2]``
#: MAXLEN, then field/value pairs: the topic's next ordinal and the entry, in one step
PUBLISH_SCRIPT = """
local n = redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
local args = {'XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'n', n}
for i = 3, #ARGV do args[#args + 1] = ARGV[i] end
return redis.call(unpack(args))
"""


def stream_key(key_prefix: str, topic: str) -> str:
    """The Redis Stream key of ``topic``.

    Raises:
        TypeError: ``topic`` is not a str.
        ValueError: ``topic`` starts with ``__`` (reserved).
    """
    if not isinstance(topic, str):
        raise TypeError(f"topic must be a str, got {topic!r}")
    if topic.startswith("__"):
        raise ValueError(f"topic names starting with '__' are reserved by the Redis backend, got {topic!r}")
    return key_prefix + topic


def seq_key(key_prefix: str) -> str:
    """The hash of the topics' ordinals (field: topic, value: the last ordinal given)."""
    return key_prefix + "__seq__"


def _script_args(topic: str, maxlen: int, fields: dict) -> list:
    args: list = [topic, maxlen]
    for k, v in fields.items():
        args += [k, v]
    return args


def event_fields(event: Any) -> dict[str, str | bytes]:
    """The stream entry fields of ``event`` (see the module docstring), checked by encoding it once.

    Args:
        event: what ``Broadcast.publish`` accepts: a ``ServerSentEvent``, a dict
            of fields, preformatted bytes, or any object (its ``str`` is the data).

    Raises:
        TypeError, ValueError: the event cannot be encoded (a bad field), as
            the memory backend would raise; nothing is published.
    """
    if isinstance(event, (bytes, bytearray, memoryview)):
        return {"b": bytes(event)}
    if isinstance(event, ServerSentEvent):
        data, kind, eid, retry, comment = event.data, event.event, event.id, event.retry, event.comment
    elif isinstance(event, dict):
        _encoder.encode_item(event)  # unknown keys and bad fields raise the encoder's errors
        data, kind, eid, retry, comment = (event.get("data"), event.get("event"), event.get("id"),
                                           event.get("retry"), event.get("comment"))
    else:
        data, kind, eid, retry, comment = str(event), None, None, None, None
    if eid is not None and not isinstance(eid, str):
        raise TypeError(f"an event's id must be a str, got {eid!r}")
    # the exact rules of the encoder, and the same str() of data and comment it applies
    _encoder.encode_fields(data, kind, eid, retry, comment)
    out: dict[str, str | bytes] = {}
    if data is not None:
        out["d"] = str(data)
    if kind is not None:
        out["e"] = kind
    if eid is not None:
        out["i"] = eid
    if retry is not None:
        out["r"] = str(retry)
    if comment is not None:
        out["c"] = str(comment)
    return out


def entry_item(entry_id: str, fields: dict[bytes, bytes]) -> tuple[str | None, Any, float | None]:
    """``(sse_id, item, published_at)`` of a stream entry, ``item`` as the memory backend holds it.

    Raises:
        ValueError: the entry was not written by sse_fast (no known field).
    """
    t = fields.get(b"t")
    published = float(t) if t is not None else None
    raw = fields.get(b"b")
    if raw is not None:
        return None, raw, published

    def text(key: bytes) -> str | None:
        v = fields.get(key)
        return None if v is None else v.decode("utf-8")

    if not any(k in fields for k in (b"d", b"e", b"i", b"r", b"c")):
        raise ValueError(f"stream entry {entry_id} has no sse_fast field: {sorted(fields)!r}")
    r = text(b"r")
    item = ServerSentEvent(text(b"d"), event=text(b"e"), retry=None if r is None else int(r), comment=text(b"c"))
    eid = text(b"i")
    return (entry_id if eid is None else eid), item, published


def _parse_id(entry_id: str | bytes) -> tuple[int, int]:
    if isinstance(entry_id, bytes):
        entry_id = entry_id.decode()
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _redis_errors() -> tuple[type[BaseException], ...]:
    import redis.exceptions as rx

    return (rx.ConnectionError, rx.TimeoutError, OSError, TimeoutError)


class _Pending:
    __slots__ = ("key", "fields", "future", "deadline", "given_id", "topic")

    def __init__(self, key: str, topic: str, fields: dict, future: asyncio.Future, deadline: float) -> None:
        self.key = key
        self.topic = topic
        self.fields = fields
        self.future = future
        self.deadline = deadline
        given = fields.get("i")
        self.given_id = given if isinstance(given, str) else None


class RedisBackend:
    """Broadcast over Redis Streams (see the module docstring).

    Args:
        broadcast: the ``Broadcast`` it serves (its ``history`` is the ``MAXLEN``).
        url: a redis-py URL: ``redis://[user:password@]host[:port][/db]``,
            ``rediss://...`` (TLS), ``unix:///path/to/socket``; query options as redis-py reads them.
        key_prefix: prefix of the stream keys (``"sse_fast:"``): apps sharing
            a Redis keep apart by prefix.
        publish_timeout: seconds a publish may take before it fails with
            ``PublishError`` (> 0); also the connect timeout.

    Raises:
        ValueError: a bad URL (redis-py's parser) or ``publish_timeout`` <= 0,
            or ``history`` < 1 (a Redis topic needs at least the newest entry).
        ImportError: redis-py is not installed.

    Needs an asyncio event loop (redis-py's asyncio client): under trio the
    first publish or subscription raises ``RuntimeError``.
    """

    needs_prepare = True

    def __init__(self, broadcast: Any, url: str, *, key_prefix: str = "sse_fast:",
                 publish_timeout: float = 5.0) -> None:
        aioredis = _import_redis()
        if isinstance(publish_timeout, bool) or not isinstance(publish_timeout, (int, float)) \
                or not publish_timeout > 0:
            raise ValueError(f"publish_timeout must be a number of seconds > 0, got {publish_timeout!r}")
        if not isinstance(key_prefix, str):
            raise TypeError(f"key_prefix must be a str, got {key_prefix!r}")
        if broadcast.history < 1:
            raise ValueError(f"history must be >= 1 with the Redis backend (it is the stream's MAXLEN), "
                             f"got {broadcast.history!r}")
        self.broadcast = broadcast
        #: the URL with any password masked (for messages)
        self.url = _safe_url(url)
        self.key_prefix = key_prefix
        self.publish_timeout = float(publish_timeout)
        self.maxlen = broadcast.history
        # two clients: XREAD BLOCK holds its connection for seconds, publishes must not wait behind it
        self._client = aioredis.from_url(url, socket_connect_timeout=self.publish_timeout,
                                         socket_timeout=self.publish_timeout)
        self._reader = aioredis.from_url(url, socket_connect_timeout=self.publish_timeout,
                                         socket_timeout=BLOCK_MS / 1000 + self.publish_timeout,
                                         max_connections=4)
        self._last: dict[str, str] = {}  # stream key -> id of the last entry delivered here
        # stream key -> ordinal (field n) of the last entry delivered here: a jump is a gap
        self._seq: dict[str, int] = {}
        self._seq_key = seq_key(key_prefix)
        self._gap_logged: dict[str, float] = {}  # stream key -> when its last gap was logged
        # this process's wake-up stream: the reader's XREAD includes it, so adding a topic
        # (or closing) wakes the blocked XREAD by an XADD here instead of cancelling a command
        self._wake_key = f"{key_prefix}__reader__:{uuid.uuid4().hex}"
        self._topic_of: dict[str, str] = {}
        self._loading: dict[str, asyncio.Future] = {}
        self._waiters: list[tuple[str, tuple[int, int], asyncio.Future]] = []
        self._reader_task: asyncio.Task | None = None
        self._pending: list[_Pending] = []
        self._publisher_task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        #: reconnections of the reader after a failure, and whether it is cut off now
        self.reconnects = 0
        self.connected = True
        #: seconds between the newest delivered entry's publish and its delivery here
        self.lag_seconds = 0.0

    # -- publishing ---------------------------------------------------------------

    def _loop_now(self) -> asyncio.AbstractEventLoop:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError("the Redis broadcast backend needs a running asyncio event loop "
                               "(redis-py's asyncio client; not trio). From code with no loop, "
                               "use sse_fast.broadcast.RedisPublisher") from None
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:
            raise RuntimeError("this Redis broadcast is bound to another event loop")
        if self._closed:
            raise RuntimeError("this broadcast was closed (aclose())")
        return loop

    def publish(self, event: Any, topic: str) -> asyncio.Future:
        """Queue ``event`` for ``XADD``; returns a future of its id (app-given or the entry id).

        Publishes from one process reach Redis in the order they were made.
        The future fails with ``PublishError`` when Redis does not take the
        event within ``publish_timeout`` seconds; the failure is logged too,
        so an unawaited publish never fails silently.

        Raises:
            TypeError, ValueError: the event cannot be encoded (nothing queued).
            RuntimeError: no running asyncio loop.
        """
        loop = self._loop_now()
        key = stream_key(self.key_prefix, topic)
        fields = event_fields(event)
        fields["t"] = repr(time.time())
        fut = loop.create_future()
        fut.add_done_callback(_retrieve)
        self._pending.append(_Pending(key, topic, fields, fut, loop.time() + self.publish_timeout))
        if self._publisher_task is None:
            self._publisher_task = loop.create_task(self._publish_loop())
        return fut

    async def apublish(self, event: Any, topic: str) -> str:
        """Publish and wait until Redis has it; returns the event's id.

        Raises:
            PublishError: Redis did not take it within ``publish_timeout`` seconds.
            TypeError, ValueError: the event cannot be encoded.
        """
        return await self.publish(event, topic)

    async def _publish_loop(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                now = loop.time()
                live = []
                for p in batch:
                    if p.deadline <= now:
                        self._fail(p, TimeoutError(f"not sent within {self.publish_timeout} s"))
                    else:
                        live.append(p)
                if not live:
                    continue
                try:
                    # one pipeline per batch: every publish made while the previous one was in flight
                    async with asyncio.timeout_at(min(p.deadline for p in live)):
                        ids = await self._execute(live)
                except Exception as exc:  # every failure fails the whole batch: none is dropped silently
                    for p in live:
                        self._fail(p, exc)
                    continue
                for p, entry_id in zip(live, ids, strict=True):
                    if not p.future.done():
                        p.future.set_result(p.given_id or entry_id.decode())
                m = _metrics.ACTIVE
                if m is not None:
                    m.broadcast_publishes.inc(len(live))
        finally:
            self._publisher_task = None
            if self._pending and not self._closed:  # cancelled with work left: start again
                self._publisher_task = loop.create_task(self._publish_loop())

    async def _execute(self, live: list[_Pending]) -> list:
        import redis.exceptions as rx

        for attempt in (1, 2):
            pipe = self._client.pipeline(transaction=False)
            for p in live:
                # EVAL, not EVALSHA: no SCRIPT LOAD round trip; Redis caches the compiled script
                pipe.eval(PUBLISH_SCRIPT, 2, p.key, self._seq_key, *_script_args(p.topic, self.maxlen, p.fields))
            try:
                return await pipe.execute()
            except rx.ConnectionError:
                if attempt == 2:
                    raise
                # a pooled connection that died while idle (a partition, a Redis restart) fails at
                # its first use: drop the pool's connections and try once more on a new one (if
                # the first try had gone through after all, the event is there twice: at least once)
                await self._client.connection_pool.disconnect()
        raise AssertionError("unreachable")

    def _fail(self, p: _Pending, exc: BaseException) -> None:
        if isinstance(exc, (TimeoutError, TimeoutError)):
            why = f"Redis did not answer within {self.publish_timeout} s"
        else:
            why = f"{type(exc).__name__}: {exc}"
        err = PublishError(f"publish to topic {p.topic!r} failed: {why} ({self.url})")
        err.__cause__ = exc
        log.error("%s", err)
        if not p.future.done():
            p.future.set_exception(err)

    # -- subscribing --------------------------------------------------------------

    async def prepare(self, topic: str, last_event_id: str | None) -> None:
        """Make ``topic`` live in this process (history loaded, reader on it) and, for an
        unknown ``last_event_id``, catch up with the stream first; then the caller goes live
        in the same step of the loop, so replay and live events meet with no gap and no
        duplicate.

        Raises:
            RuntimeError: no running asyncio loop.
        """
        self._loop_now()
        key = stream_key(self.key_prefix, topic)
        if key not in self._last:
            fut = self._loading.get(key)
            if fut is None:
                fut = self._loading[key] = asyncio.ensure_future(self._load(topic, key))
                # a load that failed (not a connection error: those are retried) is tried again next time
                fut.add_done_callback(lambda f, key=key: f.cancelled() or f.exception() is None
                                      or self._loading.pop(key, None))
            await asyncio.shield(fut)
        if last_event_id is not None:
            t = self.broadcast._topics.get(topic)
            if t is None or last_event_id not in t.by_id:
                await self._catch_up(key)

    async def _load(self, topic: str, key: str) -> None:
        """The topic's history from Redis into the local mirror, then the reader on it."""
        b = self.broadcast
        backoff = BACKOFF_FIRST
        errors = _redis_errors()
        while True:
            try:
                # one transaction: the entries-added count belongs to the newest entry read
                # one transaction: the ordinal read is the newest entry's
                pipe = self._client.pipeline(transaction=True)
                pipe.xrevrange(key, count=b.history)
                pipe.hget(self._seq_key, topic)
                newest_first, seq = await pipe.execute()
                break
            except errors as exc:
                log.warning("Redis unreachable loading topic %r (%s); retrying in %.2f s", topic, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
        t = b._topic(topic)
        for entry_id, fields in reversed(newest_first):
            self._take(t, entry_id.decode(), fields, deliver=False)
        self._last[key] = newest_first[0][0].decode() if newest_first else "0-0"
        self._seq[key] = int(seq) if seq is not None else 0
        self._topic_of[key] = topic
        self._loading.pop(key, None)
        await self._wake_reader()

    async def _catch_up(self, key: str) -> None:
        """Wait until this process has delivered the stream's newest entry (bounded)."""
        try:
            async with asyncio.timeout(self.publish_timeout):
                newest = await self._client.xrevrange(key, count=1)
                if not newest:
                    return
                target = _parse_id(newest[0][0])
                if _parse_id(self._last[key]) >= target:
                    return
                fut = asyncio.get_running_loop().create_future()
                self._waiters.append((key, target, fut))
                await fut
        except (*_redis_errors(), TimeoutError) as exc:
            # the id may still exist; without Redis it cannot be told: the subscriber gets the gap event
            log.warning("Redis catch-up on %r failed (%s): an unknown Last-Event-ID counts as a gap", key, exc)

    async def _wake_reader(self) -> None:
        """Start the reader, or make its XREAD return so that it reads the new set of streams."""
        if self._reader_task is None:
            self._last.setdefault(self._wake_key, "0-0")
            self._reader_task = asyncio.get_running_loop().create_task(self._read_loop())
            return
        try:
            async with asyncio.timeout(self.publish_timeout):
                pipe = self._client.pipeline(transaction=False)
                pipe.xadd(self._wake_key, {"w": "1"}, maxlen=1)
                pipe.expire(self._wake_key, 3600)  # a crashed process's wake stream goes away
                await pipe.execute()
        except (*_redis_errors(), TimeoutError):
            pass  # the reader is between retries: it reads the new set on its next try

    async def _read_loop(self) -> None:
        errors = _redis_errors()
        backoff = BACKOFF_FIRST
        b = self.broadcast
        while not self._closed:
            try:
                resp = await self._reader.xread(dict(self._last), count=READ_COUNT, block=BLOCK_MS)
            except errors as exc:
                if self.connected:
                    log.warning("Redis unreachable (%s): streams stay open, reconnecting", exc)
                    self.connected = False
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            except Exception:  # a reply this code did not expect: never let the reader die
                log.exception("Redis reader: unexpected error; retrying in %.2f s", backoff)
                self.connected = False
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            if not self.connected:
                self.connected = True
                self.reconnects += 1
                _metric_inc("redis_reconnects")
                log.warning("Redis reachable again: resumed after the last delivered entries")
            backoff = BACKOFF_FIRST
            try:
                for key, entries in _streams_of(resp):
                    topic = self._topic_of.get(key)
                    if topic is not None:
                        t = b._topic(topic)
                        for entry_id, fields in entries:
                            self._check_seq(key, t, fields)
                            eid = entry_id.decode()
                            self._take(t, eid, fields, deliver=True)
                            self._last[key] = eid  # per entry: a retry never delivers one twice
                    self._last[key] = entries[-1][0].decode()
            except Exception:  # never let the reader die: read again from the last entry delivered
                log.exception("Redis reader: could not handle a reply; retrying in %.2f s", backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            if resp and _metrics.ACTIVE is not None:
                _metrics.ACTIVE.redis_lag_seconds.set(self.lag_seconds)
            if self._waiters:
                self._wake_waiters()

    def _check_seq(self, key: str, t: Any, fields: dict[bytes, bytes]) -> None:
        """A gap event to the topic's subscribers when entries before this one were trimmed unread."""
        raw = fields.get(b"n")
        if raw is None:  # not written through PUBLISH_SCRIPT: nothing to check against
            return
        n = int(raw)
        last = self._seq.get(key, 0)
        self._seq[key] = n
        if n != last + 1 and last:
            # a jump forward: trimmed before this process read them; backward: Redis lost
            # its data and the counter started again, so what came in between is unknown
            self.broadcast._signal_gap(t)
            now = time.monotonic()
            if now - self._gap_logged.get(key, -GAP_LOG_SECONDS) >= GAP_LOG_SECONDS:
                # an overloaded reader meets a hole per read: one line per topic per period
                self._gap_logged[key] = now
                log.warning("topic %r: entries %d..%d were trimmed before this process read them "
                            "(or Redis lost its data): gap signalled (raise history, or publish less; "
                            "further gaps of this topic are not logged for %g s)",
                            t.name, last + 1, n - 1, GAP_LOG_SECONDS)

    def _take(self, t: Any, entry_id: str, fields: dict[bytes, bytes], *, deliver: bool) -> None:
        b = self.broadcast
        try:
            sse_id, item, published = entry_item(entry_id, fields)
            entry = _Entry(t.next_seq, sse_id, item, time.monotonic())
        except (TypeError, ValueError, UnicodeDecodeError) as exc:
            # written by something else under our prefix: never sent as a malformed event
            log.error("skipping stream entry %s of topic %r: %s", entry_id, t.name, exc)
            return
        t.next_seq += 1
        if published is not None:
            self.lag_seconds = max(0.0, time.time() - published)
        if deliver:
            b._dispatch(t, entry, published_wall=published)
        else:
            b._remember(t, entry)

    def _wake_waiters(self) -> None:
        keep = []
        for key, target, fut in self._waiters:
            if fut.done():
                continue
            if _parse_id(self._last.get(key, "0-0")) >= target:
                fut.set_result(None)
            else:
                keep.append((key, target, fut))
        self._waiters = keep

    async def aclose(self) -> None:
        """Stop the reader and the publisher (failing what is still queued) and close the connections."""
        if self._closed:
            return
        self._closed = True
        reader = self._reader_task
        if reader is not None:
            await self._wake_reader()  # its XREAD returns and the loop ends
            done, _ = await asyncio.wait({reader}, timeout=1.0)
            if not done:  # Redis is unreachable: the loop sleeps between retries
                reader.cancel()
                await asyncio.wait({reader}, timeout=1.0)
        tasks = [t for t in (self._publisher_task, *self._loading.values()) if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)
        for p in self._pending:
            self._fail(p, RuntimeError("the broadcast was closed"))
        self._pending = []
        try:
            async with asyncio.timeout(self.publish_timeout):
                await self._client.delete(self._wake_key)
        except (*_redis_errors(), TimeoutError):
            pass  # it expires within the hour
        await self._reader.aclose()
        await self._client.aclose()


def _streams_of(resp: Any) -> list[tuple[str, list]]:
    """``[(stream key, non-empty [(entry id, fields), ...]), ...]`` of an XREAD reply.

    RESP2 (redis-py's default) replies ``[[key, entries], ...]``; RESP3
    (``protocol=3`` in the URL) ``{key: [entries]}``.
    """
    out = []
    if isinstance(resp, dict):
        pairs = [(k, v[0] if v and isinstance(v[0], list) else v) for k, v in resp.items()]
    else:
        pairs = [(k, v) for k, v in resp or ()]
    for raw_key, entries in pairs:
        if entries:
            out.append((raw_key.decode() if isinstance(raw_key, bytes) else raw_key, entries))
    return out


def _retrieve(fut: asyncio.Future) -> None:
    # the failure is logged where it happens; an unawaited future must not warn again at GC
    if not fut.cancelled():
        fut.exception()


def _safe_url(url: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        parts = parts._replace(netloc=netloc)
    return urlunsplit(parts)


def _metric_inc(name: str) -> None:
    m = _metrics.ACTIVE
    if m is not None:
        getattr(m, name).inc()


class RedisPublisher:
    """Publish to a Redis-backed broadcast from code with no event loop (a script, a Celery or RQ job).

    Uses redis-py's blocking client; one instance may be shared by threads.

    Args:
        url: the same Redis URL the servers' ``Broadcast(url=...)`` uses.
        key_prefix: the same key prefix as the servers' broadcast.
        history: the stream's ``MAXLEN`` (the servers' ``history``), >= 1.
        timeout: seconds a publish may take (connect, then the reply) before
            ``PublishError`` (> 0); no retries, so a publish fails within about
            twice this when Redis is unreachable.

    Raises:
        ValueError: a bad URL, ``history`` < 1 or ``timeout`` <= 0.
        ImportError: redis-py is not installed (``pip install 'sse_fast[redis]'``).
    """

    def __init__(self, url: str, *, key_prefix: str = "sse_fast:", history: int = 1000,
                 timeout: float = 5.0) -> None:
        try:
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry
        except ImportError as exc:  # pragma: no cover
            raise ImportError("RedisPublisher needs redis-py: pip install 'sse_fast[redis]'") from exc
        if isinstance(history, bool) or not isinstance(history, int) or history < 1:
            raise ValueError(f"history must be an int >= 1, got {history!r}")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")
        if not isinstance(key_prefix, str):
            raise TypeError(f"key_prefix must be a str, got {key_prefix!r}")
        #: the URL with any password masked (for messages)
        self.url = _safe_url(url)
        self.key_prefix = key_prefix
        self.history = history
        self.timeout = float(timeout)
        self._redis = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout,
                                           retry=Retry(NoBackoff(), 0))

    def publish(self, event: Any, topic: str = "default") -> str:
        """Publish ``event`` to ``topic``; returns its id (the app's, or the stream entry id).

        Raises:
            PublishError: Redis did not take it in time (the cause is chained).
            TypeError, ValueError: the event cannot be encoded (nothing is sent).
        """
        import redis.exceptions as rx

        key = stream_key(self.key_prefix, topic)
        fields = event_fields(event)
        fields["t"] = repr(time.time())
        try:
            entry_id = self._redis.eval(PUBLISH_SCRIPT, 2, key, seq_key(self.key_prefix),
                                        *_script_args(topic, self.history, fields))
        except (rx.ConnectionError, rx.TimeoutError, OSError) as exc:
            raise PublishError(f"publish to topic {topic!r} failed: {type(exc).__name__}: {exc} "
                               f"({self.url})") from exc
        given = fields.get("i")
        return given if isinstance(given, str) else entry_id.decode()

    def close(self) -> None:
        """Close the connection."""
        self._redis.close()

    def __enter__(self) -> RedisPublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
