"""The broadcast's fan-out: worker tasks send a published event to every idle stream, in turn.

The shape of the ASGI ceiling (a broadcaster task that awaits each
connection's ``send()`` in turn), with what that loop lacks: a stream whose
send suspends (a slow client) does not hold the others. In the usual round
(no send suspends) one task is created and one loop callback scheduled, and
no stream's writer task is woken (issue 16).

Each send runs from start to end in the one task that started it, in its
stream's context (``StreamBuffer.send_claimed``), so a middleware that wraps
``send`` in a cancel scope, a timeout or context variables sees an ordinary
``await send()``. A worker that suspends inside a send stays with that one
stream; its check callback (scheduled right after the worker's first step)
then starts new workers for the rest of the queue, up to ``MAX_SPAWN`` at
work, so that many slow clients in one round cost a few loop turns, not one
turn each (workers started in the same turn share the queue: when one
suspends, the next goes on in that turn). A disconnect or a
``send_timeout`` cancels the suspended send alone
(``StreamWriter._cut_foreign_send``).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

__all__ = ["FanOut"]

#: the most workers at work on the queue at once (after workers suspended in sends)
MAX_SPAWN = 64


class FanOut:
    """Sends claimed events for idle streams from worker tasks (see the module docstring).

    Args:
        loop: the event loop of the streams.
    """

    __slots__ = ("loop", "queue", "workers")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        #: ``(StreamWriter, body)`` claimed and not yet started, in publish order
        self.queue: deque[tuple[Any, bytes]] = deque()
        #: the tasks working the queue (a worker suspended in a send leaves this set)
        self.workers: set[asyncio.Task[None]] = set()

    def add(self, writer: Any, body: bytes) -> None:
        """Send ``body`` to ``writer``'s stream soon; claimed by ``writer.buffer.claim(body)``."""
        self.queue.append((writer, body))
        if not self.workers:
            self._spawn(1)

    def release(self, task: asyncio.Task[None]) -> None:
        """``task`` stays with its current send: others take the rest of the queue."""
        if task in self.workers:
            self.workers.discard(task)
            if self.queue:
                # up to MAX_SPAWN at work: where one client was slow, others often are (a storm of
                # stalled clients then costs a few loop turns, not one turn each)
                self._spawn(min(len(self.queue), max(1, MAX_SPAWN - len(self.workers))))

    def _spawn(self, n: int) -> None:
        loop = self.loop
        for _ in range(n):
            task = loop.create_task(self._work())
            self.workers.add(task)
            # scheduled after the task's first step: it runs right after the task first suspends
            loop.call_soon(self._check, task)

    def _check(self, task: asyncio.Task[None]) -> None:
        # a worker still in the set after its first step is suspended inside a send
        if task in self.workers and not task.done():
            self.release(task)

    async def _work(self) -> None:
        me = asyncio.current_task()
        workers = self.workers
        q = self.queue
        try:
            while q and me in workers:
                writer, body = q.popleft()
                rest = writer.buffer.send_claimed(body)
                if rest is not None:
                    # suspended in this send: _check hands the rest of the queue to others
                    await writer._finish_claimed(rest, self, me)
        except BaseException:
            # cancelled by someone else (the loop is closing): no claim may stay pending
            workers.discard(me)
            if not workers:
                while q:
                    q.popleft()[0].buffer.release_claim()
            raise
        workers.discard(me)
