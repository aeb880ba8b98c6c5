"""Chooser for the event stream parser: the compiled twin unless told or unable.

The pure-Python twin (``_parser_py``) is used when ``SSE_FAST_NO_EXTENSIONS``
is set to a non-empty value other than ``0``, when the extension is not built
(``ImportError``), or on an interpreter other than CPython. The variable is read
once, at import. Both twins return instances of the one class ``Event`` exported
here: the compiled twin's when it is loaded (it is told to the pure twin with
``_parser_py.set_event_class``), else the pure one's.
"""

from __future__ import annotations

import os
import platform

from . import _parser_py
from ._parser_py import Event, EventStreamParser

__all__ = ["Event", "EventStreamParser", "IMPLEMENTATION", "PyEventStreamParser"]

NO_EXTENSIONS: bool = os.environ.get("SSE_FAST_NO_EXTENSIONS", "") not in ("", "0") or (
    platform.python_implementation() != "CPython"
)

#: the pure-Python parser, always importable by this name
PyEventStreamParser = _parser_py.EventStreamParser

#: ``"cython"`` or ``"python"``: which twin ``EventStreamParser`` is
IMPLEMENTATION: str = "python"
if not NO_EXTENSIONS:
    try:
        from . import _parser_c
    except ImportError:
        pass
    else:
        EventStreamParser = _parser_c.EventStreamParser  # type: ignore[misc,assignment]
        Event = _parser_c.Event  # type: ignore[misc,assignment]
        # the pure twin builds the same (compiled, untracked by the GC) events
        _parser_py.set_event_class(_parser_c.Event)
        IMPLEMENTATION = "cython"
