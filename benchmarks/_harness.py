"""Shared benchmark plumbing: a pinned uvicorn server in its own process, raw HTTP clients.

The server is ``uvicorn --loop uvloop --http httptools --no-access-log`` running
``benchmarks/apps.py``, started with ``taskset -c <core>`` on a listening socket
made here (``--fd``), so there is no port race. ``server()`` is a context
manager that always ends the process group it started (SIGTERM, then SIGKILL
after a few seconds), so a run leaves no process behind.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SERVER_CORE = 0
CLIENT_CORE = 1


def ncpu() -> int:
    return os.cpu_count() or 1


def pin_self(core: int = CLIENT_CORE) -> None:
    """Pin this process to ``core`` when the machine has it (no-op otherwise)."""
    if hasattr(os, "sched_setaffinity") and core < ncpu():
        os.sched_setaffinity(0, {core})


@dataclass
class Server:
    """A running benchmark server: its port and process id."""

    port: int
    pid: int
    proc: subprocess.Popen


@contextlib.contextmanager
def server(core: int = SERVER_CORE, env: dict[str, str] | None = None, backlog: int = 8192) -> Iterator[Server]:
    """Start the benchmark app under uvicorn (uvloop + httptools) pinned to ``core``.

    Yields a ``Server``; on exit the process group is terminated (then killed).

    Raises:
        RuntimeError: the server did not answer ``/health`` within 20 seconds.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(backlog)
    port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "uvicorn", "--app-dir", HERE, "apps:app", "--fd", str(sock.fileno()),
           "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning",
           "--lifespan", "off", "--timeout-graceful-shutdown", "1"]
    if shutil.which("taskset") and core < ncpu():
        cmd = ["taskset", "-c", str(core)] + cmd
    full_env = dict(os.environ)
    full_env.update(env or {})
    proc = subprocess.Popen(cmd, pass_fds=(sock.fileno(),), cwd=ROOT, env=full_env, start_new_session=True)
    sock.close()
    try:
        deadline = time.monotonic() + 20
        pid = None
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with status {proc.returncode}")
            try:
                status, body = http_get(port, "/health", timeout=1.0)
                if status == 200:
                    pid = int(body.split()[1])
                    break
            except OSError:
                pass
            time.sleep(0.1)
        if pid is None:
            raise RuntimeError("server did not answer /health within 20 s")
        yield Server(port=port, pid=pid, proc=proc)
    finally:
        stop(proc)


def stop(proc: subprocess.Popen, grace: float = 3.0) -> None:
    """End the process group of ``proc``: SIGTERM, then SIGKILL after ``grace`` seconds."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def request_bytes(path: str, close: bool = True) -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n"
            f"Accept-Encoding: identity\r\n{'Connection: close' if close else ''}\r\n\r\n").encode()


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, str]:
    """A tiny blocking GET (``Connection: close``); returns ``(status, body text)``."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request_bytes(path))
        chunks = []
        while True:
            b = s.recv(65536)
            if not b:
                break
            chunks.append(b)
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body.decode("latin-1")


@dataclass
class StreamResult:
    """One streamed response read to its end by ``read_stream``."""

    seconds: float  # request sent -> connection closed
    nbytes: int  # bytes read, headers and chunk framing included
    blank_lines: int  # occurrences of CRLF CRLF (one per event, + header end + last chunk)
    status: int
    tail: bytes


def read_stream(port: int, path: str, timeout: float = 120.0) -> StreamResult:
    """GET ``path`` and read the raw socket until the server closes it.

    Counts ``\\r\\n\\r\\n`` across read boundaries (one per event with CRLF separators).

    Raises:
        TimeoutError: nothing arrived for ``timeout`` seconds.
    """
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(timeout)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    nbytes = 0
    count = 0
    prev = b""
    first = b""
    try:
        t0 = time.perf_counter()
        s.sendall(request_bytes(path))
        while True:
            k = s.recv_into(buf)
            if not k:
                break
            chunk = view[:k]
            if not first:
                first = bytes(chunk[:64])
            # an occurrence may straddle two reads: look at the 3 bytes before plus this read
            joined = prev + bytes(chunk[:3])
            count += joined.count(b"\r\n\r\n") + buf.count(b"\r\n\r\n", 0, k)
            prev = bytes(chunk[max(0, k - 3):k])
            nbytes += k
        t1 = time.perf_counter()
    finally:
        s.close()
    status = int(first.split(b" ", 2)[1]) if first.startswith(b"HTTP/") else 0
    return StreamResult(seconds=t1 - t0, nbytes=nbytes, blank_lines=count, status=status, tail=prev)


def machine() -> dict[str, str]:
    """Machine and version facts for RESULTS.md."""
    import importlib.metadata as md

    def ver(name: str) -> str:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return "not installed"

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        from sse_fast import _encoder

        enc = _encoder.IMPLEMENTATION
    except Exception as exc:  # noqa: BLE001
        enc = f"unavailable ({exc})"
    return {
        "cpu": f"{cpu}, {ncpu()} cores",
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "sse_fast": f"{ver('sse_fast')} (encoder: {enc})",
        "sse-starlette": ver("sse-starlette"),
        "starlette": ver("starlette"),
        "uvicorn": ver("uvicorn"),
        "uvloop": ver("uvloop"),
        "httptools": ver("httptools"),
    }


def probe_status(port: int, path: str, timeout: float = 10.0) -> tuple[int, str]:
    """GET ``path``, read only the response head (and what came with it), close; ``(status, text)``.

    Used to check that an endless endpoint answers 200 before opening thousands of them.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request_bytes(path))
        raw = b""
        while b"\r\n\r\n" not in raw:
            b = s.recv(65536)
            if not b:
                break
            raw += b
        if raw.startswith(b"HTTP/1.1 4"):
            s.settimeout(1.0)
            try:
                raw += s.recv(65536)
            except OSError:
                pass
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
    return status, body.decode("latin-1", "replace")


def cpu_seconds(pid: int) -> float:
    """CPU time used so far by every thread of ``pid``, in seconds.

    Reads ``/proc/<pid>/task/*/schedstat`` (nanoseconds); falls back to psutil's
    user + system time (10 ms clock ticks) where that file does not exist.
    """
    total = 0
    base = f"/proc/{pid}/task"
    try:
        for tid in os.listdir(base):
            try:
                with open(f"{base}/{tid}/schedstat") as fh:
                    total += int(fh.read().split()[0])
            except (OSError, ValueError, IndexError):
                continue
        if total:
            return total / 1e9
    except OSError:
        pass
    import psutil

    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def report(res: dict, table_fn, json_path: str | None) -> int:
    """End of a benchmark script's ``main``: print ``table_fn(res)``, save ``res`` as JSON if asked.

    Returns:
        0, the script's exit status.
    """
    import json

    print()
    print(table_fn(res))
    if json_path:
        with open(json_path, "w") as fh:
            json.dump(res, fh, indent=1)
    return 0
