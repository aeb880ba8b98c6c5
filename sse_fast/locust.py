"""Locust users that hold Server-Sent Events streams and report them to locust's statistics.

Install with the extra: ``pip install "sse_fast[locust]"``.

:class:`SSEUser` opens an event stream (one raw gevent socket per stream, HTTP/1.1, the response
head and chunked transfer coding decoded by geventhttpclient's C parser), feeds the body to the
project's incremental WHATWG event-stream parser (:mod:`sse_fast._parser`), and reports to locust:

=========================  ====================================================================
row (type ``SSE``)          one entry per ...; *response time* column is ...
=========================  ====================================================================
``<name> connect``          connection attempt; ms from the start to the response head.
                            A failure when connecting fails, the status is not 200 or the
                            ``Content-Type`` is not ``text/event-stream``.
``<name> first event``      connection that dispatched an event; ms from the start of the
                            request to the first event.
``<name> event:<type>``     dispatched event (``event_stats = "type"``, the default; at most
                            ``max_event_types`` rows, then ``event:(other)``), or
``<name> events``           dispatched event, all types in one row (``event_stats = "stream"``).
                            Delivery latency in ms (receive time minus the send time that the
                            event carries, see :meth:`SSEUser.event_sent_at`), or, when the event
                            carries none, ms waited for it (since the previous event or the
                            response head). The size column counts body bytes since the
                            previous event (so the row's bytes add up to the stream's bytes).
``<name> ping``             read that started with a comment line and dispatched no event
                            (keep-alive pings); ms since the previous bytes on the stream.
``<name> disconnect``       stream that ended (the server closed it, a network error, a read
                            timeout); a failure unless ``stream_end_is_failure`` is false and the
                            server ended the response cleanly; response time = stream lifetime.
=========================  ====================================================================

``event_stats = "batch"`` logs the events of one socket read into the ``<name> events`` row in
one step (exact counts and bytes; every event of the read gets the read's mean latency, or the
ms since the previous read; listeners of locust's ``request`` event do not see these entries).
It costs ~0.1-1 us per event instead of ~4 us per fired entry: use it for firehose streams.
``event_stats = "off"`` fires no per-event entries (only the counters on the user object).

After a drop the user reconnects as a browser's ``EventSource`` does: it waits the reconnection
time (the server's last ``retry`` field, else :attr:`SSEUser.default_retry` seconds) and sends
``Last-Event-ID`` when the last event ID is not empty. A non-200 status or a wrong content type
is not retried within the task (browsers give up there); locust runs the task again after
``wait_time``.
"""

from __future__ import annotations

try:
    import gevent
    import gevent.socket
    import gevent.ssl
    from geventhttpclient.response import HTTPResponse
    from locust import User, constant, task
    from locust.stats import bucket_response_time
except ImportError as exc:  # pragma: no cover - exercised in a subprocess without locust
    raise ImportError(
        "sse_fast.locust needs locust (and its gevent/geventhttpclient); "
        'install the extra: pip install "sse_fast[locust]"'
    ) from exc

import os
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from sse_fast._parser import EventStreamParser

try:  # orjson parses the small JSON payloads ~3x faster; optional
    from orjson import loads as _json_loads
except ImportError:  # pragma: no cover - depends on the environment
    from json import loads as _json_loads

__all__ = ["SSEUser", "StreamDropped", "StreamRejected"]

_EVENT_STATS_MODES = ("type", "stream", "batch", "off")


class StreamDropped(Exception):
    """The event stream ended: the server closed it, or it stopped sending within the read timeout."""


class StreamRejected(Exception):
    """The server answered the stream request with a non-200 status or a non event-stream type."""


class _Response(HTTPResponse):
    """geventhttpclient's llhttp parser: response head plus de-chunked body pieces in ``body``."""

    def __init__(self) -> None:
        super().__init__("GET")
        self.body: list[bytes] = []

    def _on_body(self, buf: bytearray) -> None:
        self.body.append(bytes(buf))


class _Target:
    """A parsed stream URL: host, port, TLS flag and the request target (path + query)."""

    __slots__ = ("scheme", "hostname", "port", "host_header", "target")

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"stream URL must be an absolute http:// or https:// URL, got {url!r} "
                "(set the user's host, or locust's --host, and a path starting with '/')"
            )
        self.scheme = parts.scheme
        self.hostname = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.host_header = parts.netloc.rpartition("@")[2]
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        self.target = target


def _check_stats_mode(value: object) -> str:
    if value not in _EVENT_STATS_MODES:
        raise ValueError(f"event_stats must be one of {_EVENT_STATS_MODES}, got {value!r}")
    return value  # type: ignore[return-value]


class _Watch:
    """What the watchdog knows of one open stream (all times ``time.monotonic()`` seconds)."""

    __slots__ = ("sock", "last", "read_timeout", "deadline", "expired")

    def __init__(self, sock: Any, read_timeout: float | None, deadline: float | None) -> None:
        self.sock = sock
        self.last = time.monotonic()
        self.read_timeout = read_timeout
        self.deadline = deadline
        self.expired = ""  # "read_timeout" or "deadline" once the watchdog closed the socket


class _Watchdog:
    """One greenlet per process that closes streams silent for longer than their read timeout
    or past their deadline (checked every ``tick`` seconds).

    A per-recv socket timeout would arm and cancel a gevent timer on every read (~15% of the
    client's CPU per event in fan-out runs); this costs one pass over the open streams per tick.
    Closing the socket wakes the reading greenlet with an ``OSError``; ``_Watch.expired`` says why.
    """

    tick = 0.25

    def __init__(self) -> None:
        self.streams: set[_Watch] = set()
        self.pid = os.getpid()
        self.greenlet = gevent.spawn(self._run)

    @classmethod
    def get(cls) -> _Watchdog:
        dog = _WATCHDOG.get("dog")
        if dog is None or dog.pid != os.getpid() or dog.greenlet.dead:
            dog = _WATCHDOG["dog"] = cls()
        return dog

    def _run(self) -> None:
        while True:
            gevent.sleep(self.tick)
            now = time.monotonic()
            for watch in list(self.streams):
                if watch.deadline is not None and now >= watch.deadline:
                    watch.expired = "deadline"
                elif watch.read_timeout is not None and now - watch.last > watch.read_timeout:
                    watch.expired = "read_timeout"
                else:
                    continue
                self.streams.discard(watch)
                try:
                    watch.sock.close()
                except OSError:  # pragma: no cover - already closed
                    pass


_WATCHDOG: dict[str, _Watchdog] = {}


class SSEUser(User):
    """A locust user that holds one event stream at a time and reports it to locust's statistics.

    Subclass it and set :attr:`path` (and locust's ``host``); its task :meth:`stream_task` calls
    :meth:`stream`, which holds the stream until the test stops (reconnecting after drops), or
    until ``max_events`` / ``stream_duration`` ends it. Write your own ``@task`` calling
    :meth:`stream` with arguments to mix streams and requests.

    Class attributes (override in a subclass):

    - ``path`` (str): the stream's path and query (``"/events?interval=1"``) on ``host``, or an
      absolute ``http(s)://`` URL.
    - ``stream_name`` (str | None): the row name prefix in locust's tables; default ``path``.
    - ``headers`` (Mapping[str, str]): extra request headers (``Authorization``, cookies...).
    - ``event_stats`` (``"type"`` | ``"stream"`` | ``"batch"`` | ``"off"``): one entry per
      event in a row per event type, one entry per event in one row for the stream, one
      statistics update per socket read in one row, or none (see the module docstring).
    - ``max_event_types`` (int): distinct ``event:<type>`` rows before ``event:(other)``.
    - ``sent_at_field`` (str | None): JSON object field in ``data`` holding the server's send
      time in seconds since the epoch (``time.time()``); ``None`` skips JSON decoding.
    - ``report_pings`` (bool): fire ``<name> ping`` entries.
    - ``reconnect`` (bool): reconnect after a drop, as ``EventSource`` does.
    - ``default_retry`` (float, seconds): reconnection time until the server sends ``retry``.
    - ``stream_end_is_failure`` (bool): a stream that the server ends cleanly counts as a failure
      (right for endless streams; set false for finite ones).
    - ``connect_timeout`` (float, seconds): TCP connect + response head timeout.
    - ``read_timeout`` (float | None, seconds): a stream silent that long is dropped (a failure).
    - ``recv_size`` (int, bytes): socket read size.
    - ``max_events`` (int | None), ``stream_duration`` (float | None, seconds): end each
      :meth:`stream` call after that many events / that long (no failure); ``None``: endless.

    Counters on each user: ``events_received``, ``bytes_received`` (body bytes),
    ``connections`` (successful), ``drops``, plus the stream state ``last_event_id`` (str) and
    ``retry`` (float seconds).
    """

    abstract = True
    wait_time = constant(1)

    path: str = "/"
    stream_name: str | None = None
    headers: Mapping[str, str] = {}
    request_type: str = "SSE"
    event_stats: str = "type"
    max_event_types: int = 20
    sent_at_field: str | None = "t"
    report_pings: bool = True
    reconnect: bool = True
    default_retry: float = 3.0
    stream_end_is_failure: bool = True
    connect_timeout: float = 10.0
    read_timeout: float | None = None
    recv_size: int = 65536
    max_events: int | None = None
    stream_duration: float | None = None

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        _check_stats_mode(self.event_stats)
        self.events_received = 0
        self.bytes_received = 0
        self.connections = 0
        self.drops = 0
        self.last_event_id = ""
        self.retry = float(self.default_retry)
        self._fire = environment.events.request.fire
        self._rows: dict[str, str] = {}

    # -- hooks -------------------------------------------------------------------------------

    def on_event(self, event: Any) -> None:
        """Called with every dispatched event (``.event``, ``.data``, ``.id``, ``.retry``).

        The default does nothing. Override to check contents; raising
        :class:`locust.exception.StopUser` or other exceptions ends the stream like a drop.
        """

    def event_sent_at(self, event: Any) -> float | None:
        """Return the server's send time of ``event`` in seconds since the epoch, or ``None``.

        The default reads :attr:`sent_at_field` from a JSON object in ``event.data`` (data
        starting with ``{``); anything else gives ``None``. Override for other formats. The
        latency is only meaningful when the server's and this machine's clocks agree.
        """
        field = self.sent_at_field
        data = event.data
        if field is None or not data or data[0] != "{":
            return None
        try:
            value = _json_loads(data)
        except ValueError:
            return None
        if isinstance(value, dict):
            sent = value.get(field)
            if isinstance(sent, (int, float)) and not isinstance(sent, bool):
                return float(sent)
        return None

    # -- the task ------------------------------------------------------------------------------

    @task
    def stream_task(self) -> None:
        """The default task: :meth:`stream` with the class attributes."""
        self.stream()

    def stream(
        self,
        path: str | None = None,
        *,
        name: str | None = None,
        headers: Mapping[str, str] | None = None,
        max_events: int | None = None,
        duration: float | None = None,
    ) -> int:
        """Hold one event stream, reconnecting after drops, and report it; return events received.

        Args:
            path: path + query on ``host`` or an absolute URL; default :attr:`path`.
            name: row name prefix; default :attr:`stream_name`, else the path.
            headers: extra request headers, added to :attr:`headers`.
            max_events: return after this many events (over reconnects); default
                :attr:`max_events`; ``None``: no limit.
            duration: return after this many seconds; default :attr:`stream_duration`.

        Returns when a limit is reached, when the server rejects the request
        (:class:`StreamRejected` is reported as a failure, not raised), or after a drop when
        :attr:`reconnect` is false. Raises ``ValueError`` for a bad URL or limit, before
        connecting.
        """
        path = self.path if path is None else path
        if path.startswith(("http://", "https://")):
            url = path
        else:
            if not self.host:
                raise ValueError(
                    f"{type(self).__name__}.host is not set: pass --host http://HOST:PORT to "
                    "locust or set host on the class"
                )
            if not path.startswith("/"):
                raise ValueError(f"path must start with '/' or be an absolute URL, got {path!r}")
            url = self.host.rstrip("/") + path
        target = _Target(url)
        if name is None:
            name = self.stream_name or path
        max_events = self.max_events if max_events is None else max_events
        if max_events is not None and (not isinstance(max_events, int) or max_events < 1):
            raise ValueError(f"max_events must be a positive int or None, got {max_events!r}")
        duration = self.stream_duration if duration is None else duration
        if duration is not None and not duration > 0:
            raise ValueError(f"duration must be a positive number of seconds, got {duration!r}")
        _check_stats_mode(self.event_stats)

        extra = dict(self.headers)
        if headers:
            extra.update(headers)
        deadline = None if duration is None else time.monotonic() + duration
        received = 0
        while True:
            left = None if max_events is None else max_events - received
            got, outcome = self._hold(target, name, extra, left, deadline)
            received += got
            if outcome != "dropped" or not self.reconnect:
                return received
            pause = self.retry
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= pause:
                    if remaining > 0:
                        gevent.sleep(remaining)
                    return received
            gevent.sleep(pause)

    # -- one connection ------------------------------------------------------------------------

    def _request_bytes(self, target: _Target, extra: Mapping[str, str]) -> bytes:
        lines = [
            f"GET {target.target} HTTP/1.1",
            f"Host: {target.host_header}",
            "Accept: text/event-stream",
            "Cache-Control: no-store",
            "Accept-Encoding: identity",
            "User-Agent: sse_fast-locust",
        ]
        if self.last_event_id:
            lines.append(f"Last-Event-ID: {self.last_event_id}")
        for key, value in extra.items():
            lines.append(f"{key}: {value}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")

    def _open(self, target: _Target) -> Any:
        sock = gevent.socket.create_connection(
            (target.hostname, target.port), timeout=self.connect_timeout
        )
        if target.scheme == "https":
            context = gevent.ssl.create_default_context()
            sock = context.wrap_socket(sock, server_hostname=target.hostname)
        return sock

    def _report(
        self, name: str, response_time: float, length: int, exc: BaseException | None = None
    ) -> None:
        self._fire(
            request_type=self.request_type,
            name=name,
            response_time=response_time,
            response_length=length,
            exception=exc,
            context={},
        )

    def _row(self, prefix: str, event_type: str) -> str:
        key = prefix + "\0" + event_type
        row = self._rows.get(key)
        if row is None:
            if self.event_stats == "stream":
                row = f"{prefix} events"
            elif sum(1 for k in self._rows if k.startswith(prefix + "\0")) < self.max_event_types:
                row = f"{prefix} event:{event_type}"
            else:
                row = f"{prefix} event:(other)"
            self._rows[key] = row
        return row

    def _hold(
        self,
        target: _Target,
        name: str,
        extra: Mapping[str, str],
        max_events: int | None,
        deadline: float | None,
    ) -> tuple[int, str]:
        """One connection: returns (events, outcome) with outcome "done", "dropped" or "rejected"."""
        perf = time.perf_counter
        started = perf()
        sock = None
        try:
            try:
                sock = self._open(target)
                sock.sendall(self._request_bytes(target, extra))
                http = _Response()
                while not http.headers_complete:
                    data = sock.recv(self.recv_size)
                    if not data:
                        raise StreamDropped("connection closed before the response head")
                    http.feed(data)
            except Exception as exc:  # network errors, parse errors, timeouts
                self._report(f"{name} connect", (perf() - started) * 1000.0, 0, exc)
                return 0, "dropped"
            head_at = perf()
            status = http.get_code()
            ctype = http.get("content-type") or ""
            if isinstance(ctype, list):
                ctype = ctype[0]
            if status != 200 or ctype.split(";", 1)[0].strip().lower() != "text/event-stream":
                self._report(
                    f"{name} connect",
                    (head_at - started) * 1000.0,
                    0,
                    StreamRejected(f"HTTP {status}, Content-Type {ctype!r}"),
                )
                return 0, "rejected"
            self._report(f"{name} connect", (head_at - started) * 1000.0, 0)
            self.connections += 1
            sock.settimeout(None)
            return self._read_events(
                sock, http, target, name, started, head_at, max_events, deadline
            )
        finally:
            if sock is not None:
                try:
                    sock.close()
                except OSError:
                    pass

    def _read_events(
        self,
        sock: Any,
        http: _Response,
        target: _Target,
        name: str,
        started: float,
        head_at: float,
        max_events: int | None,
        deadline: float | None,
    ) -> tuple[int, str]:
        perf = time.perf_counter
        wall = time.time
        fire = self._fire
        rtype = self.request_type
        parser = EventStreamParser()
        parser.last_event_id = self.last_event_id
        mode = self.event_stats
        per_event = mode in ("type", "stream")
        call_hook = type(self).on_event is not SSEUser.on_event
        latency_on = mode != "off" and (
            self.sent_at_field is not None or type(self).event_sent_at is not SSEUser.event_sent_at
        )
        # events are only built when something looks at them
        count_only = not (per_event or latency_on or call_hook)
        sent_at = self.event_sent_at
        on_event = self.on_event
        report_pings = self.report_pings
        ping_row = f"{name} ping"
        first_row = f"{name} first event"
        batch_row = f"{name} events"
        stats = self.environment.stats
        rows = self._rows
        row_for = self._row
        ctx: dict[str, Any] = {}
        recv = sock.recv
        recv_size = self.recv_size
        feed_http = http.feed
        feed_events = parser.feed
        count_events = parser.feed_count
        sleep = gevent.sleep

        count = 0  # events on this connection
        pending = 0  # body bytes not yet attributed to a statistics entry
        last_at = head_at  # perf_counter() of the previous event (or of the response head)
        last_bytes_at = head_at
        outcome = "dropped"
        error: BaseException | None = None
        reads = 0
        full = False
        mono = time.monotonic
        watch = None
        if self.read_timeout is not None or deadline is not None:
            watch = _Watch(sock, self.read_timeout, deadline)
            _Watchdog.get().streams.add(watch)
        try:
            while True:
                chunks = http.body
                if chunks:
                    http.body = []
                    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                    size = len(body)
                    pending += size
                    self.bytes_received += size
                    if count_only:
                        n = count_events(body)
                        events = None
                    else:
                        events = feed_events(body)
                        n = len(events)
                    now = perf()
                    if n:
                        if max_events is not None and count + n > max_events:
                            n = max_events - count
                            if events is not None:
                                del events[n:]
                        if count == 0:
                            fire(
                                request_type=rtype,
                                name=first_row,
                                response_time=(now - started) * 1000.0,
                                response_length=0,
                                exception=None,
                                context=ctx,
                            )
                        count += n
                        self.events_received += n
                        total_latency = 0.0
                        timed = 0
                        if events is not None:
                            now_wall = wall()
                            for ev in events:
                                rt = None
                                if latency_on:
                                    sent = sent_at(ev)
                                    if sent is not None:
                                        rt = (now_wall - sent) * 1000.0
                                        if rt < 0.0:
                                            rt = 0.0
                                        total_latency += rt
                                        timed += 1
                                if per_event:
                                    if rt is None:
                                        rt = (now - last_at) * 1000.0
                                    row = rows.get(name + "\0" + ev.event) or row_for(
                                        name, ev.event
                                    )
                                    fire(
                                        request_type=rtype,
                                        name=row,
                                        response_time=rt,
                                        response_length=pending,
                                        exception=None,
                                        context=ctx,
                                    )
                                    pending = 0
                                    last_at = now
                                if call_hook:
                                    on_event(ev)
                        if mode == "batch":
                            if timed:
                                rt = total_latency / timed
                            else:
                                rt = (now - last_at) * 1000.0
                            _log_many(stats, rtype, batch_row, n, rt, pending)
                            pending = 0
                        last_at = now
                        if max_events is not None and count >= max_events:
                            # the last delivered event's id: later events may have been dropped
                            self.last_event_id = events[-1].id if events else parser.last_event_id
                            if parser.retry is not None:
                                self.retry = parser.retry / 1000.0
                            outcome = "done"
                            break
                    elif report_pings and body[:1] == b":" and not parser.pending:
                        fire(
                            request_type=rtype,
                            name=ping_row,
                            response_time=(now - last_bytes_at) * 1000.0,
                            response_length=pending,
                            exception=None,
                            context=ctx,
                        )
                        pending = 0
                    last_bytes_at = now
                    self.last_event_id = parser.last_event_id
                    if parser.retry is not None:
                        self.retry = parser.retry / 1000.0
                    # let the other users run: a socket that always has data never blocks;
                    # a read that did not fill the buffer drained the socket, and the next
                    # recv() will most likely wait (and switch) anyway
                    reads += 1
                    if full or not reads & 15:
                        sleep(0)
                if http.message_complete:
                    error = StreamDropped(f"the server ended the stream after {count} events")
                    if not self.stream_end_is_failure:
                        outcome = "ended"
                    break
                try:
                    data = recv(recv_size)
                except OSError as exc:
                    if watch is None or not watch.expired:
                        raise
                    if watch.expired == "deadline":
                        outcome = "done"
                        break
                    error = StreamDropped(f"no data for {self.read_timeout} s (read_timeout)")
                    error.__cause__ = exc
                    break
                if watch is not None:
                    watch.last = mono()
                if not data:
                    error = StreamDropped(
                        f"the connection closed after {count} events (no end of the response)"
                    )
                    break
                full = len(data) >= recv_size
                feed_http(data)
        except Exception as exc:  # network errors, parse errors, exceptions from on_event
            error = exc
            outcome = "dropped"
        finally:
            if watch is not None:
                _Watchdog.get().streams.discard(watch)
        if outcome != "done":
            self.drops += 1
            lifetime = (perf() - started) * 1000.0
            if outcome == "ended":
                self._report(f"{name} disconnect", lifetime, pending)
                outcome = "dropped"  # reconnect like EventSource, without a failure
            else:
                self._report(f"{name} disconnect", lifetime, pending, error)
        return count, outcome


def _log_many(
    stats: Any, method: str, name: str, n: int, response_time: float, length: int
) -> None:
    """Log ``n`` requests with the same response time (ms) and ``length`` bytes in all, at once.

    Does what ``n`` calls of locust's ``RequestStats.log_request`` would, for the named entry and
    the total, in one step (``event_stats = "batch"``). Listeners of ``events.request`` do not
    see these entries.
    """
    now = time.time()
    second = int(now)
    bucket = bucket_response_time(response_time)
    for entry in (stats.total, stats.entries[(name, method)]):
        last = entry.last_request_timestamp
        if entry.use_response_times_cache and last and second > int(last):
            entry._cache_response_times(second - 1)
        entry.num_requests += n
        entry.num_reqs_per_sec[second] += n
        entry.last_request_timestamp = now
        entry.total_response_time += response_time * n
        if entry.min_response_time is None or response_time < entry.min_response_time:
            entry.min_response_time = response_time
        if response_time > entry.max_response_time:
            entry.max_response_time = response_time
        entry.response_times[bucket] += n
        entry.total_content_length += length
