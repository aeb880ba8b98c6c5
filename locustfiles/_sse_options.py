"""Shared command-line options for the locustfiles in this folder.

Every locustfile here accepts, besides locust's own options:

- ``--sse-path PATH``: the stream's path and query on ``--host`` (default: the file's own);
- ``--sse-stats {type,stream,batch,off}``: how events are reported (see ``sse_fast.locust``);
- ``--sse-read-timeout SECONDS``: a stream silent that long counts as a failure (0: never).

Locust adds the locustfile's folder to ``sys.path``, so ``import _sse_options`` works from any
locustfile next to this one.
"""

from __future__ import annotations

from typing import Any

from locust import events

from sse_fast.locust import SSEUser

__all__ = ["apply_options"]


@events.init_command_line_parser.add_listener
def _add_options(parser: Any) -> None:
    group = parser.add_argument_group("sse_fast event streams")
    group.add_argument("--sse-path", default="", help="stream path and query on --host")
    group.add_argument(
        "--sse-stats",
        default="",
        choices=["", "type", "stream", "batch", "off"],
        help="event statistics: a row per event type, one row per stream, "
        "one entry per socket read (counts stay exact), or none",
    )
    group.add_argument(
        "--sse-read-timeout",
        type=float,
        default=-1.0,
        help="seconds without data before a stream counts as failed (0: never)",
    )


def apply_options(user: SSEUser) -> None:
    """Apply ``--sse-*`` options given on the command line to ``user`` (call in ``on_start``)."""
    options = getattr(user.environment, "parsed_options", None)
    if options is None:
        return
    if getattr(options, "sse_path", ""):
        user.path = options.sse_path
        if user.stream_name is None:
            user.stream_name = options.sse_path
    if getattr(options, "sse_stats", ""):
        user.event_stats = options.sse_stats
    timeout = getattr(options, "sse_read_timeout", -1.0)
    if timeout is not None and timeout >= 0:
        user.read_timeout = timeout or None
