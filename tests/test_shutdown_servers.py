"""Graceful shutdown under every ASGI server sse_fast claims to replace sse-starlette on.

For each server (uvicorn ``app:app``, ``uvicorn.run``, ``uvicorn --workers 2``,
hypercorn asyncio and trio workers, granian ``--interface asgi``, daphne):
start it on a free port with ``tests/shutdown_app.py``, open ``N`` endless
streams on raw HTTP/1.1 sockets, read each until its first event, send the
signal to the server's (main) process, then check at every client:

- the body ended cleanly (the chunked terminator ``0\\r\\n\\r\\n``), after the
  farewell event when the stream has a ``shutdown_event``;
- every generator's ``finally`` ran (the app appends a line per ``finally``
  to ``SHUTDOWN_LOG``);
- the process (and its workers) exited by itself within 2 s plus the grace
  period; nothing is killed before that deadline (afterwards the whole process
  tree is killed, so nothing is left behind).

Scenarios: SIGTERM; SIGTERM with ``shutdown_event`` + ``shutdown_grace_period``
(the generator answers with a farewell event); a generator that ignores its
``shutdown_event`` (the grace period must end it, not earlier); SIGINT on some.
Also: ``server.should_exit = True`` set by code (uvicorn in a thread and in the
main thread), two successive uvicorn servers on one event loop,
``AppStatus.disable_automatic_graceful_drain()`` (the automatic detection is
off, the app's own ``AppStatus.should_exit = True`` still ends the streams),
and the sse-starlette style wiring ``signal.signal(SIGTERM, AppStatus.handle_exit)``
done by the app itself (the documented fallback where a server has no hook).

``SSE_BACKEND=sse_starlette`` in the environment runs the same app on
sse-starlette 3.7 (for comparison tables; the tests are written for sse_fast).
``SHUTDOWN_REPORT=path`` appends one JSON line per server test (exit time,
clean/cut/open counts) to that file.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import subprocess
import textwrap
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from .conftest import Server

N = 20  # streams per server
GRACE = 1.0  # shutdown_grace_period of the farewell streams
EXIT_BUDGET = 2.0  # seconds after the signal (plus the grace period) to exit by itself
BACKEND = os.environ.get("SSE_BACKEND", "sse_fast")
APP = "tests.shutdown_app:app"

#: python arguments per server; ``{port}`` is filled in by ``Server``
COMMANDS: dict[str, list[str]] = {
    "uvicorn": ["-m", "uvicorn", APP, "--host", "127.0.0.1", "--port", "{port}",
                "--no-access-log", "--log-level", "warning"],
    "uvicorn_run": ["-c", textwrap.dedent("""
        import uvicorn
        from tests.shutdown_app import app
        uvicorn.run(app, host="127.0.0.1", port={port}, log_level="warning", access_log=False)
        """)],
    "uvicorn_workers2": ["-m", "uvicorn", APP, "--host", "127.0.0.1", "--port", "{port}", "--workers", "2",
                         "--no-access-log", "--log-level", "warning"],
    # --graceful-timeout above the test's budget: an exit in time is sse_fast's doing,
    # not hypercorn cancelling the connections after its default 3 s
    "hypercorn_asyncio": ["-m", "hypercorn", APP, "--bind", "127.0.0.1:{port}", "--worker-class", "asyncio",
                          "--graceful-timeout", "10"],
    "hypercorn_trio": ["-m", "hypercorn", APP, "--bind", "127.0.0.1:{port}", "--worker-class", "trio",
                       "--graceful-timeout", "10"],
    "granian": ["-m", "granian", "--interface", "asgi", "--host", "127.0.0.1", "--port", "{port}",
                "--log-level", "warning", APP],
    "daphne": ["-m", "daphne", "-b", "127.0.0.1", "-p", "{port}", APP],
}


# --------------------------------------------------------------------------- client side


@dataclass
class Client:
    """One raw HTTP/1.1 stream: the bytes received and how it ended."""

    sock: socket.socket
    sid: int
    raw: bytes = b""
    ended: str = "open"  # "clean" (chunked terminator), "cut" (EOF/reset first), "open"
    ended_at: float = 0.0
    headers: bytes = b""
    body: bytes = b""  # the de-chunked body
    chunks_done: bool = False

    def parse(self) -> None:
        """Split headers and de-chunk the body; ``chunks_done`` when the 0-size chunk arrived."""
        head, sep, rest = self.raw.partition(b"\r\n\r\n")
        if not sep:
            return
        self.headers = head
        body = bytearray()
        done = False
        while True:
            line, sep, after = rest.partition(b"\r\n")
            if not sep:
                break
            try:
                size = int(line.split(b";")[0], 16)
            except ValueError:
                break
            if size == 0:
                done = after.startswith(b"\r\n")
                break
            if len(after) < size + 2:
                break
            body += after[:size]
            rest = after[size + 2:]
        self.body = bytes(body)
        self.chunks_done = done


def open_streams(port: int, n: int, query: str = "", timeout: float = 15.0) -> list[Client]:
    """``n`` streams on raw sockets, each read until its first event arrived."""
    clients = []
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        s.sendall(f"GET /stream?id={i}{query} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                  "Accept: text/event-stream\r\n\r\n".encode())
        clients.append(Client(s, i))
    deadline = time.monotonic() + timeout
    for c in clients:
        c.sock.settimeout(max(0.1, deadline - time.monotonic()))
        while b"data: tick 0" not in c.raw:
            chunk = c.sock.recv(65536)
            if not chunk:
                raise AssertionError(f"stream {c.sid} closed before its first event: {c.raw!r}")
            c.raw += chunk
            c.parse()
            if c.chunks_done:
                raise AssertionError(f"stream {c.sid} ended before its first event: {c.raw!r}")
    for c in clients:
        c.parse()
        assert b"transfer-encoding: chunked" in c.headers.lower(), c.headers
    return clients


def read_to_end(clients: list[Client], deadline: float) -> None:
    """Read every stream until its terminator, EOF or ``deadline`` (monotonic)."""
    sel = selectors.DefaultSelector()
    for c in clients:
        c.sock.setblocking(False)
        sel.register(c.sock, selectors.EVENT_READ, c)
    pending = len(clients)
    while pending and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=max(0.0, min(0.1, deadline - time.monotonic()))):
            c = key.data
            try:
                chunk = c.sock.recv(65536)
            except (ConnectionResetError, BlockingIOError) as exc:
                if isinstance(exc, BlockingIOError):
                    continue
                chunk = b""
            if chunk:
                c.raw += chunk
                c.parse()
                if not c.chunks_done:
                    continue
                c.ended = "clean"
            else:
                c.ended = "cut"
            c.ended_at = time.monotonic()
            sel.unregister(c.sock)
            pending -= 1
    sel.close()


def close_all(clients: list[Client]) -> None:
    for c in clients:
        c.sock.close()


# --------------------------------------------------------------------------- server side


def log_lines(path: Path) -> list[list[str]]:
    if not path.exists():
        return []
    return [line.split() for line in path.read_text().splitlines() if line.strip()]


def family(proc: subprocess.Popen) -> list[psutil.Process]:
    """The server process and all its descendants (workers), alive now."""
    try:
        parent = psutil.Process(proc.pid)
        return [parent] + parent.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _running(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_gone(proc: subprocess.Popen, workers: list[psutil.Process], deadline: float) -> float | None:
    """When ``proc`` and ``workers`` were all gone (monotonic), polled every 10 ms; ``None``: not by ``deadline``."""
    while True:
        if proc.poll() is not None and not any(_running(p) for p in workers if p.pid != proc.pid):
            return time.monotonic()
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.01)


class Drain:
    """Reads a server's output pipe while the test runs.

    ``Server`` collects the output only in ``stop()``; a server that logs a lot
    during shutdown (hypercorn: a traceback per cut connection) would otherwise
    block on a full pipe and never exit, which is not what is measured here.
    """

    def __init__(self, srv: Server) -> None:
        self.srv = srv
        self.chunks: list[bytes] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        stream = self.srv.proc.stdout
        try:
            while True:
                chunk = stream.read1(65536)
                if not chunk:
                    return
                self.chunks.append(chunk)
        except (ValueError, OSError):  # closed by Server.stop()
            return

    def stop(self) -> str:
        """Stop the server (``Server.stop``) and return everything it printed."""
        self.thread.join(5)
        rest = self.srv.stop()
        return b"".join(self.chunks).decode(errors="replace") + rest


def reap(procs: list[psutil.Process], proc: subprocess.Popen) -> None:
    """Kill whatever of ``procs`` still runs (after the verdict), and collect ``proc``."""
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        pass


@dataclass
class Outcome:
    server: str
    scenario: str
    clean: int = 0
    cut: int = 0
    open: int = 0
    farewells: int = 0
    finally_count: int = 0
    exit_after: float | None = None  # seconds from the signal to the last process gone; None: had to be killed
    returncode: int | None = None
    first_end: float | None = None
    last_end: float | None = None
    notes: list[str] = field(default_factory=list)

    def row(self) -> dict:
        return self.__dict__ | {"backend": BACKEND}


def _report(outcome: Outcome) -> None:
    path = os.environ.get("SHUTDOWN_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(outcome.row()) + "\n")


@pytest.fixture
def shutdown_env(tmp_path, monkeypatch):
    """A fresh ``SHUTDOWN_LOG`` for the server about to start (read at its import)."""
    log = tmp_path / "shutdown.log"
    monkeypatch.setenv("SHUTDOWN_LOG", str(log))
    monkeypatch.setenv("SSE_BACKEND", BACKEND)
    monkeypatch.delenv("SHUTDOWN_DISABLE_DRAIN", raising=False)
    monkeypatch.delenv("SHUTDOWN_TRIGGER", raising=False)
    monkeypatch.delenv("SHUTDOWN_WIRE", raising=False)
    return log


def run_signal_scenario(server: str, sig: int, log: Path, *, farewell: bool, stubborn: bool = False,
                        trigger: Path | None = None, hold: float = 0.0) -> Outcome:
    """Start ``server``, open ``N`` streams, send ``sig`` to its main process, observe.

    ``hold``: seconds to wait after the signal before creating ``trigger`` (the
    app's own ``AppStatus.should_exit = True``); streams that ended during the
    hold are counted in ``notes``.
    """
    grace = GRACE if farewell else 0.0
    query = f"&farewell=1&grace={grace}" if farewell else ""
    if stubborn:
        query += "&stubborn=1"
    srv = Server(command=COMMANDS[server])
    drain = Drain(srv)
    outcome = Outcome(server, ("SIGINT" if sig == signal.SIGINT else "SIGTERM")
                      + (" + stubborn" if stubborn else " + farewell" if farewell else ""))
    clients: list[Client] = []
    procs: list[psutil.Process] = []
    try:
        clients = open_streams(srv.port, N, query)
        procs = family(srv.proc)
        t0 = time.monotonic()
        srv.proc.send_signal(sig)
        if trigger is not None:
            read_to_end(clients, t0 + hold)
            early = [c.sid for c in clients if c.ended != "open" or b"event: farewell" in c.body]
            if early:
                outcome.notes.append(f"{len(early)} streams ended or got the farewell before the app's own trigger")
            trigger.write_text("go")
            t0 = time.monotonic()
        budget = EXIT_BUDGET + grace
        read_to_end(clients, t0 + budget)
        # the process and its workers must be gone by t0 + budget, by themselves
        gone = wait_gone(srv.proc, procs, t0 + budget)
        if gone is not None:
            outcome.exit_after = round(gone - t0, 2)
            outcome.returncode = srv.proc.returncode
        # streams still open when the process is gone: give the sockets a moment
        read_to_end([c for c in clients if c.ended == "open"], time.monotonic() + 0.2)
    finally:
        reap(procs or family(srv.proc), srv.proc)
        out = drain.stop()
        close_all(clients)
    for c in clients:
        setattr(outcome, c.ended, getattr(outcome, c.ended) + 1)
        if b"event: farewell" in c.body:
            outcome.farewells += 1
    ends = [c.ended_at - t0 for c in clients if c.ended != "open"]
    if ends:
        outcome.first_end, outcome.last_end = round(min(ends), 2), round(max(ends), 2)
    lines = log_lines(log)
    outcome.finally_count = len({ln[1] for ln in lines if ln[0] == "finally"})
    if out.strip():
        outcome.notes.append(out.strip()[-300:])
    _report(outcome)
    return outcome


def check(outcome: Outcome, *, farewell: bool) -> None:
    summary = {k: v for k, v in outcome.row().items() if k != "notes"}
    assert outcome.clean == N, f"{N - outcome.clean} of {N} streams not ended cleanly: {summary}"
    if farewell:
        assert outcome.farewells == N, f"farewell missing: {summary}"
    assert outcome.finally_count == N, f"generator finally ran {outcome.finally_count} of {N}: {summary}"
    assert outcome.exit_after is not None, f"not exited within {EXIT_BUDGET} s + grace: {summary}"


# --------------------------------------------------------------------------- the server matrix


@pytest.mark.parametrize("farewell", [False, True], ids=["plain", "farewell"])
@pytest.mark.parametrize("server", list(COMMANDS))
def test_sigterm_ends_streams_cleanly(server, farewell, shutdown_env):
    outcome = run_signal_scenario(server, signal.SIGTERM, shutdown_env, farewell=farewell)
    check(outcome, farewell=farewell)


@pytest.mark.parametrize("server", list(COMMANDS))
def test_grace_period_bounds_a_stubborn_generator(server, shutdown_env):
    """A generator that ignores its ``shutdown_event`` is stopped once ``shutdown_grace_period``
    ran out (not before), and the body still ends cleanly."""
    outcome = run_signal_scenario(server, signal.SIGTERM, shutdown_env, farewell=True, stubborn=True)
    check(outcome, farewell=False)
    assert outcome.first_end is not None and outcome.first_end >= GRACE * 0.9, outcome.row()


@pytest.mark.parametrize("server", ["uvicorn", "hypercorn_asyncio", "granian", "daphne"])
def test_sigint_ends_streams_cleanly(server, shutdown_env):
    outcome = run_signal_scenario(server, signal.SIGINT, shutdown_env, farewell=True)
    check(outcome, farewell=True)


@pytest.mark.parametrize("server", list(COMMANDS))
def test_disabled_drain_leaves_streams_to_the_app(server, shutdown_env, monkeypatch, tmp_path):
    """``disable_automatic_graceful_drain()``: the signal alone does not end the streams;
    the app's own ``AppStatus.should_exit = True`` (here: when a file appears) does, cleanly."""
    trigger = tmp_path / "trigger"
    monkeypatch.setenv("SHUTDOWN_DISABLE_DRAIN", "1")
    monkeypatch.setenv("SHUTDOWN_TRIGGER", str(trigger))
    outcome = run_signal_scenario(server, signal.SIGTERM, shutdown_env, farewell=True, trigger=trigger, hold=0.8)
    # nothing of sse_fast's before the app's own should_exit: no farewell, no end
    # (daphne: this needs its reactor stop held while streams are open, see the research note)
    assert not any("before the app's own trigger" in n for n in outcome.notes), outcome.row()
    check(outcome, farewell=True)


@pytest.mark.parametrize("server", ["uvicorn", "granian"])
def test_app_wired_handle_exit(server, shutdown_env, monkeypatch):
    """The documented fallback where no hook exists: the app chains ``AppStatus.handle_exit``
    to the server's SIGTERM handler in its lifespan startup (sse-starlette's way)."""
    monkeypatch.setenv("SHUTDOWN_WIRE", "handle_exit")
    outcome = run_signal_scenario(server, signal.SIGTERM, shutdown_env, farewell=True)
    assert any(ln[0] == "wired" for ln in log_lines(shutdown_env)), "lifespan startup did not run"
    check(outcome, farewell=True)


# --------------------------------------------------------------------------- should_exit from code

EMBEDDED = textwrap.dedent("""
    import asyncio, os, signal, sys, threading, time
    import uvicorn
    from tests.shutdown_app import app

    MODE = sys.argv[1]
    PORT = int(sys.argv[2])
    N = int(sys.argv[3])

    def config(port):
        return uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)

    if MODE == "thread":
        server = uvicorn.Server(config(PORT))
        t = threading.Thread(target=server.run, daemon=True)
        t.start()
        while not os.path.exists(os.environ["GO_FILE"]):
            time.sleep(0.02)
        print("should_exit", time.monotonic(), flush=True)
        server.should_exit = True
        t.join(10)
        print("joined", not t.is_alive(), flush=True)
    elif MODE == "main":
        async def main():
            server = uvicorn.Server(config(PORT))
            task = asyncio.create_task(server.serve())
            while not os.path.exists(os.environ["GO_FILE"]):
                await asyncio.sleep(0.02)
            print("should_exit", time.monotonic(), flush=True)
            server.should_exit = True
            await asyncio.wait_for(task, 10)
            print("joined", True, flush=True)
        asyncio.run(main())
    elif MODE == "twice":
        # HOW: "code" (server.should_exit = True) or "signal" (SIGTERM to this process)
        HOW = sys.argv[4]
        signal.signal(signal.SIGTERM, lambda s, f: None)  # what uvicorn re-raises after serve()

        async def main():
            for round_ in (1, 2):
                server = uvicorn.Server(config(PORT))
                task = asyncio.create_task(server.serve())
                go = os.environ["GO_FILE"] + str(round_)
                while not os.path.exists(go):
                    await asyncio.sleep(0.02)
                print("stop", round_, time.monotonic(), flush=True)
                if HOW == "code":
                    server.should_exit = True
                else:
                    os.kill(os.getpid(), signal.SIGTERM)
                await asyncio.wait_for(task, 10)
                print("joined", round_, flush=True)
        asyncio.run(main())
""")


def _embedded(mode: str, tmp_path: Path, monkeypatch, *extra: str) -> tuple[Server, Path]:
    go = tmp_path / "go"
    monkeypatch.setenv("GO_FILE", str(go))
    script = tmp_path / "embedded.py"
    script.write_text(EMBEDDED)
    srv = Server(command=[str(script), mode, "{port}", str(N), *extra])
    return srv, Drain(srv), go


@pytest.mark.parametrize("mode", ["thread", "main"])
def test_should_exit_from_code_ends_streams(mode, shutdown_env, tmp_path, monkeypatch):
    """``server.should_exit = True`` set by code (no signal): every stream ends cleanly, the server stops."""
    srv, drain, go = _embedded(mode, tmp_path, monkeypatch)
    clients: list[Client] = []
    try:
        clients = open_streams(srv.port, N, f"&farewell=1&grace={GRACE}")
        t0 = time.monotonic()
        go.write_text("go")
        read_to_end(clients, t0 + EXIT_BUDGET + GRACE)
        try:
            srv.proc.wait(max(0.05, t0 + EXIT_BUDGET + GRACE - time.monotonic()))
            exited = True
        except subprocess.TimeoutExpired:
            exited = False
    finally:
        reap(family(srv.proc), srv.proc)
        out = drain.stop()
        close_all(clients)
    states = [c.ended for c in clients]
    assert states.count("clean") == N, (states, out[-500:])
    assert sum(b"event: farewell" in c.body for c in clients) == N
    finals = {ln[1] for ln in log_lines(shutdown_env) if ln[0] == "finally"}
    assert len(finals) == N, finals
    assert exited and "joined True" in out, out[-500:]


@pytest.mark.parametrize("how", ["code", "signal"])
def test_second_server_on_the_same_loop_streams_normally(how, shutdown_env, tmp_path, monkeypatch):
    """A uvicorn server started on the loop where a first one shut down streams normally, and shuts down cleanly.

    ``how``: the first (and second) server is stopped by ``server.should_exit = True``
    ("code") or by SIGTERM ("signal"; uvicorn's handler, chained by sse_fast).
    """
    srv, drain, go = _embedded("twice", tmp_path, monkeypatch, how)
    clients: list[Client] = []
    try:
        first = open_streams(srv.port, 3)
        clients += first
        go.with_name("go1").write_text("go")
        read_to_end(first, time.monotonic() + EXIT_BUDGET)
        # the second server binds the same port once the first is gone
        deadline = time.monotonic() + 5
        while True:
            try:
                second = open_streams(srv.port, 3, "&interval=0.05", timeout=5)
                break
            except ConnectionRefusedError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        clients += second
        # it streams: several events arrive, the stream stays open
        read_to_end(second, time.monotonic() + 0.6)
        for c in second:
            assert c.ended == "open", (c.ended, c.raw[-200:])
            assert c.body.count(b"data: tick") >= 5, c.body
        go.with_name("go2").write_text("go")
        read_to_end(second, time.monotonic() + EXIT_BUDGET)
        srv.proc.wait(EXIT_BUDGET)
    finally:
        reap(family(srv.proc), srv.proc)
        out = drain.stop()
        close_all(clients)
    assert [c.ended for c in first] == ["clean"] * 3, out[-500:]
    assert [c.ended for c in second] == ["clean"] * 3, out[-500:]
