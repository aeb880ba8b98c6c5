"""Shared helpers for the parser tests: both twins by name, and httpx-sse as a peer.

Not a conftest: test modules import what they need and define their own
parametrised ``parser_cls`` fixture from ``TWINS``, so every parser test runs
on the compiled and the pure twin. The compiled twin is imported directly: a
missing build is an error, never a skip.
"""

from __future__ import annotations

import httpx
import httpx_sse

from sse_fast import _parser_py

try:
    from sse_fast._parser_c import EventStreamParser as _CParser
except ImportError as exc:  # not built: every compiled case fails (never skips)
    _error = exc

    class _CParser:  # type: ignore[no-redef]
        def __init__(self, *args, **kwargs):
            raise ImportError(f"the compiled parser sse_fast._parser_c is not built: {_error}")


#: the two implementations of ``EventStreamParser``, by name
TWINS = {"cython": _CParser, "python": _parser_py.EventStreamParser}


def as_tuples(events) -> list[tuple]:
    """(event, data, id, retry) for each event: comparable across libraries."""
    return [(e.event, e.data, e.id, e.retry) for e in events]


def parse_chunks(parser_cls, chunks) -> list:
    """Feed ``chunks`` (bytes) one by one to a new parser; return all events."""
    p = parser_cls()
    out = []
    for c in chunks:
        out.extend(p.feed(c))
    p.close()
    return out


def httpx_sse_events(chunks, content_type: str = "text/event-stream; charset=utf-8") -> list:
    """Events read by httpx-sse (its public ``EventSource.iter_sse``) from a response body in ``chunks``."""
    response = httpx.Response(
        200, headers={"content-type": content_type}, content=iter(list(chunks))
    )
    return list(httpx_sse.EventSource(response).iter_sse())
