"""Chooser for the event stream parser: the compiled twin unless told or unable.

The pure-Python twin (``_parser_py``) is used when ``SSE_FAST_NO_EXTENSIONS``
is set to a non-empty value other than ``0``, when the extension is not built
(``ImportError``), or on an interpreter other than CPython. The variable is read
once, at import. Both twins return the same :class:`Event` class.
"""

from __future__ import annotations

import os
import platform

from . import _parser_py
from ._parser_py import Event

__all__ = ["Event", "EventStreamParser", "IMPLEMENTATION", "PyEventStreamParser"]

NO_EXTENSIONS: bool = os.environ.get("SSE_FAST_NO_EXTENSIONS", "") not in ("", "0") or (
    platform.python_implementation() != "CPython"
)

#: the pure-Python parser, always importable by this name
PyEventStreamParser = _parser_py.EventStreamParser

#: ``"cython"`` or ``"python"``: which twin ``EventStreamParser`` is
IMPLEMENTATION: str = "python"
EventStreamParser: type = _parser_py.EventStreamParser
if not NO_EXTENSIONS:
    try:
        from ._parser_c import EventStreamParser  # type: ignore[no-redef]

        IMPLEMENTATION = "cython"
    except ImportError:
        pass
