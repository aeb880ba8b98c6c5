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

The server object is found by walking the coroutines of the loop's tasks for
the server's serving frame (uvicorn's ``Server.serve``, hypercorn's
``worker_serve``), once per loop (again after a hooked server finished).
Where nothing is found, ``AppStatus.should_exit = True`` from the app's own
shutdown handling ends the streams (see the README).
"""

from __future__ import annotations

import asyncio
import logging
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
    except Exception:  # introspection is best effort; streams work without the hook
        logger.debug("looking for the ASGI server failed", exc_info=True)
        return
    if found is None:
        return
    kind, obj = found
    if kind == "uvicorn":
        _hook_uvicorn(reg, obj)
    else:
        reg.hooked = obj
        loop.create_task(_await_terminated(reg, obj), name="sse_fast: hypercorn shutdown hook")


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
