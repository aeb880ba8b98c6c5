"""Fan-out: every client receives the same broadcast events; delivery latency.

Each user holds one stream of ``/fanout?interval=0.1&size=100`` (the server broadcasts an event
to every client every 0.1 s, its JSON data carrying the send time ``"t"``). The ``fanout
events`` row counts all events (one row for the stream, readable at any rate); its response
time is the delivery latency in ms (receive time minus ``"t"``; client and server clocks must
agree, true on one machine).

    locust -f locustfiles/fanout.py --host http://127.0.0.1:8000 \\
        --headless -u 1000 -r 200 -t 60s

Above ~15k events/s per locust process, add ``--processes N`` (one per spare core), or use
``--sse-stats batch``. Options: see ``_sse_options``.
"""

from __future__ import annotations

from _sse_options import apply_options
from locust import constant

from sse_fast.locust import SSEUser


class FanoutUser(SSEUser):
    """Holds one broadcast stream, reporting per-event delivery latency."""

    path = "/fanout?interval=0.1&size=100"
    stream_name = "fanout"
    event_stats = "stream"
    sent_at_field = "t"
    read_timeout = 20.0
    default_retry = 1.0
    wait_time = constant(1)

    def on_start(self) -> None:
        apply_options(self)
