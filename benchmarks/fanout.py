"""Fan-out: N streams each fed one ~100-byte event every 100 ms by one broadcaster.

For each implementation a fresh server (uvicorn, uvloop + httptools, pinned to
core 0) serves ``/fanout?impl=I&interval=0.1&size=100``: one broadcaster task
puts each event on every client's ``asyncio.Queue``; each client's generator
yields what its queue gets. The event data carries the server's ``time.time()``
at broadcast (``"t"``). This process (pinned to core 1) holds the N streams with
raw asyncio sockets and, for every event received, takes ``time.time() - t`` as
the delivery latency. Server CPU comes from psutil over the measuring window.

Usage::

    python benchmarks/fanout.py                    # 1,000 streams, 20 s window
    python benchmarks/fanout.py --quick            # 300 streams, 6 s window
    python benchmarks/fanout.py --streams 1000 --seconds 20 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import psutil  # noqa: E402
from _harness import cpu_seconds, machine, pin_self, probe_status, report, request_bytes, server  # noqa: E402

IMPLS = ["sse_starlette", "sse_fast"]
T_RE = re.compile(rb'"t":([0-9]+\.[0-9]+)')


class FanoutClient(asyncio.Protocol):
    """One stream: records a latency per event while ``recording`` is true."""

    recording = False
    latencies: list[float] = []
    events = 0

    def __init__(self) -> None:
        self.head = asyncio.get_running_loop().create_future()
        self.buf = b""
        self.status = 0
        self.transport = None

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
        if FanoutClient.recording:
            ts = T_RE.findall(buf, 0, end)
            FanoutClient.events += len(ts)
            lat = FanoutClient.latencies
            for t in ts:
                lat.append(now - float(t))

    def connection_lost(self, exc) -> None:
        if not self.head.done():
            self.head.set_exception(ConnectionError("closed before the response head"))


def _pct(sorted_vals: list[float], q: float) -> float:
    if not sorted_vals:
        return float("nan")
    return sorted_vals[min(len(sorted_vals) - 1, int(q * len(sorted_vals)))]


async def measure_impl(impl: str, streams: int, seconds: float, interval: float, size: int, log=print,
                       on_start=None) -> dict:
    """Hold ``streams`` fan-out streams on a fresh server; measure ``seconds`` of steady state.

    ``on_start(server_pid)``, when given, is called as the measuring window opens (profilers).
    """
    loop = asyncio.get_running_loop()
    with server() as srv:
        p = psutil.Process(srv.pid)
        me = psutil.Process()
        path = f"/fanout?impl={impl}&interval={interval:g}&size={size}"
        status, text = probe_status(srv.port, path)
        if status != 200:
            raise RuntimeError(f"status {status}: {text.strip()[:200]}")
        req = request_bytes(path, close=False)
        sem = asyncio.Semaphore(100)
        clients: list[FanoutClient] = []

        async def one() -> None:
            async with sem:
                _, proto = await loop.create_connection(FanoutClient, "127.0.0.1", srv.port)
                proto.transport.write(req)
                await asyncio.wait_for(proto.head, 30)
                if proto.status != 200:
                    raise RuntimeError(f"stream answered status {proto.status}")
                clients.append(proto)

        await asyncio.gather(*(one() for _ in range(streams)))
        await asyncio.sleep(2.0)  # settle: every stream has had events
        FanoutClient.latencies = []
        FanoutClient.events = 0
        FanoutClient.recording = True
        if on_start is not None:
            on_start(srv.pid)
        c0 = cpu_seconds(p.pid)
        m0 = me.cpu_times()
        t0 = time.perf_counter()
        await asyncio.sleep(seconds)
        c1 = cpu_seconds(p.pid)
        m1 = me.cpu_times()
        t1 = time.perf_counter()
        FanoutClient.recording = False
        for c in clients:
            c.transport.close()
        await asyncio.sleep(0.3)
    wall = t1 - t0
    lat = sorted(FanoutClient.latencies)
    expected = streams * wall / interval
    res = {
        "impl": impl,
        "streams": streams,
        "seconds": wall,
        "events": FanoutClient.events,
        "events_expected": expected,
        "server_cpu_percent": 100 * (c1 - c0) / wall,
        "client_cpu_percent": 100 * ((m1.user - m0.user) + (m1.system - m0.system)) / wall,
        "p50_ms": _pct(lat, 0.50) * 1e3,
        "p90_ms": _pct(lat, 0.90) * 1e3,
        "p99_ms": _pct(lat, 0.99) * 1e3,
        "max_ms": (lat[-1] * 1e3) if lat else float("nan"),
    }
    log(f"  {impl:14s} {streams} streams: server CPU {res['server_cpu_percent']:.1f}%, "
        f"latency p50 {res['p50_ms']:.1f} ms p99 {res['p99_ms']:.1f} ms, "
        f"{res['events']:,} events ({100 * res['events'] / expected:.0f}% of expected), "
        f"client CPU {res['client_cpu_percent']:.0f}%")
    return res


def run(streams: int = 1000, seconds: float = 20.0, interval: float = 0.1, size: int = 100, impls=IMPLS,
        log=print) -> dict:
    """Measure every implementation; returns a JSON-able dict (see ``table``)."""
    pin_self()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < streams + 200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, streams + 200), hard))
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    res = {"streams": streams, "seconds": seconds, "interval": interval, "size": size, "results": [],
           "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    for impl in impls:
        try:
            res["results"].append(runner(measure_impl(impl, streams, seconds, interval, size, log)))
        except RuntimeError as exc:
            log(f"  {impl}: unavailable ({exc})")
    return res


def table(res: dict) -> str:
    """Markdown table with sse_fast / sse-starlette ratios."""
    rows = [f"{res['streams']:,} streams x {1 / res['interval']:g} events/s, ~{res['size']} bytes each; "
            f"{res['seconds']:g} s window.\n",
            "| server | server CPU % of a core | latency p50 ms | p90 ms | p99 ms | max ms | events delivered |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    by = {r["impl"]: r for r in res["results"]}
    for impl in IMPLS:
        r = by.get(impl)
        if r:
            rows.append(f"| {impl} | {r['server_cpu_percent']:.1f} | {r['p50_ms']:.1f} | {r['p90_ms']:.1f} | "
                        f"{r['p99_ms']:.1f} | {r['max_ms']:.1f} | {100 * r['events'] / r['events_expected']:.0f}% |")
    a, b = by.get("sse_fast"), by.get("sse_starlette")
    if a and b:
        rows.append(f"| sse_fast / sse-starlette | {a['server_cpu_percent'] / b['server_cpu_percent']:.2f} | "
                    f"{a['p50_ms'] / b['p50_ms']:.2f} | {a['p90_ms'] / b['p90_ms']:.2f} | "
                    f"{a['p99_ms'] / b['p99_ms']:.2f} | | |")
    return "\n".join(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="fan-out: many streams fed by one broadcaster")
    ap.add_argument("--quick", action="store_true", help="300 streams, 6 s window")
    ap.add_argument("--streams", type=int, default=None)
    ap.add_argument("--seconds", type=float, default=None)
    ap.add_argument("--interval", type=float, default=0.1)
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--impls", default=",".join(IMPLS))
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    streams = args.streams or (300 if args.quick else 1000)
    seconds = args.seconds or (6.0 if args.quick else 20.0)
    res = run(streams, seconds, args.interval, args.size, args.impls.split(","))
    return report(res, table, args.json)


if __name__ == "__main__":
    sys.exit(main())
