"""Chooser for the event encoder: the compiled twin unless told or unable.

The pure-Python twin (``_encoder_py``) is used when ``SSE_FAST_NO_EXTENSIONS``
is set to a non-empty value other than ``0``, when the extension is not built
(``ImportError``), or on an interpreter other than CPython; then no compiled
module is imported at all. The variable is read once, at import.
"""

from __future__ import annotations

import os
import platform
import sys

from . import _encoder_py

NO_EXTENSIONS: bool = os.environ.get("SSE_FAST_NO_EXTENSIONS", "") not in ("", "0") or (
    platform.python_implementation() != "CPython"
)

IMPLEMENTATION: str = "python"
_impl = _encoder_py
if not NO_EXTENSIONS:
    try:
        from . import _encoder_c as _impl  # type: ignore[no-redef]

        IMPLEMENTATION = "cython"
    except ImportError:
        _impl = _encoder_py

EventBuffer = _impl.EventBuffer
StreamBuffer = _impl.StreamBuffer
encode_fields = _impl.encode_fields
encode_item = _impl.encode_item
ensure_bytes = _impl.ensure_bytes
produce = _impl.produce
LoopTurns = _impl.LoopTurns
first_step = _impl.first_step
SENT = _encoder_py.SENT
check_sep = _impl.check_sep
SEPARATORS = _impl.SEPARATORS


def set_event_class(cls: type) -> None:
    """Register ``ServerSentEvent`` with the pure twin and with the compiled one if it is loaded.

    A compiled twin imported later (tests, benchmarks) is registered by its
    importer; with ``SSE_FAST_NO_EXTENSIONS=1`` nothing compiled is imported.
    """
    _encoder_py.set_event_class(cls)
    compiled = sys.modules.get(__package__ + "._encoder_c")
    if compiled is not None:
        compiled.set_event_class(cls)
