"""Broadcast over Redis (issue 11): publish-to-deliver latency against the memory backend, and
the events/s one topic carries through Redis to two server processes.

Everything runs on this machine: the benchmark starts its own ``redis-server``
(a free 127.0.0.1 port, a temporary folder, ``--save "" --appendonly no``),
its own uvicorn servers (``benchmarks/redis_app.py`` under ``_harness.server``:
uvloop + httptools, no access log, pinned with ``taskset``) and its own
publisher process, and stops all of them at the end (also on Ctrl-C or an
error).

Every event's data is ``{"seq":N,"t":T,"p":"xx.."}`` (~100 bytes, as in
``fanout.py``): ``t`` is the publisher's ``time.time()`` just before its
publish call. This process holds the streams with raw asyncio sockets (uvloop)
and, for every event it reads, takes ``time.time() - t`` as the
publish-to-deliver latency (one machine, one clock). "First delivery" is, per
event, the smallest of those latencies over every stream: the path from the
publisher to the first subscriber, without the time the fan-out to the other
streams takes. Every stream counts its events and checks the ``seq`` numbers:
it must get every event from the first published to the last, once, in order
(``loss``/``dup``); none may be cut (the slow-subscriber policy) and none may
see a gap event. Latencies are those of the events read in the measuring
window (after a warm-up); CPU is each process's ``/proc/PID/task/*/schedstat``
over the window (``_harness.cpu_seconds``) in % of one core; "other CPU" is
the busy time of all cores (``/proc/stat``) that no process of the benchmark
was charged with (other jobs on the machine, some kernel work). Before each
measured step the benchmark waits (at most 5 minutes) until the machine is
quiet, so that another job's burst does not land in the window.

Latency rows (``--rows``; fresh servers for each, ``--subscribers`` streams
per server process, ``--rate`` events/s, ``--repeat`` rounds of a
``--seconds`` window, pooled):

- ``memory``: one server, ``Broadcast()`` (memory backend), the publisher a
  task in that server (``/publish/start``), absolute schedule;
- ``memory2``: two such servers, each publishing the same events on the same
  schedule to its own streams: the two-process load with no Redis (the
  control for ``redis2``: the same client reads twice as many streams, on the
  same cores);
- ``redis1``: one server, ``Broadcast(url=redis)``, the publisher in its own
  process (``sse_fast.broadcast.RedisPublisher``: blocking client, no event
  loop, absolute schedule): the Redis hop (publisher -> XADD -> the server's
  one XREAD reader -> fan-out) with the placement of ``memory``;
- ``redis2``: the target of issue 11: two servers with ``Broadcast(url=redis)``,
  ``--subscribers`` each, the same publisher process.

Throughput sweeps (``--sweep-subscribers``, one sweep per value): two
Redis-backed servers with that many streams each on one topic, a publisher
process using ``Broadcast(url=redis).publish()`` (asyncio: publishes made
while an XADD pipeline is in flight go out in the next one) at increasing
rates (``--sweep-rates``), each for a 1 s warm-up plus ``--sweep-seconds``.
The same streams stay open across the rates and the ``seq`` numbers go on, so
loss between steps counts too. A sweep stops after the first rate where p99
passes 100 ms, the publisher or the streams fall more than 10% short of the
target, or an event is lost.

CPU placement (``--layout``; written for a 2-core machine, nothing is pinned
on a 1-core one):

- ``balanced`` (default): server (A) on core 0 with ``redis-server`` and the
  publisher process; the clients (this process) on core 1, with server B in
  the two-process runs. The one-process rows keep ``fanout.py``'s placement
  (server core 0, clients core 1); in the sweeps the load splits about evenly.
- ``split``: as ``balanced`` but ``redis-server`` and the publisher on core 1
  (with the clients and server B: core 1 saturates first in the sweeps);
- ``shared``: as ``split``, both servers on core 0;
- ``spread``: servers on cores 0 and 1, everything else unpinned.

Usage::

    python benchmarks/redis_fanout.py             # 1,000 per process, 3 x 20 s per row, sweeps with 100 and 10
    python benchmarks/redis_fanout.py --quick     # 200 per process, 1 x 5 s per row, a short sweep with 50
    python benchmarks/redis_fanout.py --rows redis2 --repeat 1 --no-sweep --json out.json
    python benchmarks/redis_fanout.py --sweep-only --sweep-subscribers 10 --sweep-rates 1000,10000,30000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import psutil  # noqa: E402
from _harness import (  # noqa: E402
    ROOT,
    EventStreamProtocol,
    cpu_seconds,
    http_get,
    machine,
    ncpu,
    open_clients,
    report,
    server,
    stop,
)
from redis_app import event_data, paced, pad_for, publisher_summary  # noqa: E402

ROWS = ["memory", "memory2", "redis1", "redis2"]
LABELS = {"memory": "memory, 1 process (publisher in the server)",
          "memory2": "memory, 2 processes (a publisher in each server, same schedule)",
          "redis1": "redis, 1 process (publisher process)",
          "redis2": "redis, 2 processes (publisher process)"}
LAYOUTS = ["balanced", "split", "shared", "spread"]
SWEEP_RATES = [100, 300, 1000, 2000, 3000, 5000, 10000, 20000, 30000, 50000, 100000]
QUICK_SWEEP_RATES = [100, 1000, 3000, 10000]
#: p99 above this ends the sweep (issue 11: "before latency passes 100 ms")
SWEEP_P99_LIMIT_MS = 100.0
SEQ = b'"seq":'
SEQ_DIGITS = 9  # redis_app.event_data writes nine digits
GAP = b"sse_fast.gap"
#: before each measured step, wait (at most QUIET_MAX_WAIT s) until the machine is busy below QUIET_LIMIT % of a core
QUIET_LIMIT, QUIET_MAX_WAIT = 15.0, 300.0
_T_RE = re.compile(rb'"t":([0-9]+\.[0-9]+)')


# ---------------------------------------------------------------- placement


@dataclass
class Layout:
    """Which core each process runs on (``None``: any core)."""

    name: str
    client: int | None
    redis: int | None
    publisher: int | None
    one_server: int | None  # the server of the one-process rows
    two_servers: tuple[int | None, int | None]  # the servers of the two-process runs

    def describe(self) -> str:
        """One line for the report."""
        def c(x: int | None) -> str:
            return "any core" if x is None else f"core {x}"

        return (f"`--layout {self.name}`: one-process rows: server {c(self.one_server)}; two-process runs: "
                f"server A {c(self.two_servers[0])}, server B {c(self.two_servers[1])}; clients (this process) "
                f"{c(self.client)}, redis-server {c(self.redis)}, publisher process {c(self.publisher)}")


def layout(name: str) -> Layout:
    """The placement preset ``name`` (one of ``LAYOUTS``, see the module docstring); nothing is pinned
    on a machine with one core.

    Raises:
        ValueError: an unknown preset.
    """
    if ncpu() < 2:  # nothing to pin apart
        return Layout(name, None, None, None, None, (None, None))
    if name == "split":
        return Layout(name, 1, 1, 1, 0, (0, 1))
    if name == "shared":
        return Layout(name, 1, 1, 1, 0, (0, 0))
    if name == "spread":
        return Layout(name, None, None, None, 0, (0, 1))
    if name == "balanced":
        return Layout(name, 1, 0, 0, 0, (0, 1))
    raise ValueError(f"unknown layout {name!r}: {', '.join(LAYOUTS)}")


def _taskset(core: int | None) -> list[str]:
    """The ``taskset`` prefix that pins a command to ``core`` (every core for ``None``)."""
    if not shutil.which("taskset"):
        return []
    cores = ",".join(str(i) for i in range(ncpu())) if core is None or core >= ncpu() else str(core)
    return ["taskset", "-c", cores]


@contextlib.contextmanager
def bench_server(core: int | None, env: dict[str, str]) -> Iterator:
    """``_harness.server`` running ``redis_app:app`` with ``env``, pinned to ``core`` (``None``: any core).

    The harness pins with ``taskset -c core``; for "any core" this process's
    own affinity (which children inherit) is widened while the server starts.
    """
    if core is not None and core < ncpu():
        with server(core, env=env, app="redis_app:app") as srv:
            yield srv
        return
    mine = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    if mine is not None:
        os.sched_setaffinity(0, set(range(ncpu())))
    try:
        cm = server(ncpu(), env=env, app="redis_app:app")  # core >= ncpu(): no taskset
        srv = cm.__enter__()
    finally:
        if mine is not None:
            os.sched_setaffinity(0, mine)
    try:
        yield srv
    finally:
        cm.__exit__(None, None, None)


# ---------------------------------------------------------------- redis-server


@dataclass
class Redis:
    """A ``redis-server`` this benchmark started."""

    url: str
    port: int
    pid: int
    version: str


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def redis_server(core: int | None) -> Iterator[Redis]:
    """Start ``redis-server`` on a free 127.0.0.1 port in a temporary folder (no RDB, no AOF).

    Yields a ``Redis``; on exit the server is stopped and the folder removed.

    Raises:
        RuntimeError: ``redis-server`` is not on PATH or did not answer PING within 10 s.
    """
    import redis

    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server is not on PATH (Debian: apt-get install redis-server)")
    with tempfile.TemporaryDirectory(prefix="sse_fast_redis_") as folder:
        for attempt in range(3):
            port = _free_port()
            proc = subprocess.Popen(
                _taskset(core) + [exe, "--port", str(port), "--bind", "127.0.0.1", "--dir", folder,
                                  "--save", "", "--appendonly", "no", "--protected-mode", "no",
                                  "--logfile", os.path.join(folder, "redis.log")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            try:
                url = f"redis://127.0.0.1:{port}/0"
                client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
                deadline = time.monotonic() + 10
                info = None
                while proc.poll() is None and time.monotonic() < deadline:
                    try:
                        info = client.info("server")
                        break
                    except redis.exceptions.RedisError:
                        time.sleep(0.05)
                client.close()
                if info is None:
                    if proc.poll() is not None and attempt < 2:
                        continue  # the port was taken in between: try another
                    raise RuntimeError("redis-server did not answer within 10 s")
                yield Redis(url=url, port=port, pid=proc.pid, version=str(info.get("redis_version")))
                return
            finally:
                stop(proc)


# ---------------------------------------------------------------- clients


class Recorder:
    """What the streams read: event times while ``on`` (for latencies), event counts always."""

    def __init__(self) -> None:
        self.on = False
        self.ts = array("d")  # publish times of the events read while on
        self.ends = array("q")  # per read: the length of ``ts`` after it
        self.nows = array("d")  # per read: the time it arrived
        self.events = 0  # events read while on

    def start(self) -> None:
        """Open the measuring window (forget what was recorded before)."""
        self.ts, self.ends, self.nows, self.events = array("d"), array("q"), array("d"), 0
        self.on = True

    def latencies(self) -> tuple[list[float], dict[float, float]]:
        """The publish-to-deliver latencies (seconds) of the events read in the window, sorted, and
        the first delivery of each event: ``{publish time: the smallest latency of any stream}``."""
        out: list[float] = []
        first: dict[float, float] = {}
        get = first.get
        start = 0
        ts = self.ts
        for end, now in zip(self.ends, self.nows, strict=True):
            chunk = ts[start:end]
            lats = [now - t for t in chunk]
            out.extend(lats)
            for t, x in zip(chunk, lats, strict=True):
                if x < get(t, 1e9):
                    first[t] = x
            start = end
        out.sort()
        return out, first


class Stream(EventStreamProtocol):
    """One SSE stream read from a raw socket: counts events, checks their ``seq``, records times.

    Events are split on their ``\\r\\n\\r\\n`` ends; within what one read
    completes, the events are counted with ``bytes.count``, the first and last
    ``seq`` are parsed and must be consecutive with the previous read's last
    and span exactly the count (no loss, no duplicate, in order), and the ``t``
    values go to the ``Recorder`` while it is on (turned into latencies after
    the window, so the read path stays cheap).
    """

    def __init__(self, rec: Recorder, server: int = 0) -> None:
        self.rec = rec
        self.server = server  # which server process it reads from
        super().__init__()
        self.first = None  # the first seq read
        self.last = None  # the last seq read
        self.count = 0
        self.lost = 0
        self.dup = 0
        self.gaps = 0

    def events(self, buf: bytes, end: int, now: float) -> None:
        n = buf.count(SEQ, 0, end)
        if n:
            i = buf.find(SEQ, 0, end) + len(SEQ)
            j = buf.rfind(SEQ, 0, end) + len(SEQ)
            first = int(buf[i:i + SEQ_DIGITS])
            last = int(buf[j:j + SEQ_DIGITS])
            prev = self.last
            if prev is None:
                self.first = first
            elif first > prev + 1:
                self.lost += first - prev - 1
            elif first <= prev:
                self.dup += prev - first + 1
            span = last - first + 1
            if n < span:
                self.lost += span - n
            elif n > span:
                self.dup += n - span
            self.last = last
            self.count += n
            rec = self.rec
            if rec.on:
                rec.events += n
                rec.ts.extend(map(float, _T_RE.findall(buf, 0, end)))
                rec.ends.append(len(rec.ts))
                rec.nows.append(now)
        if buf.find(GAP, 0, end) >= 0:
            self.gaps += buf.count(GAP, 0, end)


async def open_streams(port: int, path: str, n: int, rec: Recorder, server: int = 0) -> list[Stream]:
    """Open ``n`` streams of ``path`` on ``port`` (100 connecting at a time); each must answer 200.

    ``server`` tags the streams (the index of the server process, for per-server rates).

    Raises:
        RuntimeError: a stream answered another status.
    """
    return await open_clients(lambda: Stream(rec, server), port, path, n)


async def wait_subscribers(port: int, topic: str, n: int, timeout: float = 30.0) -> None:
    """Wait until the server on ``port`` counts ``n`` live subscribers of ``topic``.

    Raises:
        RuntimeError: not within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    got = -1
    while time.monotonic() < deadline:
        status, body = http_get(port, f"/stats?topic={topic}")
        got = json.loads(body)["subscribers"] if status == 200 else -1
        if got >= n:
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"port {port}: {got} subscribers of {topic!r} after {timeout} s, expected {n}")


async def drain(streams: list[Stream], last_seq: int, timeout: float) -> bool:
    """Wait until every open stream has read ``last_seq`` (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(s.closed or (s.last is not None and s.last >= last_seq) for s in streams):
            return True
        await asyncio.sleep(0.05)
    return False


# ---------------------------------------------------------------- publishers


class ServerPublisher:
    """The publisher task inside each server of ``ports`` (``/publish/start``): the memory rows.

    Every server publishes the same events (same ``seq`` numbers) on the same
    absolute schedule to its own subscribers.
    """

    pid = None

    def __init__(self, ports: list[int], topic: str, size: int) -> None:
        self.ports, self.topic, self.size = ports, topic, size

    def start(self, rate: float, count: int, start_at: float, seq: int) -> None:
        """Start ``count`` events at ``rate``/s from wall time ``start_at``, first ``seq``, in every server.

        Raises:
            RuntimeError: a server refused.
        """
        for port in self.ports:
            status, body = http_get(port, f"/publish/start?topic={self.topic}&rate={rate!r}&count={count}"
                                    f"&start_at={start_at!r}&seq={seq}&size={self.size}")
            if status != 202:
                raise RuntimeError(f"/publish/start: {status} {body}")

    async def result(self, timeout: float) -> dict:
        """The first server's publisher summary once every server's is done (``late_max_ms``: the worst).

        Raises:
            RuntimeError: one failed or did not finish within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        out: list[dict] = []
        for port in self.ports:
            while True:
                status, body = http_get(port, "/publish/result")
                if status == 200:
                    out.append(json.loads(body))
                    break
                if status != 409:
                    raise RuntimeError(f"/publish/result: {status} {body}")
                if time.monotonic() > deadline:
                    raise RuntimeError("the in-server publisher did not finish")
                await asyncio.sleep(0.1)
        summary = dict(out[0])
        summary["late_max_ms"] = max(o["late_max_ms"] for o in out)
        summary["errors"] = sum(o["errors"] for o in out)
        return summary

    def close(self) -> None:
        """Nothing to stop: the server's end ends it."""


class ProcessPublisher:
    """A publisher process (this script with ``--publisher``): ``sync`` (``RedisPublisher``) or
    ``async`` (``Broadcast(url).publish``, pipelined)."""

    def __init__(self, url: str, key_prefix: str, history: int, topic: str, size: int, mode: str,
                 core: int | None) -> None:
        self.args = ["--url", url, "--key-prefix", key_prefix, "--history", str(history), "--topic", topic,
                     "--size", str(size), "--mode", mode]
        self.core = core
        self.proc: subprocess.Popen | None = None
        self.pid: int | None = None

    def start(self, rate: float, count: int, start_at: float, seq: int) -> None:
        """Start the process: ``count`` events at ``rate``/s from wall time ``start_at``, first ``seq``."""
        cmd = _taskset(self.core) + [sys.executable, os.path.abspath(__file__), "--publisher", *self.args,
                                     "--rate", repr(rate), "--count", str(count), "--start-at", repr(start_at),
                                     "--seq", str(seq)]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, start_new_session=True)
        self.pid = self.proc.pid

    async def result(self, timeout: float) -> dict:
        """The process's JSON summary once it has exited.

        Raises:
            RuntimeError: it failed or did not finish within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                self.close()
                raise RuntimeError("the publisher process did not finish")
            await asyncio.sleep(0.05)
        out = self.proc.stdout.read().decode()
        self.proc.stdout.close()
        if self.proc.returncode != 0:
            raise RuntimeError(f"the publisher process exited with status {self.proc.returncode}")
        return json.loads(out.strip().splitlines()[-1])

    def close(self) -> None:
        """Stop the process if it still runs."""
        if self.proc is not None:
            stop(self.proc)


def publisher_main(argv: list[str]) -> int:
    """The publisher process (``--publisher``): publish on an absolute schedule, print a JSON summary."""
    ap = argparse.ArgumentParser(prog="redis_fanout.py --publisher")
    ap.add_argument("--publisher", action="store_true")
    ap.add_argument("--url", required=True)
    ap.add_argument("--key-prefix", required=True)
    ap.add_argument("--history", type=int, required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--mode", choices=["sync", "async"], default="sync")
    ap.add_argument("--rate", type=float, required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--start-at", type=float, required=True)
    ap.add_argument("--seq", type=int, default=1)
    a = ap.parse_args(argv)
    pad = pad_for(a.size)
    if a.mode == "sync":
        summary = _publish_sync(a, pad)
    else:
        import uvloop

        summary = uvloop.run(_publish_async(a, pad))
    t = os.times()
    summary["cpu_seconds"] = t.user + t.system
    print(json.dumps(summary), flush=True)
    return 0


def _publish_sync(a, pad: str) -> dict:
    from sse_fast.broadcast import PublishError, RedisPublisher

    confirmed = errors = 0
    last_confirm = started = ended = None
    late = 0.0
    with RedisPublisher(a.url, key_prefix=a.key_prefix, history=a.history, timeout=5.0) as pub:
        pub._redis.ping()  # connect before the schedule starts
        for k in range(a.count):
            due = a.start_at + k / a.rate
            wait = due - time.time()
            if wait > 0:
                time.sleep(wait)
            now = time.time()
            late = max(late, now - due)
            if started is None:
                started = now
            try:
                pub.publish({"data": event_data(a.seq + k, now, pad)}, a.topic)
                confirmed += 1
                last_confirm = ended = time.time()
            except PublishError:
                errors += 1
    timing = {"late_max_ms": late * 1e3, "started_at": started, "ended_at": ended}
    return publisher_summary(a.count, confirmed, errors, a.seq, a.seq + a.count - 1, timing, last_confirm)


async def _publish_async(a, pad: str) -> dict:
    from sse_fast.broadcast import Broadcast

    b = Broadcast(url=a.url, key_prefix=a.key_prefix, history=a.history, publish_timeout=10.0)
    await b.apublish("warm-up", a.topic + ":warmup")  # connect before the schedule starts
    counts = {"confirmed": 0, "errors": 0, "last": None}
    pending: list[asyncio.Future] = []

    def done(fut: asyncio.Future) -> None:
        if fut.cancelled() or fut.exception() is not None:
            counts["errors"] += 1
        else:
            counts["confirmed"] += 1
            counts["last"] = time.time()

    def one(k: int) -> None:
        fut = b.publish({"data": event_data(a.seq + k, time.time(), pad)}, a.topic)
        fut.add_done_callback(done)
        pending.append(fut)

    timing = await paced(a.rate, a.count, a.start_at, one)
    await asyncio.wait(pending, timeout=60)
    await b.aclose()
    return publisher_summary(a.count, counts["confirmed"], counts["errors"], a.seq, a.seq + a.count - 1,
                             timing, counts["last"])


# ---------------------------------------------------------------- one measured step


def core_times() -> dict[str, tuple[int, int]]:
    """``{"cpuN": (busy, total)}`` clock ticks of every core from ``/proc/stat`` (empty where it is missing)."""
    out = {}
    try:
        with open("/proc/stat") as fh:
            for line in fh:
                if line.startswith("cpu") and line[3].isdigit():
                    name, *vals = line.split()
                    v = [int(x) for x in vals]
                    idle = v[3] + (v[4] if len(v) > 4 else 0)  # idle + iowait
                    total = sum(v[:8])  # guest time is already in user
                    out[name] = (total - idle, total)
    except OSError:
        pass
    return out


def _busy(k0: dict, k1: dict) -> float:
    """Busy time of all cores between two ``core_times()``, in % of one core."""
    return sum(100 * (k1[n][0] - k0[n][0]) / max(1, k1[n][1] - k0[n][1]) for n in k0 if n in k1)


async def wait_quiet(limit: float, max_wait: float, log=print) -> float:
    """Wait until the machine is quiet: all cores together busy below ``limit`` % of one core over
    one second (this benchmark's processes are idle then), for at most ``max_wait`` seconds.

    Other jobs on a shared machine would otherwise land in the measuring window.

    Returns:
        the busy % of the last second sampled.
    """
    deadline = time.monotonic() + max_wait
    said = False
    while True:
        k0 = core_times()
        await asyncio.sleep(1.0)
        busy = _busy(k0, core_times())
        if not k0 or busy < limit or time.monotonic() > deadline:
            if said:
                log(f"    machine quiet enough ({busy:.0f}% busy)" if busy < limit else
                    f"    still {busy:.0f}% busy after {max_wait:g} s: measuring anyway")
            return busy
        if not said:
            log(f"    machine busy ({busy:.0f}% of a core outside this benchmark): waiting for it to be quiet")
            said = True
        await asyncio.sleep(2.0)


def _pct(sorted_vals: list[float], q: float) -> float:
    if not sorted_vals:
        return float("nan")
    return sorted_vals[min(len(sorted_vals) - 1, int(q * len(sorted_vals)))]


@dataclass
class Step:
    """A measured run of the publisher at one rate."""

    rate: float
    seconds: float
    publisher: dict
    wall: float
    events: int  # events read in the window, every stream
    streams: int
    lat: list[float]
    cpu: dict[str, float]  # process name -> % of one core over the window
    client_cpu: float
    drained: bool
    lost: int = 0
    dup: int = 0
    gaps: int = 0
    cut: int = 0
    notes: list[str] = field(default_factory=list)
    per_server: list[float] = field(default_factory=list)  # events/s read per stream, by server process
    lat_by_server: list[dict] = field(default_factory=list)  # p50/p99 by server process (two-server runs)
    first: list[float] = field(default_factory=list)  # per event: its earliest delivery to any stream, sorted
    cores: dict[str, float] = field(default_factory=dict)  # busy % of each core over the window (/proc/stat)
    other_cpu: float | None = None  # cores busy minus this benchmark's processes, % of one core
    quiet_before: float | None = None  # machine busy % in the second before the publisher started

    def as_dict(self) -> dict:
        """The JSON of this step (latencies as percentiles, in ms)."""
        lat = self.lat
        return {"rate": self.rate, "seconds": self.wall, "streams": self.streams,
                "published_rate": self.publisher.get("rate"), "publisher": self.publisher,
                "events": self.events, "delivered_per_stream": self.events / self.streams / self.wall,
                "p50_ms": _pct(lat, 0.50) * 1e3, "p90_ms": _pct(lat, 0.90) * 1e3, "p99_ms": _pct(lat, 0.99) * 1e3,
                "max_ms": (lat[-1] * 1e3) if lat else float("nan"), "latencies": len(lat),
                "first_p50_ms": _pct(self.first, 0.5) * 1e3, "first_p99_ms": _pct(self.first, 0.99) * 1e3,
                "cpu": self.cpu, "client_cpu": self.client_cpu, "drained": self.drained, "lost": self.lost,
                "dup": self.dup, "gaps": self.gaps, "cut": self.cut, "notes": self.notes,
                "delivered_per_stream_by_server": self.per_server, "latency_by_server": self.lat_by_server,
                "cores_busy": self.cores, "other_cpu": self.other_cpu, "busy_before": self.quiet_before}


async def measure_step(streams: list[Stream], recs: list[Recorder], pids: dict[str, int], publisher, rate: float,
                       warm: float, seconds: float, seq: int, log=print) -> Step:
    """Run ``publisher`` at ``rate`` for ``warm + seconds`` (+ a short tail) and measure the window.

    ``pids`` names the processes whose CPU is reported (the publisher's is
    added when it is a process). After the publisher ends, waits until every
    stream has read the last event (the drain), then checks every stream's count.
    """
    tail = 0.5
    count = max(1, int(rate * (warm + seconds + tail)))
    quiet = await wait_quiet(QUIET_LIMIT, QUIET_MAX_WAIT, log)
    start_at = time.time() + (1.5 if isinstance(publisher, ProcessPublisher) else 0.3)
    before = {s: (s.lost, s.dup, s.gaps, s.closed) for s in streams}
    publisher.start(rate, count, start_at, seq)
    procs = dict(pids)
    if publisher.pid is not None:
        procs["publisher"] = publisher.pid
    me = psutil.Process()
    await asyncio.sleep(max(0.0, start_at + warm - time.time()))
    c0 = {name: cpu_seconds(pid) for name, pid in procs.items()}
    m0 = me.cpu_times()
    k0 = core_times()
    for rec in recs:
        rec.start()
    t0 = time.perf_counter()
    n0 = [s.count for s in streams]
    await asyncio.sleep(seconds)
    for rec in recs:
        rec.on = False
    t1 = time.perf_counter()
    n1 = [s.count for s in streams]
    c1 = {name: cpu_seconds(pid) for name, pid in procs.items()}
    m1 = me.cpu_times()
    k1 = core_times()
    wall = t1 - t0
    summary = await publisher.result(timeout=warm + seconds + 120)
    drained = await drain(streams, summary["last_seq"], timeout=30.0)
    got = [rec.latencies() for rec in recs]
    by_server = [lat for lat, _ in got]
    firsts: dict[float, float] = {}
    for _, first in got:
        for t, x in first.items():
            if x < firsts.get(t, 1e9):
                firsts[t] = x
    del got
    lat = sorted(x for one in by_server for x in one) if len(recs) > 1 else by_server[0]
    step = Step(rate=rate, seconds=seconds, publisher=summary, wall=wall, events=sum(r.events for r in recs),
                streams=len(streams),
                lat=lat, cpu={name: 100 * (c1[name] - c0[name]) / wall for name in procs},
                client_cpu=100 * ((m1.user - m0.user) + (m1.system - m0.system)) / wall, drained=drained)
    step.cores = {name: 100 * (k1[name][0] - b0) / max(1, k1[name][1] - t0_)
                  for name, (b0, t0_) in k0.items() if name in k1}
    # busy time no process of this benchmark was charged with: other jobs, and kernel work such as softirqs
    step.other_cpu = sum(step.cores.values()) - sum(step.cpu.values()) - step.client_cpu if step.cores else None
    step.quiet_before = quiet
    for i in sorted({s.server for s in streams}):
        mine = [b - a for s, a, b in zip(streams, n0, n1, strict=True) if s.server == i]
        step.per_server.append(sum(mine) / len(mine) / wall)
    step.first = sorted(firsts.values())
    if len(by_server) > 1:
        step.lat_by_server = [{"p50_ms": _pct(x, 0.5) * 1e3, "p99_ms": _pct(x, 0.99) * 1e3} for x in by_server]
    del by_server
    for s in streams:
        lost0, dup0, gaps0, closed0 = before[s]
        step.lost += s.lost - lost0
        step.dup += s.dup - dup0
        step.gaps += s.gaps - gaps0
        step.cut += int(s.closed and not closed0)
        if not s.closed and s.last is not None and s.last < summary["last_seq"]:
            step.lost += summary["last_seq"] - s.last  # never arrived (not drained)
    if summary["errors"]:
        step.notes.append(f"{summary['errors']} publishes failed")
    if not drained:
        step.notes.append("not drained within 30 s")
    d = step.as_dict()
    cpu = ", ".join(f"{k} {v:.0f}%" for k, v in step.cpu.items()) + f", client {step.client_cpu:.0f}%"
    cpu += "; cores busy " + " / ".join(f"{v:.0f}%" for v in step.cores.values())
    if step.other_cpu is not None:
        cpu += f" (other {step.other_cpu:.0f}%)"
    per = " / ".join(f"{x:.0f}" for x in step.per_server)
    by = "".join(f" (server {'AB'[i]}: p50 {x['p50_ms']:.2f}, p99 {x['p99_ms']:.2f})"
                 for i, x in enumerate(step.lat_by_server))
    log(f"    {rate:>8g} ev/s: published {d['published_rate']:.0f}/s, delivered {per}/s "
        f"per stream, p50 {d['p50_ms']:.2f} ms, p99 {d['p99_ms']:.2f} ms, max {d['max_ms']:.1f} ms{by}, "
        f"first delivery p50 {d['first_p50_ms']:.2f} ms; CPU {cpu}; "
        f"lost {step.lost}, dup {step.dup}, gaps {step.gaps}, cut {step.cut}"
        + (f"; {'; '.join(step.notes)}" if step.notes else ""), flush=True)
    return step


# ---------------------------------------------------------------- latency rows and sweep


def _env(url: str, key_prefix: str, history: int) -> dict[str, str]:
    return {"BENCH_BROADCAST_URL": url, "BENCH_KEY_PREFIX": key_prefix, "BENCH_HISTORY": str(history)}


async def latency_row(row: str, redis: Redis, lay: Layout, subscribers: int, rate: float, seconds: float,
                      size: int, history: int, log=print) -> dict:
    """One latency row (``memory``, ``redis1`` or ``redis2``) on fresh servers; returns its JSON."""
    prefix = f"bench:{uuid.uuid4().hex[:8]}:"
    topic = "fanout"
    url = "memory://" if row.startswith("memory") else redis.url
    cores = [lay.one_server] if row in ("memory", "redis1") else list(lay.two_servers)
    recs = [Recorder() for _ in cores]
    with contextlib.ExitStack() as stack:
        servers = [stack.enter_context(bench_server(core, _env(url, prefix, history))) for core in cores]
        streams: list[Stream] = []
        for i, srv in enumerate(servers):
            streams += await open_streams(srv.port, f"/events?topic={topic}&ping=15", subscribers, recs[i], i)
        for srv in servers:
            await wait_subscribers(srv.port, topic, subscribers)
        if row.startswith("memory"):
            publisher = ServerPublisher([srv.port for srv in servers], topic, size)
        else:
            publisher = ProcessPublisher(redis.url, prefix, history, topic, size, "sync", lay.publisher)
            stack.callback(publisher.close)
        pids = {f"server {'AB'[i]}" if len(servers) > 1 else "server": srv.pid for i, srv in enumerate(servers)}
        if not row.startswith("memory"):
            pids["redis"] = redis.pid
        log(f"  {LABELS[row]}: {len(servers)} x {subscribers} streams, {rate:g} events/s, {seconds:g} s window")
        step = await measure_step(streams, recs, pids, publisher, rate, warm=2.0, seconds=seconds, seq=1, log=log)
        first_bad = sum(1 for s in streams if s.first != 1)
        if first_bad:
            step.notes.append(f"{first_bad} streams missed the first event")
        for s in streams:
            s.transport.close()
        await asyncio.sleep(0.3)
    out = step.as_dict()
    out.update(row=row, label=LABELS[row], processes=len(cores), subscribers=subscribers,
               expected_events=len(streams) * rate * step.wall, _lat=step.lat, _first=step.first)
    return out


def pool(runs: list[dict]) -> dict:
    """One row from repeated runs of it: percentiles of every run's latencies together, CPU averaged,
    counts summed; ``runs`` keeps each run's p50/p99/first-delivery p50 (the spread)."""
    lat = sorted(x for r in runs for x in r["_lat"])
    first = sorted(x for r in runs for x in r["_first"])
    out = {k: v for k, v in runs[0].items() if not k.startswith("_")}
    n = len(runs)
    out.update(p50_ms=_pct(lat, 0.5) * 1e3, p90_ms=_pct(lat, 0.9) * 1e3, p99_ms=_pct(lat, 0.99) * 1e3,
               max_ms=lat[-1] * 1e3 if lat else float("nan"), latencies=len(lat),
               first_p50_ms=_pct(first, 0.5) * 1e3, first_p99_ms=_pct(first, 0.99) * 1e3,
               seconds=sum(r["seconds"] for r in runs), events=sum(r["events"] for r in runs),
               expected_events=sum(r["expected_events"] for r in runs),
               cpu={k: sum(r["cpu"][k] for r in runs) / n for k in runs[0]["cpu"]},
               client_cpu=sum(r["client_cpu"] for r in runs) / n,
               other_cpu=None if any(r["other_cpu"] is None for r in runs) else sum(r["other_cpu"] for r in runs) / n,
               drained=all(r["drained"] for r in runs), notes=[x for r in runs for x in r["notes"]],
               runs=[{k: r[k] for k in ("p50_ms", "p99_ms", "max_ms", "first_p50_ms", "latency_by_server")}
                     for r in runs])
    for k in ("lost", "dup", "gaps", "cut"):
        out[k] = sum(r[k] for r in runs)
    return out


async def sweep(redis: Redis, lay: Layout, subscribers: int, rates: list[float], seconds: float, size: int,
                history: int, log=print) -> dict:
    """The throughput sweep (see the module docstring); returns its JSON."""
    prefix = f"bench:{uuid.uuid4().hex[:8]}:"
    topic = "sweep"
    recs = [Recorder(), Recorder()]
    steps: list[dict] = []
    best = None
    stopped = "every rate passed"
    with contextlib.ExitStack() as stack:
        servers = [stack.enter_context(bench_server(core, _env(redis.url, prefix, history)))
                   for core in lay.two_servers]
        streams: list[Stream] = []
        for i, srv in enumerate(servers):
            streams += await open_streams(srv.port, f"/events?topic={topic}&ping=15", subscribers, recs[i], i)
        for srv in servers:
            await wait_subscribers(srv.port, topic, subscribers)
        pids = {"server A": servers[0].pid, "server B": servers[1].pid, "redis": redis.pid}
        log(f"  sweep: 2 x {subscribers} streams on one topic, {seconds:g} s per rate")
        seq = 1
        for rate in rates:
            publisher = ProcessPublisher(redis.url, prefix, history, topic, size, "async", lay.publisher)
            try:
                step = await measure_step(streams, recs, pids, publisher, rate, warm=1.0, seconds=seconds, seq=seq,
                                          log=log)
            finally:
                publisher.close()
            seq = step.publisher["last_seq"] + 1
            d = step.as_dict()
            d["lat_samples"] = len(step.lat)
            del step
            why = []
            if not d["p99_ms"] < SWEEP_P99_LIMIT_MS:
                why.append(f"p99 {d['p99_ms']:.0f} ms > {SWEEP_P99_LIMIT_MS:g} ms")
            if d["published_rate"] < 0.9 * rate:
                why.append(f"the publisher reached {d['published_rate']:,.0f}/s of {rate:,.0f}/s")
            if d["delivered_per_stream"] < 0.9 * rate:
                why.append(f"the streams got {d['delivered_per_stream']:,.0f}/s of {rate:,.0f}/s")
            if d["lost"] or d["dup"] or d["gaps"] or d["cut"] or not d["drained"]:
                why.append("events lost, duplicated or cut")
            d["ok"] = not why
            steps.append(d)
            if why:
                stopped = f"{rate:,.0f} ev/s: " + "; ".join(why)
                break
            best = rate
        for s in streams:
            s.transport.close()
        await asyncio.sleep(0.3)
    return {"subscribers": subscribers, "seconds": seconds, "steps": steps, "best_rate": best,
            "stopped": stopped}


def run(subscribers: int = 1000, seconds: float = 20.0, rate: float = 10.0, size: int = 100, rows=ROWS,
        sweep_subscribers=(100, 10), sweep_rates=SWEEP_RATES, sweep_seconds: float = 5.0,
        history: int = 1000, layout_name: str = "balanced", repeat: int = 1, log=print) -> dict:
    """Start redis-server, measure the latency rows and the sweep; returns a JSON-able dict (see ``table``)."""
    lay = layout(layout_name)
    need = 2 * max([subscribers, *sweep_subscribers]) + 500
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, need), hard))
    if lay.client is not None:
        os.sched_setaffinity(0, {lay.client})
    import uvloop

    res = {"subscribers": subscribers, "seconds": seconds, "repeat": repeat, "rate": rate, "size": size,
           "history": history, "layout": lay.describe(), "rows": [], "sweeps": [], "machine": machine(),
           "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "command": " ".join([os.path.relpath(sys.argv[0], ROOT)]
                                                                                + sys.argv[1:])}
    import redis as redis_py

    res["machine"]["redis-py"] = redis_py.__version__
    res["loadavg_before"] = os.getloadavg()
    t_start = time.monotonic()
    with redis_server(lay.redis) as rs:
        res["machine"]["redis-server"] = rs.version
        log(f"redis-server {rs.version} on port {rs.port}; {lay.describe()}")
        runs: dict[str, list[dict]] = {row: [] for row in rows}
        for i in range(repeat):  # rounds: each row once per round, so drift hits every row alike
            if repeat > 1 and rows:
                log(f" round {i + 1} of {repeat}")
            for row in rows:
                runs[row].append(uvloop.run(latency_row(row, rs, lay, subscribers, rate, seconds, size, history,
                                                        log)))
        res["rows"] = [pool(runs[row]) for row in rows]
        del runs
        for n in sweep_subscribers:
            res["sweeps"].append(uvloop.run(sweep(rs, lay, n, sweep_rates, sweep_seconds, size, history, log)))
    res["loadavg_after"] = os.getloadavg()
    res["run_seconds"] = time.monotonic() - t_start
    return res


# ---------------------------------------------------------------- report


def _cpu_cell(cpu: dict, prefix: str) -> str:
    vals = [v for k, v in cpu.items() if k.startswith(prefix)]
    return " / ".join(f"{v:.1f}" for v in vals) if vals else ""


def _num(x: float | None) -> str:
    return "" if x is None else f"{x:.0f}"


def _check_cell(r: dict) -> str:
    bad = [f"{r[k]:,} {k}" for k in ("lost", "dup", "gaps", "cut") if r.get(k)]
    if not r.get("drained", True):
        bad.append("not drained")
    return ", ".join(bad) if bad else "none"


def table(res: dict) -> str:
    """Markdown: the latency rows, the redis - memory differences and ratios, the sweep."""
    out = []
    rows = res["rows"]
    if rows:
        rounds = res.get("repeat", 1)
        out += [f"{res['subscribers']:,} subscribers per server process, {res['rate']:g} events/s of "
                f"~{res['size']} bytes; {rounds} round{'s' if rounds > 1 else ''} of a {res['seconds']:g} s window "
                f"per row (after a 2 s warm-up, fresh servers each time), latencies of every round together. "
                f"Latency = client receive time - the publisher's `time.time()` in the data; first delivery = per "
                f"event, its earliest arrival on any stream (the path without the fan-out).\n",
                "| row | streams | p50 ms | p90 ms | p99 ms | max ms | p50 per round ms | first delivery p50 ms | "
                "server CPU % | redis CPU % | publisher CPU % | client CPU % | other CPU % | events delivered | "
                "loss / dup / gap / cut |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r in rows:
            pub = r["cpu"].get("publisher")
            per = " / ".join(f"{x['p50_ms']:.1f}" for x in r.get("runs", [r]))
            out.append(f"| {r['label']} | {r['streams']:,} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | "
                       f"{r['p99_ms']:.2f} | {r['max_ms']:.1f} | {per} | {r['first_p50_ms']:.2f} | "
                       f"{_cpu_cell(r['cpu'], 'server')} | {_cpu_cell(r['cpu'], 'redis') or '-'} | "
                       f"{'-' if pub is None else f'{pub:.1f}'} | {r['client_cpu']:.0f} | {_num(r.get('other_cpu'))} | "
                       f"{100 * r['events'] / r['expected_events']:.0f}% | {_check_cell(r)} |")
        by = {r["row"]: r for r in rows}
        pairs = [(x, y) for x, y in (("redis2", "memory"), ("redis1", "memory"), ("redis2", "memory2"))
                 if x in by and y in by]
        if pairs:
            out += ["", "| redis row vs memory row | p50 difference ms | p99 difference ms | p50 ratio | p99 ratio | "
                    "first delivery p50 difference ms | Redis adds <= 2 ms at p50 |",
                    "|---|---:|---:|---:|---:|---:|---|"]
            for x, y in pairs:
                r, m = by[x], by[y]
                d50 = r["p50_ms"] - m["p50_ms"]
                out.append(f"| {r['label']} vs {m['label']} | {d50:+.2f} | {r['p99_ms'] - m['p99_ms']:+.2f} | "
                           f"{r['p50_ms'] / m['p50_ms']:.2f} | {r['p99_ms'] / m['p99_ms']:.2f} | "
                           f"{r['first_p50_ms'] - m['first_p50_ms']:+.2f} | "
                           f"{'yes' if d50 <= 2.0 else '**no**'} |")
    for sw in res.get("sweeps", []):
        out += ["", f"Throughput: one topic, 2 server processes x {sw['subscribers']:,} streams, a publisher process "
                f"(`Broadcast(url).publish()`: pipelined XADDs); {sw['seconds']:g} s window per rate after a 1 s "
                f"warm-up, the same streams throughout.\n",
                "| target ev/s | published ev/s | delivered ev/s per stream (A / B) | p50 ms | p99 ms | max ms | "
                "first delivery p50 ms | server CPU % (A / B) | redis CPU % | publisher CPU % | client CPU % | "
                "cores busy % (0 / 1) | other CPU % | loss / dup / gap / cut |",
                "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for s in sw["steps"]:
            per = " / ".join(f"{x:,.0f}" for x in s["delivered_per_stream_by_server"])
            out.append(f"| {s['rate']:,.0f} | {s['published_rate']:,.0f} | {per} | {s['p50_ms']:.2f} | "
                       f"{s['p99_ms']:.2f} | {s['max_ms']:.1f} | {s['first_p50_ms']:.2f} | "
                       f"{_cpu_cell(s['cpu'], 'server')} | {s['cpu'].get('redis', 0):.1f} | "
                       f"{s['cpu'].get('publisher', 0):.1f} | {s['client_cpu']:.0f} | "
                       f"{' / '.join(f'{v:.0f}' for v in s['cores_busy'].values())} | {_num(s.get('other_cpu'))} | "
                       f"{_check_cell(s)} |")
        best = sw["best_rate"]
        out += ["", f"Highest rate with p99 < {SWEEP_P99_LIMIT_MS:g} ms (no loss; publisher and streams within "
                f"10% of the target): **{'none' if best is None else f'{best:,.0f} events/s'}**; "
                + ("every rate passed." if sw["steps"] and sw["steps"][-1]["ok"]
                   else f"the sweep stopped at {sw['stopped']}.")]
    if res.get("layout"):
        out += ["", f"Placement: {res['layout']}."]
    return "\n".join(out)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _interrupt_on_signals() -> None:
    """SIGTERM (and SIGINT, which a shell ignores in background jobs) raise ``KeyboardInterrupt``, so the
    context managers stop the servers, the publisher and redis-server however the run is ended."""
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)


def main(argv=None) -> int:
    """The command line (see the module docstring)."""
    argv = sys.argv[1:] if argv is None else argv
    if "--publisher" in argv:
        return publisher_main(argv)
    ap = argparse.ArgumentParser(description="broadcast over Redis: latency vs memory, throughput of one topic")
    ap.add_argument("--quick", action="store_true", help="200 per process, 5 s window, short sweep")
    ap.add_argument("--subscribers", type=int, default=None, help="streams per server process (1000)")
    ap.add_argument("--seconds", type=float, default=None, help="latency window (20 s)")
    ap.add_argument("--repeat", type=int, default=None, help="rounds of the latency rows, pooled (3; quick: 1)")
    ap.add_argument("--rate", type=float, default=10.0, help="events/s of the latency rows")
    ap.add_argument("--size", type=int, default=100, help="bytes of event data")
    ap.add_argument("--history", type=int, default=1000, help="Broadcast(history=) and the stream's MAXLEN")
    ap.add_argument("--rows", default=",".join(ROWS), help="latency rows: memory,memory2,redis1,redis2")
    ap.add_argument("--layout", default="balanced", choices=LAYOUTS, help="CPU placement (see the docstring)")
    ap.add_argument("--no-sweep", action="store_true")
    ap.add_argument("--sweep-only", action="store_true", help="no latency rows")
    ap.add_argument("--sweep-subscribers", default=None,
                    help="streams per server process, one sweep per comma-separated value (100,10; quick: 50)")
    ap.add_argument("--sweep-rates", default=None, help="comma-separated events/s")
    ap.add_argument("--sweep-seconds", type=float, default=None, help="window per rate (5 s)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    _interrupt_on_signals()
    rows = [] if args.sweep_only else [r for r in args.rows.split(",") if r]
    for r in rows:
        if r not in ROWS:
            ap.error(f"unknown row {r!r}")
    sweeps = [] if args.no_sweep else [int(x) for x in (args.sweep_subscribers or ("50" if args.quick else "100,10"))
                                       .split(",") if x]
    rates = [float(x) for x in args.sweep_rates.split(",")] if args.sweep_rates else \
        (QUICK_SWEEP_RATES if args.quick else SWEEP_RATES)
    res = run(subscribers=args.subscribers or (200 if args.quick else 1000),
              seconds=args.seconds or (5.0 if args.quick else 20.0), rate=args.rate, size=args.size, rows=rows,
              sweep_subscribers=sweeps, sweep_rates=rates,
              sweep_seconds=args.sweep_seconds or (2.0 if args.quick else 5.0),
              history=args.history, layout_name=args.layout, repeat=args.repeat or (1 if args.quick else 3))
    return report(res, table, args.json)


if __name__ == "__main__":
    sys.exit(main())
