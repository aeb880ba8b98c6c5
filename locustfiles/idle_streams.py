"""Connection capacity: many idle event streams that only receive keep-alive pings.

Each user holds one stream of ``/idle?ping=5`` (a comment every 5 s) for the whole run; a
stream that ends, or stays silent for 20 s, is a failure; it then reconnects as a browser would.
The table's ``idle ping`` row counts the pings (its response time: ms between pings), ``idle
connect`` the connections (time to the response head).

    locust -f locustfiles/idle_streams.py --host http://127.0.0.1:8000 \\
        --headless -u 2000 -r 200 -t 60s

Options: ``--sse-path`` (another endpoint), ``--sse-read-timeout`` (see ``_sse_options``).
"""

from __future__ import annotations

from _sse_options import apply_options
from locust import constant

from sse_fast.locust import SSEUser


class IdleStreamUser(SSEUser):
    """Holds one ping-only stream; reconnects after 1 s when it drops."""

    path = "/idle?ping=5"
    stream_name = "idle"
    read_timeout = 20.0
    default_retry = 1.0
    wait_time = constant(1)

    def on_start(self) -> None:
        apply_options(self)
