"""Chooser for the event encoder: the compiled twin unless told or unable.

The pure-Python twin (``_encoder_py``) is used when ``SSE_FAST_NO_EXTENSIONS``
is set to a non-empty value other than ``0``, when the extension is not built
(``ImportError``), or on an interpreter other than CPython. The variable is read
once, at import.
"""

from __future__ import annotations

import os
import platform

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
encode_fields = _impl.encode_fields
encode_item = _impl.encode_item
check_sep = _impl.check_sep
SEPARATORS = _impl.SEPARATORS
pump = _impl.pump
PUMP_FULL, PUMP_SUSPENDED, PUMP_END = _impl.PUMP_FULL, _impl.PUMP_SUSPENDED, _impl.PUMP_END


def set_event_class(cls: type) -> None:
    """Register ``ServerSentEvent`` with both twins (tests may use either)."""
    _encoder_py.set_event_class(cls)
    try:
        from . import _encoder_c
    except ImportError:
        return
    _encoder_c.set_event_class(cls)
