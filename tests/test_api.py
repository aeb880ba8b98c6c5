"""Public names, import paths, implementation choice, JSON events, ensure_bytes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import sse_starlette.event
import sse_starlette.sse

import sse_fast
import sse_fast.event
import sse_fast.sse
from sse_fast import (
    AppStatus,
    EventSourceResponse,
    JSONServerSentEvent,
    SendTimeoutError,
    ServerSentEvent,
    ensure_bytes,
)


def test_import_paths_mirror_sse_starlette():
    for name in ("EventSourceResponse", "ServerSentEvent", "JSONServerSentEvent"):
        assert getattr(sse_fast, name) is getattr(sse_fast.sse, name)
    for name in ("ServerSentEvent", "JSONServerSentEvent", "ensure_bytes"):
        assert hasattr(sse_starlette.event, name)
        assert getattr(sse_fast.event, name) is getattr(sse_fast, name)
    for name in ("EventSourceResponse", "SendTimeoutError", "AppStatus", "ensure_bytes", "ServerSentEvent"):
        assert hasattr(sse_starlette.sse, name)
        assert hasattr(sse_fast.sse, name)
    assert issubclass(SendTimeoutError, TimeoutError)
    assert sse_fast.sse.AppStatus is AppStatus
    assert EventSourceResponse.DEFAULT_PING_INTERVAL == 15


def _run(code: str, **env: str) -> str:
    full = dict(os.environ)
    full.pop("SSE_FAST_NO_EXTENSIONS", None)
    full.update(env)
    return subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True, check=True).stdout.strip()


def test_compiled_twin_is_the_default(request):
    """In a fresh process, with nothing set, the compiled encoder is chosen."""
    if os.environ.get("SSE_FAST_NO_EXTENSIONS", "") not in ("", "0") or request.config.getoption("--no-extensions"):
        pytest.skip("the run forces the pure twin")  # explicit choice, never automatic
    out = _run("import sse_fast, sse_fast._encoder as e; print(sse_fast.IMPLEMENTATION, e.EventBuffer.__module__)")
    assert out == "cython sse_fast._encoder_c"


def test_env_var_forces_pure_twin():
    out = _run("import sse_fast, sse_fast._encoder as e; print(sse_fast.IMPLEMENTATION, e.EventBuffer.__module__)",
               SSE_FAST_NO_EXTENSIONS="1")
    assert out == "python sse_fast._encoder_py"


def test_env_var_imports_no_compiled_module():
    """``SSE_FAST_NO_EXTENSIONS=1``: nothing compiled is imported, even after streaming a response."""
    code = (
        "import asyncio, sys\n"
        "import sse_fast\n"
        "from sse_fast import EventSourceResponse, ServerSentEvent, ensure_bytes\n"
        "async def gen():\n"
        "    yield ServerSentEvent('a', id='1')\n"
        "    yield {'data': 'b'}\n"
        "out = []\n"
        "async def receive():\n"
        "    await asyncio.Event().wait()\n"
        "async def send(m):\n"
        "    out.append(m.get('body', b''))\n"
        "asyncio.run(EventSourceResponse(gen())({'type': 'http', 'method': 'GET'}, receive, send))\n"
        "ensure_bytes({'data': 1}, '\\n')\n"
        "print(b''.join(out), sorted(m for m in sys.modules if m.startswith('sse_fast.') and m.endswith('_c')))"
    )
    assert _run(code, SSE_FAST_NO_EXTENSIONS="1") == "b'id: 1\\r\\ndata: a\\r\\n\\r\\ndata: b\\r\\n\\r\\n' []"


def test_works_without_the_extension():
    """A missing extension falls back to the pure twin (as on a machine without a compiler)."""
    code = (
        "import sys; sys.modules['sse_fast._encoder_c'] = None\n"
        "import sse_fast\n"
        "print(sse_fast.IMPLEMENTATION, sse_fast.ServerSentEvent('a', id='1').encode())"
    )
    assert _run(code) == "python b'id: 1\\r\\ndata: a\\r\\n\\r\\n'"


def test_json_event(impl):
    assert JSONServerSentEvent({"a": "\u00e9", "b": [1, 2.5]}).encode() == 'data: {"a":"\u00e9","b":[1,2.5]}\r\n\r\n'.encode()
    assert JSONServerSentEvent(None).encode() == b"\r\n"
    assert JSONServerSentEvent("").encode() == b'data: ""\r\n\r\n'
    assert JSONServerSentEvent("a\nb", event="e", id="1", sep="\n").encode() == b'id: 1\nevent: e\ndata: "a\\nb"\n\n'
    with pytest.raises(ValueError):
        JSONServerSentEvent(float("nan"))
    with pytest.raises(TypeError):
        JSONServerSentEvent({"s": {1, 2}})
    ref = sse_starlette.event.JSONServerSentEvent({"k": [1, None, "x\u2028"]}, comment="c").encode()
    assert JSONServerSentEvent({"k": [1, None, "x\u2028"]}, comment="c").encode() == ref
    assert json.loads(JSONServerSentEvent([1]).data) == [1]


def test_event_attributes_and_repr():
    ev = ServerSentEvent("d", event="e", id="1", retry=5, comment="c", sep="\n")
    assert (ev.data, ev.event, ev.id, ev.retry, ev.comment, ev.sep) == ("d", "e", "1", 5, "c", "\n")
    ev.data = "changed"
    assert ev.encode() == b": c\nid: 1\nevent: e\ndata: changed\nretry: 5\n\n"
    ev.retry = "bad"
    with pytest.raises(TypeError, match="retry"):
        ev.encode()
    assert "data='d'" in repr(ServerSentEvent("d"))
    assert ServerSentEvent("x", id="1") == ServerSentEvent("x", id="1")
    with pytest.raises(ValueError, match="sep"):
        ServerSentEvent("x", sep="\t")


def test_ensure_bytes(impl):
    assert ensure_bytes(b"x", "\n") == b"x"
    assert ensure_bytes(memoryview(b"y"), "\n") == b"y"
    d = {"data": 1, "event": "e"}
    assert ensure_bytes(d, "\n") == b"event: e\ndata: 1\n\n"
    assert d == {"data": 1, "event": "e"}
    assert ensure_bytes(3, "\r") == b"data: 3\r\r"
    assert ensure_bytes(ServerSentEvent("s"), "\n") == b"data: s\r\n\r\n"
    for item in (b"x", {"data": "a\nb", "id": "i"}, "t\r\nu", 7):
        for sep in ("\r\n", "\r", "\n"):
            # copies: sse-starlette before 3.7 adds "sep" to the dict it is given
            ours = ensure_bytes(item.copy() if isinstance(item, dict) else item, sep)
            assert ours == sse_starlette.event.ensure_bytes(item.copy() if isinstance(item, dict) else item, sep)
    ref = sse_starlette.event.ServerSentEvent("v", comment="c", sep="\n")
    assert ensure_bytes(ServerSentEvent("v", comment="c", sep="\n"), "\r") == sse_starlette.event.ensure_bytes(ref, "\r")
    with pytest.raises(ValueError, match="sep"):
        ensure_bytes("x", "--")
