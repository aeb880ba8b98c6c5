"""Proof that the sse-starlette suite runs on sse_fast: copied into its tests/ by
``sse_starlette_suite.py`` (the file is named so that a plain pytest run does not
collect it: outside the shim it fails, as it should)."""

import importlib
import sys

import sse_fast
import sse_fast.event
import sse_fast.sse


def test_sse_starlette_is_sse_fast():
    import sse_starlette
    import sse_starlette.event
    import sse_starlette.sse
    from sse_starlette import EventSourceResponse, event, sse

    assert sse_starlette is sse_fast
    assert sse_starlette.EventSourceResponse is sse_fast.EventSourceResponse
    assert EventSourceResponse is sse_fast.EventSourceResponse
    assert sse is sse_starlette.sse is sse_fast.sse
    assert event is sse_starlette.event is sse_fast.event
    assert sse_starlette.sse.EventSourceResponse is sse_fast.EventSourceResponse
    assert sse_starlette.event.ServerSentEvent is sse_fast.ServerSentEvent
    assert importlib.import_module("sse_starlette.sse") is sse_fast.sse
    for name in ("sse_starlette", "sse_starlette.sse", "sse_starlette.event"):
        assert sys.modules[name].__name__.startswith("sse_fast"), name
    # the real sse-starlette was never imported under its own name
    assert not any(m.__name__.startswith("sse_starlette") for m in list(sys.modules.values()) if m)
