"""Shared benchmark plumbing: a pinned uvicorn server in its own process, raw HTTP clients.

The server is ``uvicorn --loop uvloop --http httptools --no-access-log`` running
``benchmarks/apps.py``, started with ``taskset -c <core>`` on a listening socket
made here (``--fd``), so there is no port race. ``server()`` is a context
manager that always ends the process group it started (SIGTERM, then SIGKILL
after a few seconds), so a run leaves no process behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SERVER_CORE = 0
CLIENT_CORE = 1


class EventStreamProtocol(asyncio.Protocol):
    """A raw-socket reader of one event stream: the response head, then whole events.

    Subclasses implement ``events(buf, end, now)``: ``buf[:end]`` holds only
    complete events (split on their ``\r\n\r\n`` ends; HTTP chunk framing
    left in place), ``now`` is ``time.time()`` at the read. What follows the
    last complete event waits for the next read. ``head`` resolves once the
    head is in (``status`` set); ``closed`` tells whether the peer closed.
    """

    def __init__(self) -> None:
        self.head = asyncio.get_running_loop().create_future()
        self.buf = b""
        self.status = 0
        self.transport = None
        self.closed = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        now = time.time()
        if not self.head.done():
            self.buf += data
            if b"\r\n\r\n" not in self.buf:
                return
            head, _, data = self.buf.partition(b"\r\n\r\n")
            self.status = int(head.split(b" ", 2)[1])
            self.buf = b""
            self.head.set_result(True)
        buf = self.buf + data if self.buf else data
        end = buf.rfind(b"\r\n\r\n")
        if end < 0:
            self.buf = buf
            return
        self.buf = buf[end + 4:]
        self.events(buf, end, now)

    def events(self, buf: bytes, end: int, now: float) -> None:
        """Handle the complete events in ``buf[:end]`` (read at ``now``)."""
        raise NotImplementedError

    def connection_lost(self, exc) -> None:
        self.closed = True
        if not self.head.done():
            self.head.set_exception(ConnectionError("closed before the response head"))


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
def server(core: int = SERVER_CORE, env: dict[str, str] | None = None, backlog: int = 8192,
           app: str = "apps:app") -> Iterator[Server]:
    """Start ``app`` (a ``module:attribute`` in ``benchmarks/``; default the benchmark app)
    under uvicorn (uvloop + httptools) pinned to ``core``.

    Yields a ``Server``; on exit the process group is terminated (then killed).

    Raises:
        RuntimeError: the server did not answer ``/health`` within 20 seconds.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(backlog)
    port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "uvicorn", "--app-dir", HERE, app, "--fd", str(sock.fileno()),
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


async def open_clients(factory: Callable[[], Any], port: int, path: str, n: int,
                       concurrency: int = 100) -> list[Any]:
    """Open ``n`` streams of ``path`` on ``port`` (``concurrency`` connecting at a time), one protocol each.

    ``factory`` builds an ``asyncio.Protocol`` with a ``head`` future (set once
    the response head arrived), ``status`` and ``transport``. Returns the
    protocols once every head arrived (30 s each at most).

    Raises:
        RuntimeError: a stream answered with a status other than 200.
    """
    loop = asyncio.get_running_loop()
    req = request_bytes(path, close=False)
    sem = asyncio.Semaphore(concurrency)
    clients: list[Any] = []

    async def one() -> None:
        async with sem:
            _, proto = await loop.create_connection(factory, "127.0.0.1", port)
            proto.transport.write(req)
            await asyncio.wait_for(proto.head, 30)
            if proto.status != 200:
                raise RuntimeError(f"stream answered status {proto.status}")
            clients.append(proto)

    await asyncio.gather(*(one() for _ in range(n)))
    return clients


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
    nbytes: int  # bytes read, head and chunk framing included
    body_bytes: int  # bytes of the body (chunk framing removed)
    chunks: int  # non-empty HTTP/1.1 chunks: uvicorn writes one per non-empty body send()
    complete: bool  # the last chunk (size 0) arrived, or the body was not chunked
    status: int
    tail: bytes  # the last bytes read


def read_stream(port: int, path: str, timeout: float = 120.0) -> StreamResult:
    """GET ``path`` and read the raw socket until the server closes it.

    ``chunks`` counts the non-empty chunks of a chunked body by hopping from
    size line to size line (no copy of the data). uvicorn's HTTP/1.1 protocols
    write one chunk per ``http.response.body`` message with a non-empty body,
    so it is the number of such ``send()`` calls; socket reads are not.
    ``body_bytes`` is the de-chunked body size: compare it with the expected
    size to check the events arrived. No byte is scanned: a per-byte count
    (``bytearray.count``) costs about 0.6 ms per MB, enough to make this
    client the bottleneck of the raw ceiling (~1.5 GB/s); hopping costs
    ~0.3 us per chunk.

    Raises:
        TimeoutError: nothing arrived for ``timeout`` seconds.
        ValueError: a malformed chunk-size line.
    """
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(timeout)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    keep = 5
    head = bytearray()
    chunked = None  # unknown until the head is read
    nxt = 0  # offset, from the start of the next read, of the next chunk-size line
    line = b""  # a chunk-size line cut by a read boundary
    prev = b""  # the last ``keep`` bytes read (the tail: ``0\r\n\r\n`` after a complete chunked body)
    nbytes = body = chunks = 0
    done = False
    try:
        t0 = time.perf_counter()
        s.sendall(request_bytes(path))
        while True:
            k = s.recv_into(buf)
            if not k:
                break
            nbytes += k
            prev = (prev + view[max(0, k - keep):k])[-keep:]
            if chunked is None:
                before = len(head)
                head += view[:k]
                end = head.find(b"\r\n\r\n")
                if end < 0:
                    continue
                end += 4
                del head[end:]
                chunked = b"transfer-encoding: chunked" in bytes(head).lower()
                nxt = end - before
                if not chunked:
                    body -= nxt  # the rest of the connection is body
            if not chunked:
                body += k
                continue
            pos = nxt
            if line:  # finish a size line begun in the previous read
                j = buf.find(b"\n", 0, k)
                if j < 0:
                    line += view[:k]
                    continue
                line += view[:j]
                size = int(line.split(b";", 1)[0], 16)
                line = b""
                if not size:
                    done = True
                    pos = k
                else:
                    chunks += 1
                    body += size
                    pos = j + 1 + size + 2
            while pos < k and not done:
                j = buf.find(b"\n", pos, k)
                if j < 0:
                    line = bytes(view[pos:k])
                    pos = k
                    break
                try:
                    size = int(buf[pos:j], 16)
                except ValueError:  # a chunk extension (";name=value"): uvicorn sends none
                    size = int(buf[pos:j].split(b";", 1)[0], 16)
                if not size:
                    done = True
                    break
                chunks += 1
                body += size
                pos = j + 1 + size + 2
            nxt = pos - k if pos > k else 0
        t1 = time.perf_counter()
    finally:
        s.close()
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
    return StreamResult(seconds=t1 - t0, nbytes=nbytes, body_bytes=body, chunks=chunks,
                        complete=done or chunked is False, status=status, tail=prev)


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


def hold_many(streams: int) -> None:
    """Pin this process to ``CLIENT_CORE`` and raise its open-file limit for ``streams`` sockets."""
    import resource

    pin_self()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < streams + 200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, streams + 200), hard))


def loop_runner():
    """``uvloop.run`` where installed, else ``asyncio.run``."""
    try:
        import uvloop

        return uvloop.run
    except ImportError:
        return asyncio.run


def measure_rounds(measure, impls: list[str], rounds: int, log=print) -> list[dict[str, dict]]:
    """Run ``measure(impl)`` (a coroutine function; one fresh server each) for every impl, ``rounds`` times.

    The order alternates (forward, then backward) so that a machine drifting
    during the run weighs on every impl alike; ratios are then taken within a
    round (rows measured minutes apart on a shared machine drift by 10-20%).
    An impl whose ``measure`` raises ``RuntimeError`` or ``ImportError`` is
    logged as unavailable and left out of that round.

    Returns:
        One ``{impl: result}`` dict per round.
    """
    runner = loop_runner()
    out = []
    for i in range(rounds):
        order = impls if i % 2 == 0 else impls[::-1]
        got: dict[str, dict] = {}
        for impl in order:
            try:
                got[impl] = runner(measure(impl))
            except (RuntimeError, ImportError) as exc:
                log(f"  {impl}: unavailable ({exc})")
        out.append(got)
    return out


def run_rounds(measure, impls: list[str], every_impl: list[str], rounds: int, ratios, params: dict,
               log=print) -> dict:
    """A benchmark script's ``run``: ``measure_rounds`` with this process pinned, summed up.

    Args:
        measure: ``impl -> coroutine`` measuring one impl on a fresh server.
        impls: the impls to measure; every_impl: the script's impls, in table order.
        ratios: ``per_round -> dict`` of ratios taken within rounds (``round_ratio``).
        params: the run's parameters (``streams`` among them), copied into the result.

    Returns:
        A JSON-able dict: ``params``, ``results`` (per impl the medians over the
        rounds), ``ratios``, ``rounds`` (every round's results), ``machine``, ``date``.
    """
    hold_many(params["streams"])
    per_round = measure_rounds(measure, list(impls), rounds, log)
    results = [m for m in (median_result(per_round, impl) for impl in every_impl) if m is not None]
    return {**params, "results": results, "ratios": ratios(per_round), "rounds": per_round,
            "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def _median(values: list[float]) -> float:
    import statistics

    return statistics.median(values) if values else float("nan")


def median_result(per_round: list[dict[str, dict]], impl: str) -> dict | None:
    """``impl``'s result with every numeric field the median over the rounds (``None`` if never measured)."""
    runs = [r[impl] for r in per_round if impl in r]
    if not runs:
        return None
    out = dict(runs[0])
    for k, v in runs[0].items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = _median([r[k] for r in runs])
    out["rounds"] = len(runs)
    return out


def round_ratio(per_round: list[dict[str, dict]], a: str, b: str, key: str) -> float:
    """The median over the rounds of ``a[key] / b[key]`` measured in the same round."""
    return _median([r[a][key] / r[b][key] for r in per_round if a in r and b in r and r[b][key]])
