"""Broadcast: publish once to topics, fan out to every subscriber, replay after ``Last-Event-ID``.

``Broadcast`` (topics, encode once, history ring, slow-subscriber policy) and
``Subscription`` (the content of an ``EventSourceResponse``); see
``sse_fast.broadcast._core`` for how the fan-out works. ``Broadcast(url=...)``
picks the backend: memory (this process) or Redis (every process and machine,
``sse_fast.broadcast.backends.redis``); ``RedisPublisher`` publishes to it
from code with no event loop; ``PublishError`` is what a publish Redis did not
take raises.
"""

from ._core import Broadcast, Subscription
from .backends.redis import PublishError, RedisPublisher

__all__ = ["Broadcast", "Subscription", "RedisPublisher", "PublishError"]
