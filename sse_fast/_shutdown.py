"""Server shutdown: ``AppStatus`` and one registry of live streams per event loop.

When the server is asked to exit, every open event stream ends (or, with a
``shutdown_event``, is told to finish within its grace period). Detection:

- ``AppStatus.should_exit = True``, set by hand or by the hook below, is
  broadcast at once to the registry of every event loop that has streams; no
  stream polls a flag.
- Under uvicorn (``uvicorn app:app`` as well as ``uvicorn.run(...)``), the first
  stream opened finds uvicorn's ``Server`` through the SIGINT/SIGTERM handler it
  installed and wraps that handler (main thread only), so the server's own
  signal handling ends the streams. Where the handler cannot be wrapped (the
  server runs in another thread), one watcher task per event loop checks
  ``server.should_exit`` every ``WATCH_INTERVAL`` seconds; never one per stream.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import weakref
from collections.abc import Callable
from typing import Any

__all__ = ["AppStatus", "Registry", "registry_for"]

#: seconds between two looks at ``server.should_exit`` in the fallback watcher
WATCH_INTERVAL = 0.5

_lock = threading.Lock()
_registries: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Registry] = weakref.WeakKeyDictionary()
_hooked_server: Any = None


class _AppStatusMeta(type):
    """Makes ``AppStatus.should_exit = True`` a broadcast, not a flag to poll."""

    _should_exit = False

    @property
    def should_exit(cls) -> bool:
        return cls._should_exit

    @should_exit.setter
    def should_exit(cls, value: bool) -> None:
        cls._should_exit = bool(value)
        if value:
            _broadcast()


class AppStatus(metaclass=_AppStatusMeta):
    """Process-wide shutdown switch, as ``sse_starlette.sse.AppStatus``.

    ``AppStatus.should_exit = True`` ends every open stream on every event
    loop (streams with a ``shutdown_event`` get their grace period). Streams
    opened on an event loop created afterwards are not affected, so tests that
    set it need no fixture to reset it.
    """

    #: uvicorn's own handler, called by ``handle_exit`` (sse-starlette compatibility)
    original_handler: Callable[..., Any] | None = None
    _automatic = True

    @staticmethod
    def handle_exit(*args: Any, **kwargs: Any) -> None:
        """Signal-handler shape: set ``should_exit`` and chain to ``original_handler``."""
        AppStatus.should_exit = True
        if AppStatus.original_handler is not None:
            AppStatus.original_handler(*args, **kwargs)

    @classmethod
    def disable_automatic_graceful_drain(cls) -> None:
        """Stop ending streams on the server's exit signal; only ``should_exit`` does it."""
        cls._automatic = False

    @classmethod
    def enable_automatic_graceful_drain_mode(cls) -> None:
        """End streams on the server's exit signal again (the default)."""
        cls._automatic = True

    enable_automatic_graceful_drain = enable_automatic_graceful_drain_mode


class Registry:
    """The live streams of one event loop.

    ``add``/``discard`` are O(1) per stream; ``shutdown`` runs in the loop's
    thread and calls each stream's ``on_shutdown()`` once.
    """

    __slots__ = ("loop", "streams", "exiting", "watcher", "__weakref__")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.streams: set[Any] = set()
        self.exiting = False
        self.watcher: asyncio.Task[None] | None = None

    def add(self, stream: Any) -> None:
        """Register a live stream (an object with ``on_shutdown()``)."""
        self.streams.add(stream)

    def discard(self, stream: Any) -> None:
        """Forget a stream that ended; absent streams are ignored."""
        self.streams.discard(stream)

    def shutdown(self) -> None:
        """Tell every live stream of this loop, once, that the server is exiting (loop thread only)."""
        if self.exiting:
            return
        self.exiting = True
        for stream in list(self.streams):
            stream.on_shutdown()


def registry_for(loop: asyncio.AbstractEventLoop) -> Registry:
    """Return the registry of ``loop``, creating it (and hooking the server) once."""
    reg = _registries.get(loop)
    if reg is None:
        with _lock:
            reg = _registries.get(loop)
            if reg is None:
                reg = _registries[loop] = Registry(loop)
        _hook_server(reg)
    return reg


def _broadcast() -> None:
    try:
        current = asyncio.get_running_loop()
    except RuntimeError:
        current = None
    with _lock:
        regs = list(_registries.values())
    for reg in regs:
        if reg.loop is current:
            reg.shutdown()
        elif not reg.loop.is_closed():
            try:
                reg.loop.call_soon_threadsafe(reg.shutdown)
            except RuntimeError:  # closed between the check and the call
                pass


def _server_exit_seen() -> None:
    if AppStatus._automatic:
        AppStatus.should_exit = True


def _find_uvicorn_server() -> tuple[Any, list[int]]:
    """The uvicorn ``Server`` whose ``handle_exit`` is installed as a signal handler."""
    found = None
    sigs = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            handler = signal.getsignal(sig)
        except (ValueError, OSError):
            continue
        owner = getattr(handler, "__self__", None)
        if owner is not None and type(owner).__module__.startswith("uvicorn") and hasattr(owner, "should_exit"):
            found = owner
            sigs.append(sig)
    return found, sigs


def _hook_server(reg: Registry) -> None:
    global _hooked_server
    with _lock:
        server, sigs = _find_uvicorn_server()
        if server is not None and server is _hooked_server:
            return
        if server is not None and threading.current_thread() is threading.main_thread():
            for sig in sigs:
                original = signal.getsignal(sig)

                def chained(signum: int, frame: Any, _original: Any = original) -> None:
                    _original(signum, frame)
                    _server_exit_seen()

                signal.signal(sig, chained)
            _hooked_server = server
            return
    if server is None:
        return
    # the server runs, but its handler cannot be wrapped from this thread:
    # one watcher for this loop
    reg.watcher = reg.loop.create_task(_watch(server, reg))


async def _watch(server: Any, reg: Registry) -> None:
    while not reg.exiting:
        if getattr(server, "should_exit", False):
            _server_exit_seen()
            reg.shutdown()
            return
        await asyncio.sleep(WATCH_INTERVAL)
