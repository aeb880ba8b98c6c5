"""The in-process backend: ``publish`` hands the event to this process's subscribers at once."""

from __future__ import annotations

import time
from typing import Any

from ... import metrics as _metrics
from .._core import _Entry, _item_id  # loaded first: backends are made by Broadcast.__init__

__all__ = ["MemoryBackend"]


class MemoryBackend:
    """Events published in this process reach this process's subscribers; nothing is shared.

    Args:
        broadcast: the ``Broadcast`` it serves.
    """

    #: a subscriber goes live in the step of the loop that starts it
    needs_prepare = False
    url = "memory://"

    def __init__(self, broadcast: Any) -> None:
        self.broadcast = broadcast

    def publish(self, event: Any, topic: str) -> str:
        """Encode, number, remember and deliver ``event``; returns its id (see ``Broadcast.publish``)."""
        b = self.broadcast
        b._bind()
        t = b._topic(topic)
        given = _item_id(event)
        seq = t.next_seq
        eid = given if given is not None else (None if isinstance(event, (bytes, bytearray, memoryview)) else str(seq))
        entry = _Entry(seq, eid, event, time.monotonic())  # encodes: a bad event raises here, before anyone gets it
        t.next_seq += 1  # only an event that could be encoded takes a number
        b._dispatch(t, entry)
        m = _metrics.ACTIVE
        if m is not None:
            m.broadcast_publishes.inc()
        return eid if eid is not None else str(seq)

    async def apublish(self, event: Any, topic: str) -> str:
        """``publish``, awaitable (the same call on every backend)."""
        return self.publish(event, topic)

    async def prepare(self, topic: str, last_event_id: str | None) -> None:
        """Nothing to load: the history is this process's."""

    async def aclose(self) -> None:
        """Nothing to release."""
