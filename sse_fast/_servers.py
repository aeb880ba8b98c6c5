"""Hooks into the ASGI servers' own shutdown paths, found once per event loop.

Each server announces its shutdown in its own way; sse_fast listens to that
announcement instead of polling or installing signal handlers of its own:

- **uvicorn** (``uvicorn app:app``, ``uvicorn.run``, ``--workers``, ``--reload``,
  an embedded ``Server``): its main loop calls ``Server.shutdown()`` once
  ``should_exit`` is set, by its signal handler or by code. The instance's
  ``shutdown`` is wrapped: streams end first, then uvicorn closes the
  connections, which are idle by then.
- **hypercorn** (asyncio and trio workers): the worker sets its context's
  ``terminated`` event when its shutdown trigger fires (SIGINT/SIGTERM, or
  the parent's shutdown event under ``--workers``); one task per loop (a
  system task under trio) awaits it.
- **granian**: its worker's SIGINT/SIGTERM handler (``loop.add_signal_handler``)
  starts a drain in Rust that waits for every request without a limit; the
  Python-level handler is chained so the streams end as the drain starts.
- **daphne**: Twisted's SIGINT/SIGTERM handler stops the reactor, which first
  cancels every request; it is chained and held until the streams ended.

The server object is found by walking the coroutines of the loop's tasks for
the server's serving frame (uvicorn's ``Server.serve``, hypercorn's
``worker_serve``), once per loop (again after a hooked server finished).
Where nothing is found, ``AppStatus.should_exit = True`` from the app's own
shutdown handling ends the streams (see the README).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

from ._shutdown import AppStatus, Registry

__all__ = ["hook_asyncio", "hook_trio"]

logger = logging.getLogger("sse_fast")

#: ``Registry.hooked`` when no server was found on the loop (do not look again)
NOT_FOUND = "not found"


def _frames_of(coro: Any) -> Iterator[Any]:
    """The frames of a coroutine and of everything it awaits, outermost first."""
    depth = 0
    while coro is not None and depth < 100:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is not None:
            yield frame
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
        depth += 1


def _find(frames: Iterator[Any]) -> tuple[str, Any] | None:
    for frame in frames:
        module = frame.f_globals.get("__name__", "")
        if module == "uvicorn.server":
            server = frame.f_locals.get("self")
            if server is not None and hasattr(server, "should_exit") and hasattr(server, "shutdown"):
                return "uvicorn", server
        elif module in ("hypercorn.asyncio.run", "hypercorn.trio.run") and frame.f_code.co_name == "worker_serve":
            context = frame.f_locals.get("context")
            if context is not None and hasattr(context, "terminated"):
                return "hypercorn", context
    return None


def hook_asyncio(reg: Registry, loop: asyncio.AbstractEventLoop) -> None:
    """Find the server running on ``loop`` and hook its shutdown into ``reg`` (once)."""
    reg.hooked = NOT_FOUND
    try:
        found = None
        for task in asyncio.all_tasks(loop):
            found = _find(_frames_of(task.get_coro()))
            if found is not None:
                break
        if found is None:
            found = _find_by_signal_handler()
    except Exception:  # introspection is best effort; streams work without the hook
        logger.debug("looking for the ASGI server failed", exc_info=True)
        return
    if found is None:
        return
    kind, obj = found
    if kind == "uvicorn":
        _hook_uvicorn(reg, obj)
    elif kind == "hypercorn":
        reg.hooked = obj
        loop.create_task(_await_terminated(reg, obj), name="sse_fast: hypercorn shutdown hook")
    else:
        _chain_signal_handlers(reg, loop, hold=kind == "daphne")


def _find_by_signal_handler() -> tuple[str, Any] | None:
    """granian and daphne: servers whose shutdown starts in a Python-level signal handler."""
    if threading.current_thread() is not threading.main_thread():
        return None
    owner = getattr(signal.getsignal(signal.SIGTERM), "__self__", None)
    if owner is not None and type(owner).__module__.startswith("twisted."):
        return "daphne", owner
    frame = sys._getframe()
    while frame is not None:
        # granian's worker function runs the loop: its frame is below every task's
        if frame.f_globals.get("__name__", "").startswith("granian.") and "worker" in frame.f_code.co_name:
            return "granian", None
        frame = frame.f_back
    return None


#: seconds daphne's stop may be held for streams to end (plus the largest grace period)
HOLD_SECONDS = 5.0
_chained: set[int] = set()


def _chain_signal_handlers(reg: Registry, loop: asyncio.AbstractEventLoop, *, hold: bool) -> None:
    """Run the server's own SIGINT/SIGTERM handler after telling ``reg``'s streams.

    granian: its handler (installed by ``loop.add_signal_handler``) starts an
    unbounded drain in Rust, which ends once the streams end: chain, no hold.
    daphne: Twisted's handler stops the reactor, whose first shutdown step
    cancels every request: hold it until the streams have ended (at most
    ``HOLD_SECONDS`` plus the largest grace period).
    """
    reg.hooked = "signals"
    for sig in (signal.SIGINT, signal.SIGTERM):
        original = signal.getsignal(sig)
        if sig in _chained or not callable(original) or original is signal.default_int_handler:
            continue

        def chained(signum: int, frame: Any, _original: Any = original) -> None:
            # in signal context: only schedule, never run stream code here
            if hold:
                loop.call_soon_threadsafe(_exit_then_call, reg, loop, _original, signum)
            else:
                loop.call_soon_threadsafe(reg.server_exiting)
                _original(signum, frame)

        signal.signal(sig, chained)
        _chained.add(sig)


def _exit_then_call(reg: Registry, loop: asyncio.AbstractEventLoop, original: Any, signum: int) -> None:
    reg.server_exiting()
    grace = max((getattr(s, "grace", 0) or 0 for s in reg.streams), default=0)
    deadline = loop.time() + HOLD_SECONDS + grace

    def poll() -> None:
        if not reg.streams or loop.time() >= deadline:
            original(signum, None)
        else:
            loop.call_later(0.02, poll)

    poll()


def _hook_uvicorn(reg: Registry, server: Any) -> None:
    original = server.shutdown
    if getattr(original, "_sse_fast_registry", None) is reg:
        reg.hooked = server
        return

    async def shutdown(*args: Any, **kwargs: Any) -> Any:
        # streams end first; uvicorn then finds their connections idle
        reg.server_exiting()
        try:
            return await original(*args, **kwargs)
        finally:
            server.shutdown = original
            if not AppStatus._should_exit:
                reg.end_exit()
            reg.hooked = None  # a later server on this loop is looked for again

    shutdown._sse_fast_registry = reg  # type: ignore[attr-defined]
    server.shutdown = shutdown
    reg.hooked = server


async def _await_terminated(reg: Registry, context: Any) -> None:
    await context.terminated.wait()
    reg.server_exiting()


def hook_trio(reg: Registry) -> None:
    """Find the server of the current trio run and hook its shutdown into ``reg`` (once)."""
    import trio

    reg.hooked = NOT_FOUND
    try:
        found = None
        pending = [trio.lowlevel.current_root_task()]
        while pending and found is None:
            task = pending.pop()
            found = _find(_frames_of(task.coro))
            for nursery in task.child_nurseries:
                pending.extend(nursery.child_tasks)
    except Exception:
        logger.debug("looking for the ASGI server failed", exc_info=True)
        return
    if found is None or found[0] != "hypercorn":
        return
    reg.hooked = found[1]
    trio.lowlevel.spawn_system_task(_await_terminated_trio, reg, found[1], name="sse_fast: hypercorn shutdown hook")


async def _await_terminated_trio(reg: Registry, context: Any) -> None:
    import trio

    try:
        await context.terminated.wait()
    except trio.Cancelled:
        raise
    except Exception:  # a system task must not crash the run
        logger.debug("hypercorn shutdown hook failed", exc_info=True)
        return
    reg.server_exiting()
