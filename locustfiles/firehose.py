"""Firehose: a few streams that the server fills as fast as it can; throughput.

Each user holds one stream of ``/firehose?size=100``. Events are counted per socket read
(``event_stats = "batch"``: exact counts, one statistics update per read instead of per event,
the events are only counted, not built), so one locust process keeps up with several hundred
thousand events/s; the ``firehose events`` row's req/s column is the throughput in events/s and
its response time the ms between reads.

    locust -f locustfiles/firehose.py --host http://127.0.0.1:8000 \\
        --headless -u 4 -r 4 -t 30s

Options: see ``_sse_options`` (``--sse-stats stream`` gives one entry per event, slower).
"""

from __future__ import annotations

from _sse_options import apply_options
from locust import constant

from sse_fast.locust import SSEUser


class FirehoseUser(SSEUser):
    """Holds one stream that never pauses; counts events and bytes."""

    path = "/firehose?size=100"
    stream_name = "firehose"
    event_stats = "batch"
    sent_at_field = None
    report_pings = False
    read_timeout = 20.0
    default_retry = 1.0
    wait_time = constant(1)

    def on_start(self) -> None:
        apply_options(self)
