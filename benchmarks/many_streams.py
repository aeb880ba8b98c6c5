"""Many idle streams: server memory per open stream, CPU to open each, CPU while idling.

For each implementation a fresh server (uvicorn, uvloop + httptools, pinned to
core 0) serves ``/idle?impl=I&ping=15`` (a stream that only sends pings). This
process (pinned to core 1) opens the streams with raw asyncio sockets, waits for
every response's headers, and measures with psutil on the server process:

- RSS growth per stream: (RSS with N streams open - RSS before) / N, in KiB;
- server CPU per stream opened: CPU time spent while opening / streams opened;
- idle CPU: share of one core used by the server over a window while the N
  streams stay open (pings every 15 s; the window is a multiple of 15 s).

Usage::

    python benchmarks/many_streams.py                  # 1,000 and 5,000 streams, 30 s idle windows
    python benchmarks/many_streams.py --quick          # 200 and 1,000 streams, 15 s windows
    python benchmarks/many_streams.py --counts 1000,5000 --idle 30 --json out.json
    python benchmarks/many_streams.py --counts 1000,5000 --idle 15 --rounds 3   # medians, ratios per round
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import psutil  # noqa: E402
from _harness import (  # noqa: E402
    cpu_seconds,
    hold_many,
    machine,
    measure_rounds,
    open_clients,
    probe_status,
    report,
    server,
)

IMPLS = ["sse_starlette", "sse_fast", "raw"]  # raw: the server floor (no pings)


class IdleClient(asyncio.Protocol):
    """Holds one stream: notes when the response head arrived and counts bytes after it."""

    def __init__(self) -> None:
        self.head = asyncio.get_running_loop().create_future()
        self.buf = b""
        self.nbytes = 0
        self.status = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.nbytes += len(data)
        if not self.head.done():
            self.buf += data
            if b"\r\n\r\n" in self.buf:
                self.status = int(self.buf.split(b" ", 2)[1])
                self.buf = b""
                self.head.set_result(True)

    def connection_lost(self, exc) -> None:
        if not self.head.done():
            self.head.set_exception(ConnectionError("closed before the response head"))


async def open_streams(port: int, path: str, n: int, concurrency: int = 100) -> list[IdleClient]:
    """Open ``n`` idle streams (``concurrency`` at a time) and wait for every response head (``open_clients``).

    Raises:
        RuntimeError: a stream answered with a status other than 200.
    """
    return await open_clients(IdleClient, port, path, n, concurrency)


def _cpu(p: psutil.Process) -> float:
    return cpu_seconds(p.pid)


async def measure_impl(impl: str, counts: list[int], idle: float, ping: float, log=print) -> dict:
    """Measure one implementation on a fresh server; returns one entry per stream count."""
    out: dict = {"impl": impl, "points": []}
    with server() as srv:
        p = psutil.Process(srv.pid)
        path = f"/idle?impl={impl}&ping={ping:g}"
        status, text = probe_status(srv.port, path)
        if status != 200:
            raise RuntimeError(f"status {status}: {text.strip()[:200]}")
        # warm-up: imports and first-use allocations are not per-stream costs
        warm = await open_streams(srv.port, path, 50)
        for c in warm:
            c.transport.close()
        await asyncio.sleep(1.0)
        rss0 = p.memory_info().rss
        clients: list[IdleClient] = []
        for n in counts:
            add = n - len(clients)
            c0, t0 = _cpu(p), time.perf_counter()
            clients += await open_streams(srv.port, path, add)
            await asyncio.sleep(0.5)  # let the server settle the last opens
            c1, t1 = _cpu(p), time.perf_counter()
            gc.collect()
            rss = p.memory_info().rss
            point = {
                "streams": n,
                "rss_mib": rss / 2**20,
                "rss_kib_per_stream": (rss - rss0) / n / 1024,
                "open_cpu_ms_per_stream": (c1 - c0) / add * 1e3,
                "open_seconds": t1 - t0,
            }
            if idle > 0:
                b0 = sum(c.nbytes for c in clients)
                c2, t2 = _cpu(p), time.perf_counter()
                await asyncio.sleep(idle)
                c3, t3 = _cpu(p), time.perf_counter()
                b1 = sum(c.nbytes for c in clients)
                point["idle_cpu_percent"] = 100 * (c3 - c2) / (t3 - t2)
                point["idle_window_s"] = t3 - t2
                point["ping_bytes_per_stream"] = (b1 - b0) / len(clients)
            point["threads"] = p.num_threads()
            log(f"  {impl:14s} {n:6d} streams: {point['rss_kib_per_stream']:6.1f} KiB/stream, "
                f"open {point['open_cpu_ms_per_stream']:.3f} ms CPU/stream, "
                f"idle {point.get('idle_cpu_percent', float('nan')):.2f}% CPU "
                f"({point.get('ping_bytes_per_stream', 0):.0f} ping bytes/stream)")
            out["points"].append(point)
        for c in clients:
            c.transport.close()
        await asyncio.sleep(0.5)
    return out


def run(counts=(1000, 5000), idle: float = 30.0, ping: float = 15.0, impls=IMPLS, rounds: int = 1,
        log=print) -> dict:
    """Measure every implementation ``rounds`` times (alternating order); returns a JSON-able dict (see ``table``).

    With several rounds, each point is the median over the rounds and the
    sse_fast / sse-starlette ratios are the medians of the ratios taken within
    each round (``ratios``; rows measured minutes apart drift on a shared machine).
    """
    hold_many(max(counts))
    per_round = measure_rounds(lambda impl: measure_impl(impl, list(counts), idle, ping, log), list(impls),
                               rounds, log)
    results = []
    for impl in impls:
        runs = [r[impl] for r in per_round if impl in r]
        if not runs:
            continue
        points = []
        for i, _ in enumerate(counts):
            pts = [r["points"][i] for r in runs]
            points.append({k: (_median([p[k] for p in pts]) if isinstance(v, float) else v)
                           for k, v in pts[0].items()})
        results.append({"impl": impl, "points": points, "rounds": len(runs)})
    ratios = {}
    for i, n in enumerate(counts):
        ratios[n] = {}
        for key in ("rss_kib_per_stream", "open_cpu_ms_per_stream", "idle_cpu_percent"):
            vals = [r["sse_fast"]["points"][i][key] / r["sse_starlette"]["points"][i][key]
                    for r in per_round if "sse_fast" in r and "sse_starlette" in r
                    and r["sse_starlette"]["points"][i].get(key)]
            ratios[n][key] = {"median": _median(vals), "per_round": vals}
    return {"counts": list(counts), "idle_s": idle, "ping_s": ping, "rounds": rounds, "results": results,
            "ratios": ratios, "per_round": per_round, "machine": machine(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def table(res: dict) -> str:
    """Markdown table: per stream count and implementation, with sse_fast / sse-starlette ratios."""
    by = {r["impl"]: {p["streams"]: p for p in r["points"]} for r in res["results"]}
    rows = [f"Idle streams with pings every {res['ping_s']:g} s; idle CPU over {res['idle_s']:g} s.\n",
            "| streams | server | RSS KiB/stream | CPU ms per stream opened | idle CPU % of a core | RSS total MiB |",
            "|---:|---|---:|---:|---:|---:|"]
    for n in res["counts"]:
        for impl in IMPLS:
            p = by.get(impl, {}).get(n)
            if p is None:
                continue
            rows.append(f"| {n:,} | {impl} | {p['rss_kib_per_stream']:.1f} | {p['open_cpu_ms_per_stream']:.3f} | "
                        f"{p.get('idle_cpu_percent', float('nan')):.2f} | {p['rss_mib']:.0f} |")
        ratios = res.get("ratios", {}).get(n) or res.get("ratios", {}).get(str(n))  # (str keys after JSON)
        if ratios:
            def r(k, ratios=ratios):
                got = ratios.get(k) or {}
                per = got.get("per_round") or []
                if not per:
                    return "n/a"
                return f"{got['median']:.2f}" + (f" ({', '.join(f'{x:.2f}' for x in per)})" if len(per) > 1 else "")
            rows.append(f"| {n:,} | sse_fast / sse-starlette | {r('rss_kib_per_stream')} | "
                        f"{r('open_cpu_ms_per_stream')} | {r('idle_cpu_percent')} | |")
    if res.get("rounds", 1) > 1:
        rows.insert(1, f"Medians of {res['rounds']} rounds (alternating order); ratios: the median of the "
                       "ratios taken within each round, each round's in brackets.\n")
    return "\n".join(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="many idle streams: memory and CPU per stream")
    ap.add_argument("--quick", action="store_true", help="200 and 1,000 streams, 15 s idle windows")
    ap.add_argument("--counts", default=None, help="comma-separated stream counts (ascending)")
    ap.add_argument("--idle", type=float, default=None, help="idle window in seconds (default 30)")
    ap.add_argument("--ping", type=float, default=15.0)
    ap.add_argument("--impls", default=",".join(IMPLS))
    ap.add_argument("--rounds", type=int, default=1, help="measure every impl N times, alternating the order")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    counts = [int(x) for x in args.counts.split(",")] if args.counts else ([200, 1000] if args.quick else [1000, 5000])
    idle = args.idle if args.idle is not None else (15.0 if args.quick else 30.0)
    res = run(counts, idle, args.ping, args.impls.split(","), args.rounds)
    return report(res, table, args.json)


if __name__ == "__main__":
    sys.exit(main())
