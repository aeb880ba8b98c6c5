"""Prometheus metrics for sse_fast (optional: ``pip install "sse_fast[metrics]"``).

Off by default, and then free: ``ACTIVE`` is ``None``, every stream reads it
once when it starts and counts nothing. ``enable_metrics()`` creates the
metrics with `prometheus_client <https://github.com/prometheus/client_python>`_
(the exposition format, the registry, multiprocess mode are all its own) and
sets ``ACTIVE``; streams that start afterwards count, per send (one
``http.response.body`` message, usually a batch of events), never per event;
a running stream's counts reach the metrics within a second (one loop timer
while counts wait), an ended stream's before it is counted as ended::

    from sse_fast.metrics import enable_metrics
    enable_metrics()                       # prometheus_client's default REGISTRY
    ...
    return EventSourceResponse(gen(), metrics_route="news")   # the route label

    # serve them, e.g. app.mount("/metrics", prometheus_client.make_asgi_app())

Stream metrics (label ``route``: ``metrics_route=`` of the response, ``""``
when the app gives none; never taken from paths or ids, so the label values
stay as few as the app's routes):

- ``sse_fast_streams_open`` (gauge): streams running now;
- ``sse_fast_streams_opened_total``: streams started;
- ``sse_fast_streams_ended_total{route, reason}``: streams ended, by
  ``reason`` (see ``END_REASONS``);
- ``sse_fast_events_sent_total``: content items (events) whose send completed
  (a preformatted ``bytes`` item counts as one, whatever it holds; pings not included);
- ``sse_fast_sent_bytes_total``: body bytes whose send completed (pings included);
- ``sse_fast_sends_total``: completed ``http.response.body`` sends carrying data
  (the final empty one that ends the body is not counted);
- ``sse_fast_send_timeouts_total``: streams ended by ``SendTimeoutError``;
- ``sse_fast_pings_sent_total``: pings whose send completed.

A ``HEAD`` request is not a stream (no body, the iterator never starts):
nothing is counted for it.

Broadcast and Redis metrics (no label but ``action`` and ``topic``, below):
``sse_fast_broadcast_publishes_total``, ``sse_fast_broadcast_replayed_events_total``,
``sse_fast_broadcast_gaps_total``, ``sse_fast_broadcast_slow_subscribers_total{action}``
(``disconnect`` or ``drop``), ``sse_fast_broadcast_delivery_seconds`` (histogram,
publish to delivery), ``sse_fast_redis_reconnects_total``, ``sse_fast_redis_lag_seconds``
(gauge), and ``sse_fast_broadcast_subscribers{topic}`` (gauge), computed when
scraped from the broadcasts given to ``register_broadcast``. Topic names become
label values there: an app with a topic per user or per id gets one series per
topic with subscribers.

The names above use the default namespace ``sse_fast``; ``enable_metrics(namespace=...)``
changes that prefix.
"""

from __future__ import annotations

import logging
import re
import threading
import weakref
from typing import Any

__all__ = [
    "ACTIVE",
    "END_REASONS",
    "DELIVERY_BUCKETS",
    "Metrics",
    "StreamCounters",
    "enable_metrics",
    "disable_metrics",
    "register_broadcast",
]

logger = logging.getLogger("sse_fast")

#: the ``reason`` label values of ``streams_ended_total``. When several apply, the first of:
#: ``send_timeout`` (the response raised ``SendTimeoutError``), ``disconnect`` (the
#: client went away, or a send failed with ``OSError``), ``error`` (the iterator, a
#: send, the ping factory or the data sender raised), ``shutdown`` (server shutdown or
#: ``AppStatus.should_exit``; also a broadcast subscriber cut for being slow),
#: ``disconnect`` again for a cancellation from outside (the server gave up on the
#: request), ``complete`` (the iterator ended). See ``_writer.end_reason``.
END_REASONS = ("complete", "disconnect", "send_timeout", "shutdown", "error")

#: buckets (seconds) of ``broadcast_delivery_seconds``: 0.1 ms to 1 s
DELIVERY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

_NAMESPACE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

#: the enabled metrics, or ``None`` (the default): read by every stream when it starts
ACTIVE: Metrics | None = None

_lock = threading.Lock()
_broadcasts: list[weakref.ref[Any]] = []


class StreamCounters:
    """The metrics of one route, bound to its label value once (``Metrics.route``).

    A stream holds one, calls ``opened`` and ``ended`` once each and ``sent``
    for its completed sends (the asyncio writer adds them up in plain ints
    and calls it at most once per ``_writer.STATS_FLUSH_SECONDS``, and at the
    end); no label look-up on the way. Thread-safe (prometheus_client's
    values are).

    Attributes:
        route: the ``route`` label value.
    """

    __slots__ = ("route", "_open", "_opened", "_ended", "_events", "_bytes", "_sends", "_timeouts", "_pings")

    def __init__(self, metrics: Metrics, route: str) -> None:
        self.route = route
        self._open = metrics.streams_open.labels(route)
        self._opened = metrics.streams_opened.labels(route)
        self._ended = {reason: metrics.streams_ended.labels(route, reason) for reason in END_REASONS}
        self._events = metrics.events_sent.labels(route)
        self._bytes = metrics.sent_bytes.labels(route)
        self._sends = metrics.sends.labels(route)
        self._timeouts = metrics.send_timeouts.labels(route)
        self._pings = metrics.pings_sent.labels(route)

    def opened(self) -> None:
        """A stream of this route started: ``streams_opened_total`` + 1, ``streams_open`` + 1."""
        self._opened.inc()
        self._open.inc()

    def sent(self, nbytes: int, events: int, pings: int, sends: int = 1) -> None:
        """``sends`` sends completed, together ``nbytes`` body bytes carrying ``events`` events and ``pings`` pings."""
        self._sends.inc(sends)
        self._bytes.inc(nbytes)
        if events:
            self._events.inc(events)
        if pings:
            self._pings.inc(pings)

    def ended(self, reason: str) -> None:
        """A stream of this route ended for ``reason`` (one of ``END_REASONS``): ``streams_open`` - 1.

        Raises:
            ValueError: ``reason`` is not one of ``END_REASONS``.
        """
        child = self._ended.get(reason)
        if child is None:
            raise ValueError(f"reason must be one of {', '.join(END_REASONS)}, got {reason!r}")
        self._open.dec()
        child.inc()
        if reason == "send_timeout":
            self._timeouts.inc()


class Metrics:
    """sse_fast's prometheus_client metrics, registered in one registry (made by ``enable_metrics``).

    Attributes (prometheus_client objects; names with the default namespace):
        registry: the ``CollectorRegistry`` they are registered in.
        namespace: the prefix of every name.
        streams_open: ``Gauge`` ``sse_fast_streams_open{route}``, streams running
            (``multiprocess_mode="livesum"``).
        streams_opened: ``Counter`` ``sse_fast_streams_opened_total{route}``.
        streams_ended: ``Counter`` ``sse_fast_streams_ended_total{route,reason}``.
        events_sent: ``Counter`` ``sse_fast_events_sent_total{route}`` (events).
        sent_bytes: ``Counter`` ``sse_fast_sent_bytes_total{route}`` (bytes).
        sends: ``Counter`` ``sse_fast_sends_total{route}`` (``send()`` calls).
        send_timeouts: ``Counter`` ``sse_fast_send_timeouts_total{route}``.
        pings_sent: ``Counter`` ``sse_fast_pings_sent_total{route}``.
        broadcast_publishes: ``Counter`` ``sse_fast_broadcast_publishes_total``.
        broadcast_replayed_events: ``Counter`` ``sse_fast_broadcast_replayed_events_total``.
        broadcast_gaps: ``Counter`` ``sse_fast_broadcast_gaps_total`` (gap signalled to a subscriber).
        broadcast_slow_subscribers: ``Counter``
            ``sse_fast_broadcast_slow_subscribers_total{action}``, ``action`` =
            ``disconnect`` or ``drop``.
        broadcast_delivery_seconds: ``Histogram`` ``sse_fast_broadcast_delivery_seconds``
            (publish to delivery, seconds; ``DELIVERY_BUCKETS``).
        redis_reconnects: ``Counter`` ``sse_fast_redis_reconnects_total``.
        redis_lag_seconds: ``Gauge`` ``sse_fast_redis_lag_seconds``: seconds from
            the publish of the last event this process read from Redis to its
            reading (``multiprocess_mode="livemax"``: the worst process).
        broadcast_subscribers: the collector of ``sse_fast_broadcast_subscribers{topic}``
            (gauge, computed when scraped from ``register_broadcast``'s objects).

    Use ``route(name)`` for a route's bound stream counters.
    """

    def __init__(self, registry: Any, namespace: str) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.registry = registry
        self.namespace = namespace
        self._routes: dict[str, StreamCounters] = {}
        kw: dict[str, Any] = {"namespace": namespace, "registry": None}
        route = ("route",)
        self.streams_open = Gauge("streams_open", "Event streams running now.", route,
                                  multiprocess_mode="livesum", **kw)
        self.streams_opened = Counter("streams_opened", "Event streams started.", route, **kw)
        self.streams_ended = Counter(
            "streams_ended", "Event streams ended, by reason: " + ", ".join(END_REASONS) + ".",
            ("route", "reason"), **kw)
        self.events_sent = Counter("events_sent", "Events (content items) sent; pings not included.", route, **kw)
        self.sent_bytes = Counter("sent_bytes", "Body bytes sent, pings included.", route, **kw)
        self.sends = Counter("sends", "http.response.body sends carrying data (batches of events).", route, **kw)
        self.send_timeouts = Counter("send_timeouts", "Streams ended because a send exceeded send_timeout.",
                                     route, **kw)
        self.pings_sent = Counter("pings_sent", "Keep-alive pings sent.", route, **kw)
        self.broadcast_publishes = Counter("broadcast_publishes", "Events published to a broadcast.", **kw)
        self.broadcast_replayed_events = Counter(
            "broadcast_replayed_events", "Events replayed to subscribers after Last-Event-ID.", **kw)
        self.broadcast_gaps = Counter("broadcast_gaps", "Gaps signalled to subscribers (replay impossible "
                                      "or events dropped).", **kw)
        self.broadcast_slow_subscribers = Counter(
            "broadcast_slow_subscribers", "Subscribers that fell behind max_subscriber_bytes, by action "
            "(disconnect, drop).", ("action",), **kw)
        self.broadcast_delivery_seconds = Histogram(
            "broadcast_delivery_seconds", "Seconds from publish to delivery to a subscriber's stream.",
            buckets=DELIVERY_BUCKETS, **kw)
        self.redis_reconnects = Counter("redis_reconnects", "Reconnections of the Redis broadcast backend.", **kw)
        self.redis_lag_seconds = Gauge("redis_lag_seconds", "Seconds from the publish of the last event this "
                                       "process read from Redis to its reading.", multiprocess_mode="livemax", **kw)
        self.broadcast_subscribers = _SubscribersCollector(f"{namespace}_broadcast_subscribers")
        self._collectors: list[Any] = [
            self.streams_open, self.streams_opened, self.streams_ended, self.events_sent, self.sent_bytes,
            self.sends, self.send_timeouts, self.pings_sent, self.broadcast_publishes,
            self.broadcast_replayed_events, self.broadcast_gaps, self.broadcast_slow_subscribers,
            self.broadcast_delivery_seconds, self.redis_reconnects, self.redis_lag_seconds,
            self.broadcast_subscribers,
        ]

    def route(self, name: str) -> StreamCounters:
        """The stream counters bound to ``route=name`` (made once per route, then reused)."""
        counters = self._routes.get(name)
        if counters is None:
            counters = self._routes.setdefault(name, StreamCounters(self, name))
        return counters

    def _register(self) -> None:
        done = []
        try:
            for c in self._collectors:
                self.registry.register(c)
                done.append(c)
        except BaseException:
            for c in done:
                self.registry.unregister(c)
            raise

    def _unregister(self) -> None:
        for c in self._collectors:
            try:
                self.registry.unregister(c)
            except KeyError:
                pass  # unregistered by someone else meanwhile


class _SubscribersCollector:
    """``<namespace>_broadcast_subscribers{topic}``: a gauge read from the registered broadcasts at scrape time."""

    _DOC = "Subscribers per broadcast topic now (topics with at least one subscriber)."

    def __init__(self, name: str) -> None:
        self.name = name

    def describe(self) -> list[Any]:
        from prometheus_client.core import GaugeMetricFamily

        return [GaugeMetricFamily(self.name, self._DOC, labels=["topic"])]

    def collect(self) -> list[Any]:
        from prometheus_client.core import GaugeMetricFamily

        family = GaugeMetricFamily(self.name, self._DOC, labels=["topic"])
        totals: dict[str, int] = {}
        for obj in _live_broadcasts():
            counts = None
            for _ in range(3):  # a scrape from another thread may meet a topic being added
                try:
                    counts = obj.topic_subscriber_counts()
                    break
                except RuntimeError:
                    continue
                except Exception:
                    logger.exception("topic_subscriber_counts() of %r failed; left out of the scrape", obj)
                    break
            for topic, n in (counts or {}).items():
                totals[str(topic)] = totals.get(str(topic), 0) + n
        for topic in sorted(totals):
            family.add_metric([topic], totals[topic])
        return [family]


def _live_broadcasts() -> list[Any]:
    with _lock:
        alive = [(ref, ref()) for ref in _broadcasts]
        _broadcasts[:] = [ref for ref, obj in alive if obj is not None]
    return [obj for _, obj in alive if obj is not None]


def register_broadcast(obj: Any) -> None:
    """Include ``obj``'s subscribers per topic in ``sse_fast_broadcast_subscribers{topic}``.

    ``obj`` (a ``sse_fast.broadcast.Broadcast``) is held by a weak reference:
    registering never keeps it alive. Its ``topic_subscriber_counts() ->
    dict[str, int]`` is called at each scrape (from the scraping thread);
    counts of the same topic in several broadcasts are added up. Registering
    the same object twice counts it once. Works whether or not metrics are
    enabled (the gauge exists only while they are).

    Raises:
        TypeError: ``obj`` has no callable ``topic_subscriber_counts``, or
            cannot be weakly referenced.
    """
    if not callable(getattr(obj, "topic_subscriber_counts", None)):
        raise TypeError(f"register_broadcast needs an object with a topic_subscriber_counts() method, got {obj!r}")
    try:
        ref = weakref.ref(obj)
    except TypeError:
        raise TypeError(f"register_broadcast needs an object that can be weakly referenced, got {obj!r}") from None
    with _lock:
        if not any(r() is obj for r in _broadcasts):
            _broadcasts.append(ref)


def enable_metrics(registry: Any = None, *, namespace: str = "sse_fast") -> Metrics:
    """Create sse_fast's metrics in ``registry`` and count every stream started from now on.

    Idempotent: a second call with the same registry and namespace returns
    the same ``Metrics``. Streams already running stay uncounted.

    Args:
        registry: a ``prometheus_client.CollectorRegistry``; ``None``: the
            default ``prometheus_client.REGISTRY`` (what ``make_asgi_app()``,
            ``generate_latest()`` and ``start_http_server()`` serve).
        namespace: prefix of every metric name (``<namespace>_streams_open``, ...):
            letters, digits and ``_``, not starting with a digit.

    Returns:
        The ``Metrics`` now in ``ACTIVE``.

    Raises:
        ImportError: prometheus_client is not installed (``pip install "sse_fast[metrics]"``).
        TypeError: ``namespace`` is not a ``str``.
        ValueError: ``namespace`` is not a valid metric name prefix, or a metric
            of that name is already in ``registry`` (from other code).
        RuntimeError: metrics are enabled already with another registry or
            namespace (``disable_metrics()`` first).
    """
    global ACTIVE
    if not isinstance(namespace, str):
        raise TypeError(f"namespace must be a str, got {namespace!r}")
    if not _NAMESPACE.fullmatch(namespace):
        raise ValueError(f"namespace must be letters, digits and '_', not starting with a digit "
                         f"(a Prometheus metric name prefix), got {namespace!r}")
    try:
        import prometheus_client
    except ImportError as exc:
        raise ImportError(
            'sse_fast metrics need prometheus_client: pip install "sse_fast[metrics]" '
            f"(or prometheus-client>=0.20); import failed: {exc}"
        ) from exc
    if registry is None:
        registry = prometheus_client.REGISTRY
    with _lock:
        current = ACTIVE
        if current is not None:
            if current.registry is registry and current.namespace == namespace:
                return current
            raise RuntimeError(
                f"sse_fast metrics are already enabled (namespace {current.namespace!r} in registry "
                f"{current.registry!r}); call disable_metrics() before enabling them with "
                f"namespace {namespace!r} in {registry!r}"
            )
        metrics = Metrics(registry, namespace)
        metrics._register()
        ACTIVE = metrics
        return metrics


def disable_metrics() -> None:
    """Stop counting new streams and remove sse_fast's metrics from their registry (for tests).

    ``ACTIVE`` becomes ``None``; streams already running keep counting into
    the unregistered objects (no longer exposed). No-op when not enabled.
    """
    global ACTIVE
    with _lock:
        current = ACTIVE
        ACTIVE = None
        if current is not None:
            current._unregister()
