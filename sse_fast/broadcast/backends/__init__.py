"""Where a broadcast's events come from: the backends behind ``Broadcast(url=...)``.

- ``memory://`` (the default, ``url=None``): this process only; ``publish``
  fans out at once (``sse_fast.broadcast.backends.memory``).
- ``redis://``, ``rediss://``, ``unix://``: Redis Streams, shared by every
  process and machine that uses the same Redis and key prefix
  (``sse_fast.broadcast.backends.redis``; needs ``sse_fast[redis]``).

A backend has four operations, all called on the broadcast's event loop:

- ``publish(event, topic)``: start publishing; the memory backend returns
  the id, the Redis backend an ``asyncio.Future`` of it;
- ``apublish(event, topic)``: publish and return the id (``str``);
- ``needs_prepare`` and ``prepare(topic, last_event_id)``: what a new
  subscriber awaits before it goes live (loading a topic's shared history);
- ``aclose()``: release connections and tasks.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

__all__ = ["backend_for_url", "SCHEMES"]

#: URL schemes and the backend module that serves them
SCHEMES = {"memory": "memory", "redis": "redis", "rediss": "redis", "unix": "redis"}


def backend_for_url(broadcast: Any, url: str | None, **options: Any) -> Any:
    """The backend object for ``url`` (``None``: memory).

    Raises:
        TypeError: ``url`` is not a str.
        ValueError: the URL's scheme is not one of ``SCHEMES``.
        ImportError: the Redis backend without redis-py (``pip install 'sse_fast[redis]'``).
    """
    if url is None:
        url = "memory://"
    if not isinstance(url, str):
        raise TypeError(f"url must be a str such as 'memory://' or 'redis://host:6379/0', got {url!r}")
    scheme = urlsplit(url).scheme.lower()
    kind = SCHEMES.get(scheme)
    if kind is None:
        raise ValueError(f"url scheme must be one of {', '.join(sorted(SCHEMES))}, got {url!r}")
    if kind == "memory":
        from .memory import MemoryBackend

        return MemoryBackend(broadcast)
    from .redis import RedisBackend

    return RedisBackend(broadcast, url, **options)
