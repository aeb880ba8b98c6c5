"""Broadcast: publish once to topics, fan out to every subscriber, replay after ``Last-Event-ID``.

``Broadcast`` (topics, encode once, history ring, slow-subscriber policy) and
``Subscription`` (the content of an ``EventSourceResponse``); see
``sse_fast.broadcast._core`` for how the fan-out works.
"""

from ._core import Broadcast, Subscription

__all__ = ["Broadcast", "Subscription"]
