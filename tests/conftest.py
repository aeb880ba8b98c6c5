"""Shared fixtures: the two encoder twins, and real uvicorn servers on 127.0.0.1.

``impl`` runs a test once on the compiled twin and once on the pure-Python
twin, by pointing ``sse_fast._encoder`` (which the writer, the events and the
response use at call time) at that twin. The compiled case is never skipped:
when the extension is missing it fails, unless ``--no-extensions`` is given
(or ``SSE_FAST_NO_EXTENSIONS=1``), which deselects it explicitly.
"""

from __future__ import annotations

import importlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sse_fast import _encoder, _encoder_py

ROOT = Path(__file__).resolve().parent.parent
NO_EXT = os.environ.get("SSE_FAST_NO_EXTENSIONS", "") not in ("", "0")


def pytest_addoption(parser):
    parser.addoption("--no-extensions", action="store_true", help="deselect the compiled-twin cases")


def twin_params():
    return ["cython", "python"]


def pytest_configure(config):
    """Refuse to run the compiled cases against a tree that has no compiled twin.

    ``pip install .`` (not editable) builds the extension into site-packages,
    but pytest run from this folder imports the tree's ``sse_fast/``: every
    compiled case would fail with ``ModuleNotFoundError``. Say so once, clearly.
    """
    if config.getoption("--no-extensions") or NO_EXT:
        return
    try:
        importlib.import_module("sse_fast._encoder_c")
        importlib.import_module("sse_fast._parser_c")
    except ImportError as exc:
        import sse_fast

        raise pytest.UsageError(
            f"the compiled twins are not importable from {Path(sse_fast.__file__).parent} ({exc}). "
            "Tests import the sse_fast/ of this tree: build it in place with `pip install -e .` "
            "(a non-editable install builds elsewhere), or pass --no-extensions "
            "(SSE_FAST_NO_EXTENSIONS=1) to run the pure-Python twins only."
        ) from None


def pytest_collection_modifyitems(config, items):
    if not (config.getoption("--no-extensions") or NO_EXT):
        return
    keep, drop = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and "cython" in callspec.params.values():
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def load_twin(name: str):
    """The encoder twin module called ``name`` ("cython" or "python")."""
    if name == "python":
        return _encoder_py
    return importlib.import_module("sse_fast._encoder_c")  # ImportError fails the test


_NAMES = ("EventBuffer", "StreamBuffer", "encode_fields", "encode_item", "ensure_bytes", "check_sep", "produce", "LoopTurns",
          "first_step")


@pytest.fixture(params=twin_params())
def impl(request, monkeypatch):
    """The encoder twin under test, installed as ``sse_fast._encoder``'s functions."""
    mod = load_twin(request.param)
    for name in _NAMES:
        monkeypatch.setattr(_encoder, name, getattr(mod, name))
    return mod


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: ``python -m sse_fast demo`` on the port ``Server`` picks
DEMO_COMMAND = ["-m", "sse_fast", "demo", "--host", "127.0.0.1", "--port", "{port}", "--log-level", "warning"]


class Server:
    """A server subprocess on a free 127.0.0.1 port: started, waited for, stopped.

    By default uvicorn (uvloop + httptools) serving ``tests/server_app.py``;
    ``command`` (``python`` arguments, ``{port}`` filled in) runs anything else,
    e.g. ``DEMO_COMMAND``. ``impl="python"`` sets ``SSE_FAST_NO_EXTENSIONS=1``;
    ``env`` adds environment variables; ``port`` reuses a port (a restart).
    """

    def __init__(self, impl: str = "cython", app: str = "tests.server_app:app",
                 command: list[str] | None = None, env: dict[str, str] | None = None,
                 port: int | None = None) -> None:
        self.port = free_port() if port is None else port
        env = {**os.environ, **(env or {})}
        env.pop("SSE_FAST_NO_EXTENSIONS", None)
        if impl == "python":
            env["SSE_FAST_NO_EXTENSIONS"] = "1"
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        if command is None:
            command = ["-m", "uvicorn", app, "--host", "127.0.0.1", "--port", "{port}",
                       "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning"]
        self.proc = subprocess.Popen(
            [sys.executable] + [arg.replace("{port}", str(self.port)) for arg in command],
            cwd=str(ROOT), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("server exited: " + self.stop())
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise RuntimeError("server did not start: " + self.stop())
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> str:
        """Terminate (kill after 10 s) and return what the server printed."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        out = self.proc.stdout.read().decode(errors="replace")
        self.proc.stdout.close()
        return out


@pytest.fixture(scope="module", params=twin_params())
def server(request):
    """A server per module and twin; the compiled twin is the server's default."""
    srv = Server(request.param)
    yield srv
    srv.stop()
