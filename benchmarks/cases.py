"""Encoder benchmark inputs and the implementations being compared.

Shared by ``test_bench_encoder.py`` (pytest-benchmark) and ``run_all.py``.

Cases (one content item each, separator ``"\\r\\n"``):

- ``tiny``: the ``str`` ``"hello"``;
- ``typical``: a ``dict`` with ``id``, ``event`` and 60 bytes of JSON ``data``;
- ``multiline``: a ``dict`` whose ``data`` has 5 lines;
- ``4k`` / ``64k``: a ``dict`` with 4 KiB / 64 KiB of ASCII ``data``.

Implementations: ``compiled`` (``sse_fast._encoder_c.encode_item``), ``pure``
(``sse_fast._encoder_py.encode_item``), ``sse_starlette``
(``sse_starlette.sse.ensure_bytes``, version 3.7) and, for ``typical`` only,
``fstring`` (a bare f-string formatting the same three fields, then ``.encode()``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

SEP = "\r\n"

_BASE = '{"user":"alice","action":"update","seq":12345,"p":""}'
# pad to exactly 60 bytes of JSON
TYPICAL_DATA = _BASE[:-2] + "x" * (60 - len(_BASE)) + '"}'
assert len(TYPICAL_DATA) == 60, len(TYPICAL_DATA)

CASES: dict[str, Any] = {
    "tiny": "hello",
    "typical": {"id": "12345", "event": "update", "data": TYPICAL_DATA},
    "multiline": {"data": "line one\nline two\nline three\nline four\nline five"},
    "4k": {"data": "x" * 4096},
    "64k": {"data": "y" * 65536},
}

IMPLEMENTATIONS = ("compiled", "pure", "sse_starlette")


def encoder(name: str) -> Callable[[Any, str], bytes]:
    """Return ``f(item, sep) -> bytes`` for implementation ``name``.

    Raises:
        ValueError: unknown ``name``.
        ImportError: the compiled twin is not built (never skipped silently).
    """
    if name == "compiled":
        import sse_fast.event  # noqa: F401  (registers ServerSentEvent with both twins)
        from sse_fast import _encoder_c

        return _encoder_c.encode_item
    if name == "pure":
        import sse_fast.event  # noqa: F401
        from sse_fast import _encoder_py

        return _encoder_py.encode_item
    if name == "sse_starlette":
        from sse_starlette.sse import ensure_bytes

        return ensure_bytes
    raise ValueError(f"unknown encoder implementation {name!r}")


def fstring_typical(item: dict, sep: str) -> bytes:
    """The floor: a bare f-string for the ``typical`` case's fields (no checks, no splitting)."""
    return f"id: {item['id']}{sep}event: {item['event']}{sep}data: {item['data']}{sep}{sep}".encode()


def check_same_bytes() -> None:
    """Assert every implementation gives sse-starlette's bytes for every case."""
    ref = encoder("sse_starlette")
    for name in IMPLEMENTATIONS:
        enc = encoder(name)
        for case, item in CASES.items():
            assert enc(item, SEP) == ref(item, SEP), (name, case)
    assert fstring_typical(CASES["typical"], SEP) == ref(CASES["typical"], SEP)
