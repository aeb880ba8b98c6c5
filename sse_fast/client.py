"""Reading event streams in Python: events from an HTTP response body.

Built on sse_fast's incremental parser (WHATWG HTML 9.2.6 "Interpreting an
event stream"; compiled when the extension is built). Works with an httpx
streaming response or with any (async) iterable of ``bytes`` chunks::

    import httpx
    from sse_fast.client import aiter_events

    async with httpx.AsyncClient() as client:
        async with client.stream("GET", url, headers={"Accept": "text/event-stream"}) as response:
            async for event in aiter_events(response):
                print(event.event, event.id, event.data)

One call reads one response (one connection). Reconnecting is up to the
caller: send the last ``Event.id`` seen as the ``Last-Event-ID`` header and
wait ``Event.retry`` milliseconds, as a browser's ``EventSource`` does.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from typing import Any

from ._parser import IMPLEMENTATION, Event, EventStreamParser

__all__ = [
    "Event",
    "EventStreamParser",
    "IMPLEMENTATION",
    "SSEContentTypeError",
    "aiter_events",
    "iter_events",
    "parse_events",
]


class SSEContentTypeError(ValueError):
    """The response's ``Content-Type`` is not ``text/event-stream``."""


def _check_response(response: Any) -> None:
    headers = getattr(response, "headers", None)
    if headers is None:
        return
    ctype = headers.get("content-type", "")
    if ctype.partition(";")[0].strip().lower() != "text/event-stream":
        raise SSEContentTypeError(
            f"response Content-Type must be text/event-stream, got {ctype!r} "
            f"(status {getattr(response, 'status_code', '?')}); "
            "pass check_content_type=False to parse it anyway"
        )


async def aiter_events(source: Any, *, check_content_type: bool = True) -> AsyncIterator[Event]:
    """Yield the events of an event stream as their bytes arrive.

    Args:
        source: an ``httpx.Response`` opened with ``client.stream(...)`` on an
            ``httpx.AsyncClient`` (its body is read with ``aiter_bytes()``, so
            a ``Content-Encoding`` is undone), or any async iterable of
            ``bytes`` chunks.
        check_content_type: when ``source`` has ``headers``, require
            ``Content-Type: text/event-stream``.

    Yields:
        :class:`Event` objects, in stream order, each as soon as the blank line
        that dispatches it has arrived. An incomplete event at the end of the
        body is not yielded.

    Raises:
        SSEContentTypeError: the response is not an event stream (checked
            before any byte is read).
        TypeError: ``source`` is neither a response nor an async iterable, or
            it yields something other than bytes.
    """
    if check_content_type:
        _check_response(source)
    if hasattr(source, "aiter_bytes"):
        chunks: AsyncIterable[bytes] = source.aiter_bytes()
    elif hasattr(source, "__aiter__"):
        chunks = source
    else:
        raise TypeError(
            f"source must be an httpx.Response or an async iterable of bytes, got {type(source).__name__}"
        )
    parser = EventStreamParser()
    feed = parser.feed
    async for chunk in chunks:
        for event in feed(chunk):
            yield event
    parser.close()


def iter_events(source: Any, *, check_content_type: bool = True) -> Iterator[Event]:
    """Yield the events of an event stream: the synchronous twin of :func:`aiter_events`.

    Args:
        source: an ``httpx.Response`` opened with ``client.stream(...)`` on an
            ``httpx.Client`` (read with ``iter_bytes()``), or any iterable of
            ``bytes`` chunks (a file opened in binary mode works too).
        check_content_type: when ``source`` has ``headers``, require
            ``Content-Type: text/event-stream``.

    Yields:
        :class:`Event` objects as their dispatching blank line arrives.

    Raises:
        SSEContentTypeError: the response is not an event stream.
        TypeError: ``source`` is neither a response nor an iterable of bytes.
    """
    if check_content_type:
        _check_response(source)
    if hasattr(source, "iter_bytes"):
        chunks: Iterable[bytes] = source.iter_bytes()
    elif isinstance(source, (bytes, bytearray, memoryview, str)):
        raise TypeError(
            "source must be an iterable of bytes chunks; for one bytes object use parse_events()"
        )
    elif hasattr(source, "__iter__"):
        chunks = source
    else:
        raise TypeError(
            f"source must be an httpx.Response or an iterable of bytes, got {type(source).__name__}"
        )
    parser = EventStreamParser()
    feed = parser.feed
    for chunk in chunks:
        yield from feed(chunk)
    parser.close()


def parse_events(body: bytes | bytearray | memoryview) -> list[Event]:
    """Parse a whole event stream body at once.

    Returns:
        The events dispatched by ``body``; an incomplete event at its end is
        dropped.

    Raises:
        TypeError: ``body`` is not bytes-like.
    """
    parser = EventStreamParser()
    events = parser.feed(body)
    parser.close()
    return events
