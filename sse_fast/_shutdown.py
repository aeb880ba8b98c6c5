"""Server shutdown: ``AppStatus``, one registry of live streams per event loop, server hooks.

When the server is asked to exit, every open event stream ends (or, with a
``shutdown_event``, is told to finish within its grace period), so the server
can close its connections cleanly and exit. Detection, never a watcher per
connection:

- ``AppStatus.should_exit = True``, set by hand, is broadcast at once to the
  registry of every event loop (and trio run) that has streams.
- The first stream of an event loop looks for the ASGI server running on it
  and hooks that server's own shutdown path, once (``_servers``): uvicorn's
  ``Server.shutdown`` (so SIGINT/SIGTERM, ``--workers``, ``--reload`` and
  ``server.should_exit = True`` set by code all count), hypercorn's worker
  context ``terminated`` event (asyncio and trio workers), daphne's Twisted
  reactor shutdown trigger, granian's worker signal handling.
- A registry's exit state lasts while its server shuts down; a server
  started later on the same loop streams normally.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Callable
from typing import Any

__all__ = ["AppStatus", "Registry", "registry_for", "trio_registry"]

_lock = threading.Lock()
_registries: weakref.WeakKeyDictionary[Any, Registry] = weakref.WeakKeyDictionary()


class _AppStatusMeta(type):
    """Makes ``AppStatus.should_exit = True`` a broadcast, not a flag to poll."""

    _should_exit = False

    @property
    def should_exit(cls) -> bool:
        return cls._should_exit

    @should_exit.setter
    def should_exit(cls, value: bool) -> None:
        cls._should_exit = bool(value)
        _broadcast(bool(value))


class AppStatus(metaclass=_AppStatusMeta):
    """Process-wide shutdown switch, as ``sse_starlette.sse.AppStatus``.

    ``AppStatus.should_exit = True`` ends every open stream on every event
    loop (streams with a ``shutdown_event`` get their grace period), and
    streams opened on those loops while it stays ``True`` end at once. Streams
    opened on an event loop created afterwards are not affected, so tests that
    set it need no fixture to reset it. Setting it back to ``False`` lets the
    loops stream again.
    """

    #: a handler that ``handle_exit`` chains to (sse-starlette compatibility)
    original_handler: Callable[..., Any] | None = None
    _automatic = True

    @staticmethod
    def handle_exit(*args: Any, **kwargs: Any) -> None:
        """Signal-handler shape: set ``should_exit`` and chain to ``original_handler``.

        For servers sse_fast cannot hook: install it as (or call it from) the
        app's own SIGTERM handling.
        """
        AppStatus.should_exit = True
        if AppStatus.original_handler is not None:
            AppStatus.original_handler(*args, **kwargs)

    @classmethod
    def disable_automatic_graceful_drain(cls) -> None:
        """Stop ending streams when the server shuts down; only ``should_exit = True`` does it then."""
        cls._automatic = False

    @classmethod
    def enable_automatic_graceful_drain_mode(cls) -> None:
        """End streams when the server shuts down again (the default)."""
        cls._automatic = True

    enable_automatic_graceful_drain = enable_automatic_graceful_drain_mode


class Registry:
    """The live streams of one event loop (or one trio run).

    ``add``/``discard`` are O(1) per stream. ``begin_exit`` runs in the loop's
    thread and calls each stream's ``on_shutdown()``; streams opened while
    ``exiting`` is set end at once, until ``end_exit``.

    Args:
        key: the event loop, or the trio token.
        call_soon_threadsafe: schedules a callable on that loop from any thread.
    """

    __slots__ = ("key", "call_soon_threadsafe", "streams", "exiting", "hooked", "__weakref__")

    def __init__(self, key: Any, call_soon_threadsafe: Callable[[Callable[[], None]], Any]) -> None:
        self.key = key
        self.call_soon_threadsafe = call_soon_threadsafe
        self.streams: set[Any] = set()
        self.exiting = False
        #: what the server hook attached to (``None``: look again at the next stream)
        self.hooked: Any = None

    def add(self, stream: Any) -> None:
        """Register a live stream (an object with ``on_shutdown()``)."""
        self.streams.add(stream)

    def discard(self, stream: Any) -> None:
        """Forget a stream that ended; absent streams are ignored."""
        self.streams.discard(stream)

    def begin_exit(self) -> None:
        """Tell every live stream that the server is exiting (loop thread only)."""
        self.exiting = True
        for stream in list(self.streams):
            stream.on_shutdown()

    def end_exit(self) -> None:
        """The shutdown is over: streams opened from now on stream normally."""
        self.exiting = False

    def server_exiting(self) -> None:
        """Called by a server hook: the server started its shutdown."""
        if AppStatus._automatic:
            self.begin_exit()


def _registry(key: Any, call_soon_threadsafe: Callable[[Callable[[], None]], Any]) -> Registry:
    reg = _registries.get(key)
    if reg is None:
        with _lock:
            reg = _registries.get(key)
            if reg is None:
                reg = _registries[key] = Registry(key, call_soon_threadsafe)
                if AppStatus._should_exit:  # set by hand before this loop had streams
                    reg.exiting = True
    return reg


# the last loop asked for and its registry: a server runs one loop, and every stream asks
# (a weak reference, so a closed loop is not kept alive; issue 16: CPU to open a stream)
_last: tuple[Any, Registry | None] = (lambda: None, None)


def registry_for(loop: asyncio.AbstractEventLoop) -> Registry:
    """Return the registry of ``loop``, creating it and hooking the server running on it."""
    global _last
    ref, reg = _last
    if ref() is not loop or reg is None or reg.hooked is None:
        reg = _registry(loop, loop.call_soon_threadsafe)
        if reg.hooked is None:
            from ._servers import hook_asyncio

            hook_asyncio(reg, loop)
        _last = (weakref.ref(loop), reg)
    return reg


class _TrioKey:
    # trio tokens are hashable but not weak-referenceable: key the registry
    # on a small object kept alive by the run's system task
    __slots__ = ("token", "__weakref__")

    def __init__(self, token: Any) -> None:
        self.token = token


_trio_keys: dict[Any, _TrioKey] = {}


def trio_registry() -> Registry:
    """Return the registry of the current trio run, creating it and hooking the server once."""
    import trio

    token = trio.lowlevel.current_trio_token()
    key = _trio_keys.get(token)
    if key is None:
        key = _trio_keys[token] = _TrioKey(token)
    reg = _registry(key, token.run_sync_soon)
    if reg.hooked is None:
        from ._servers import hook_trio

        hook_trio(reg)
    return reg


def _broadcast(exiting: bool) -> None:
    with _lock:
        regs = list(_registries.values())
    try:
        current = asyncio.get_running_loop()
    except RuntimeError:
        current = None
    for reg in regs:
        action = reg.begin_exit if exiting else reg.end_exit
        if reg.key is current:
            action()
            continue
        try:
            reg.call_soon_threadsafe(action)
        except RuntimeError:  # that loop or run is closed
            pass
