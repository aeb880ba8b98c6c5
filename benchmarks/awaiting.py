"""Awaiting producers: N streams, each producer awaits ``asyncio.sleep(interval)`` then yields one event.

The pattern of real producers (LLM token streams, tickers, MCP servers):
every event is its own send. For each implementation a fresh server (uvicorn,
uvloop + httptools, pinned to core 0) serves
``/awaiting?impl=I&interval=S&size=B``; this process (pinned to core 1)
holds the N streams with raw asyncio sockets and takes, for every event,
``time.time()`` at the read minus the ``"t"`` its data carries (the server's
``time.time()`` just before it yielded) as the delivery latency. Server CPU
comes from ``/proc/PID/task/*/schedstat`` over the measuring window.

Rows (``--impls``), the same generator in each library's response (defaults:
15 s ping, no send timeout):

- ``raw``: the ceiling: a raw ASGI app that awaits the sleep and the
  ``send()`` of the preformatted event in the request's own task (no ping,
  no disconnect listener, no timeout);
- ``hand``: the same generator consumed by a hand-written ``async for`` that
  encodes each item with sse_fast's ``EventBuffer`` and awaits ``send()``
  (the floor for a generator: no ping, no disconnect listener);
- ``sse_fast``: ``sse_fast.EventSourceResponse(gen())``;
- ``sse_starlette``: ``sse_starlette.EventSourceResponse(gen())``;
- ``fastapi``: FastAPI's own ``fastapi.sse.EventSourceResponse`` route
  yielding ``ServerSentEvent(raw_data=..., id=...)``.

``--side-by-side`` runs every impl's server at the same time, all pinned to
core 0, each with ``--streams`` streams, and measures them in one window per
round: the machine's drift then weighs on every row alike (sequential rows
measured minutes apart drifted by 10-30% here). Keep the servers' total load
under one core (e.g. 3 impls x 400 streams x 20/s).

Data: ``{"seq":N,"t":<time.time()>,"p":"xx..."}`` padded to ``size`` bytes
(default 100, ~130 bytes on the wire with the id). Issue 16's target: sse_fast
<= 1.10x the raw row's CPU at 1,000 x 20/s, latency p50 <= 0.1 ms.

Usage::

    python benchmarks/awaiting.py                        # 1,000 streams x 20/s, 20 s window
    python benchmarks/awaiting.py --quick                # 300 streams x 20/s, 6 s window
    python benchmarks/awaiting.py --streams 1000 --interval 0.1 --json out.json
    python benchmarks/awaiting.py --impls raw,sse_fast
    python benchmarks/awaiting.py --side-by-side --impls raw,hand,sse_fast --streams 400 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import sys
import time
from urllib.parse import parse_qs

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _harness import (  # noqa: E402
    cpu_seconds,
    hold_many,
    loop_runner,
    machine,
    median_result,
    open_clients,
    probe_status,
    report,
    round_ratio,
    run_rounds,
    server,
)

IMPLS = ["raw", "hand", "sse_fast", "sse_starlette", "fastapi"]
LABELS = {"raw": "raw ASGI (await sleep + send in the request's task)",
          "hand": "hand-written: the same generator, sse_fast's encoder, await send", "sse_fast": "sse_fast",
          "sse_starlette": "sse-starlette", "fastapi": "fastapi.sse"}
T_RE = re.compile(rb'"t":([0-9]+\.[0-9]{6})')


# ---------------------------------------------------------------- server side
def _data(seq: int, pad: str) -> str:
    return f'{{"seq":{seq:07d},"t":{time.time():.6f},"p":"{pad}"}}'


def _pad(size: int) -> str:
    return "x" * max(0, size - len('{"seq":0000000,"t":1700000000.000000,"p":""}'))


async def _gen(interval: float, pad: str):
    sleep = asyncio.sleep
    seq = 0
    while True:
        await sleep(interval)
        yield {"id": str(seq), "data": _data(seq, pad)}
        seq += 1


async def _raw(interval: float, pad: str, send) -> None:
    from sse_fast.response import _DEFAULT_RAW_HEADERS

    await send({"type": "http.response.start", "status": 200, "headers": list(_DEFAULT_RAW_HEADERS)})
    sleep = asyncio.sleep
    seq = 0
    try:
        while True:
            await sleep(interval)
            body = f"id: {seq}\r\ndata: {_data(seq, pad)}\r\n\r\n".encode()
            await send({"type": "http.response.body", "body": body, "more_body": True})
            seq += 1
    except OSError:
        return


async def _hand(interval: float, pad: str, send) -> None:
    from sse_fast import _encoder
    from sse_fast.response import _DEFAULT_RAW_HEADERS

    await send({"type": "http.response.start", "status": 200, "headers": list(_DEFAULT_RAW_HEADERS)})
    buf = _encoder.EventBuffer("\r\n")
    try:
        async for item in _gen(interval, pad):
            buf.append(item)
            await send({"type": "http.response.body", "body": buf.take(), "more_body": True})
    except OSError:
        return


_fastapi = None


def _fastapi_app():
    global _fastapi
    if _fastapi is None:
        from collections.abc import AsyncIterable

        from fastapi import FastAPI
        from fastapi.sse import EventSourceResponse, ServerSentEvent

        api = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

        @api.get("/awaiting", response_class=EventSourceResponse)
        async def awaiting(interval: float = 0.05, size: int = 100) -> AsyncIterable[ServerSentEvent]:
            pad = _pad(size)
            seq = 0
            while True:
                await asyncio.sleep(interval)
                yield ServerSentEvent(raw_data=_data(seq, pad), id=str(seq))
                seq += 1

        _fastapi = api
    return _fastapi


async def app(scope, receive, send) -> None:
    """``/awaiting?impl=I&interval=S&size=B``; everything else goes to ``benchmarks/apps.py`` (``/health``)."""
    import apps

    if scope["type"] != "http" or scope["path"] != "/awaiting":
        await apps.app(scope, receive, send)
        return
    q = parse_qs(scope.get("query_string", b"").decode())
    impl = q.get("impl", [""])[0]
    interval = float(q.get("interval", ["0.05"])[0])
    pad = _pad(int(q.get("size", ["100"])[0]))
    if impl == "raw":
        await _raw(interval, pad, send)
    elif impl == "sse_fast":
        from sse_fast import EventSourceResponse

        await EventSourceResponse(_gen(interval, pad))(scope, receive, send)
    elif impl == "sse_starlette":
        from sse_starlette import EventSourceResponse

        await EventSourceResponse(_gen(interval, pad))(scope, receive, send)
    elif impl == "hand":
        await _hand(interval, pad, send)
    elif impl == "fastapi":
        await _fastapi_app()(scope, receive, send)
    else:
        await send({"type": "http.response.start", "status": 400, "headers": []})
        await send({"type": "http.response.body", "body": f"unknown impl {impl!r}".encode()})


# ---------------------------------------------------------------- client side
class Client(asyncio.Protocol):
    """One stream: a latency per ``"t"`` read while ``recording`` (any line ending, chunked or not)."""

    recording = False
    latencies: list[float] = []
    events_read = 0

    def __init__(self) -> None:
        self.head = asyncio.get_running_loop().create_future()
        self.buf = b""
        self.status = 0
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        now = time.time()
        buf = self.buf + data if self.buf else data
        if not self.head.done():
            if b"\r\n\r\n" not in buf:
                self.buf = buf
                return
            head, _, buf = buf.partition(b"\r\n\r\n")
            self.status = int(head.split(b" ", 2)[1])
            self.head.set_result(True)
        last = 0
        rec = Client.recording
        cls = type(self)  # Client, or one impl's subclass in a side-by-side run
        for m in T_RE.finditer(buf):
            last = m.end()
            if rec:
                cls.events_read += 1
                cls.latencies.append(now - float(m.group(1)))
        self.buf = buf[last:][-64:]  # a "t" cut by the read waits for the rest

    def connection_lost(self, exc) -> None:
        if not self.head.done():
            self.head.set_exception(ConnectionError("closed before the response head"))


def _pct(vals: list[float], q: float) -> float:
    return vals[min(len(vals) - 1, int(q * len(vals)))] if vals else float("nan")


async def measure_impl(impl: str, streams: int, seconds: float, interval: float, size: int, log=print) -> dict:
    """Hold ``streams`` streams of ``impl`` on a fresh server; measure ``seconds`` of steady state."""
    with server(app="awaiting:app") as srv:
        path = f"/awaiting?impl={impl}&interval={interval:g}&size={size}"
        status, text = probe_status(srv.port, path)
        if status != 200:
            raise RuntimeError(f"status {status}: {text.strip()[:200]}")
        clients = await open_clients(Client, srv.port, path, streams)
        await asyncio.sleep(2.0)  # settle: the streams' schedules spread
        Client.latencies = []
        Client.events_read = 0
        Client.recording = True
        c0 = cpu_seconds(srv.pid)
        t0 = time.perf_counter()
        await asyncio.sleep(seconds)
        c1 = cpu_seconds(srv.pid)
        t1 = time.perf_counter()
        Client.recording = False
        for c in clients:
            c.transport.close()
        await asyncio.sleep(0.3)
    wall = t1 - t0
    lat = sorted(Client.latencies)
    expected = streams * wall / interval
    res = {"impl": impl, "streams": streams, "seconds": wall, "events": Client.events_read,
           "events_expected": expected, "server_cpu_percent": 100 * (c1 - c0) / wall,
           "p50_ms": _pct(lat, 0.50) * 1e3, "p90_ms": _pct(lat, 0.90) * 1e3, "p99_ms": _pct(lat, 0.99) * 1e3}
    log(f"  {impl:14s} {streams} x {1 / interval:g}/s: server CPU {res['server_cpu_percent']:.1f}%, "
        f"latency p50 {res['p50_ms']:.2f} ms p99 {res['p99_ms']:.2f} ms, "
        f"{100 * res['events'] / expected:.0f}% of expected events")
    return res


async def measure_side_by_side(impls: list[str], streams: int, seconds: float, interval: float, size: int,
                               log=print) -> dict[str, dict]:
    """Every impl on its own fresh server at the same time, all pinned to the server core; one window.

    The machine's drift (other tenants, frequency) then weighs on every impl
    alike, which sequential rows cannot promise. ``streams`` is per server:
    keep the sum of the servers' load under one core.

    Returns:
        ``{impl: result}``, each as ``measure_impl``'s.
    """
    with contextlib.ExitStack() as stack:
        srvs = {impl: stack.enter_context(server(app="awaiting:app")) for impl in impls}
        classes = {impl: type(f"Client_{impl}", (Client,), {"latencies": [], "events_read": 0}) for impl in impls}
        clients = []
        for impl, srv in srvs.items():
            path = f"/awaiting?impl={impl}&interval={interval:g}&size={size}"
            status, text = probe_status(srv.port, path)
            if status != 200:
                raise RuntimeError(f"{impl}: status {status}: {text.strip()[:200]}")
            clients += await open_clients(classes[impl], srv.port, path, streams)
        await asyncio.sleep(2.0)  # settle: the streams' schedules spread
        for cls in classes.values():
            cls.latencies, cls.events_read = [], 0
        Client.recording = True
        c0 = {impl: cpu_seconds(srv.pid) for impl, srv in srvs.items()}
        t0 = time.perf_counter()
        await asyncio.sleep(seconds)
        c1 = {impl: cpu_seconds(srv.pid) for impl, srv in srvs.items()}
        t1 = time.perf_counter()
        Client.recording = False
        for c in clients:
            c.transport.close()
        await asyncio.sleep(0.3)
    wall = t1 - t0
    out = {}
    for impl in impls:
        cls = classes[impl]
        lat = sorted(cls.latencies)
        expected = streams * wall / interval
        res = {"impl": impl, "streams": streams, "seconds": wall, "events": cls.events_read,
               "events_expected": expected, "server_cpu_percent": 100 * (c1[impl] - c0[impl]) / wall,
               "p50_ms": _pct(lat, 0.50) * 1e3, "p90_ms": _pct(lat, 0.90) * 1e3, "p99_ms": _pct(lat, 0.99) * 1e3}
        log(f"  {impl:14s} {streams} x {1 / interval:g}/s (side by side): server CPU "
            f"{res['server_cpu_percent']:.1f}%, latency p50 {res['p50_ms']:.2f} ms p99 {res['p99_ms']:.2f} ms, "
            f"{100 * res['events'] / expected:.0f}% of expected events")
        out[impl] = res
    return out


def run_side_by_side(streams: int, seconds: float, interval: float, size: int, impls, rounds: int,
                     log=print) -> dict:
    """``rounds`` side-by-side windows (``measure_side_by_side``), summed up as ``run``'s result."""
    hold_many(streams * len(impls))
    runner = loop_runner()
    per_round = [runner(measure_side_by_side(list(impls), streams, seconds, interval, size, log))
                 for _ in range(rounds)]
    results = [m for m in (median_result(per_round, impl) for impl in IMPLS) if m is not None]
    return {"streams": streams, "seconds": seconds, "interval": interval, "size": size, "side_by_side": True,
            "results": results, "ratios": _ratios(per_round), "rounds": per_round, "machine": machine(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def run(streams: int = 1000, seconds: float = 20.0, interval: float = 0.05, size: int = 100, impls=IMPLS,
        rounds: int = 1, log=print) -> dict:
    """Measure every implementation, ``rounds`` times in alternating order; returns a JSON-able dict (see ``table``).

    ``results``: per impl, the medians over the rounds; ``ratios``: medians of
    the ratios taken within each round; ``rounds``: every round's results.
    """
    return run_rounds(lambda impl: measure_impl(impl, streams, seconds, interval, size, log), impls, IMPLS,
                      rounds, _ratios, {"streams": streams, "seconds": seconds, "interval": interval, "size": size},
                      log)


def _ratios(per_round: list) -> dict:
    """``{impl: {key: median of impl/raw within a round}}``."""
    return {impl: {k: round_ratio(per_round, impl, "raw", k) for k in ("server_cpu_percent", "p50_ms", "p99_ms")}
            for impl in IMPLS if any(impl in r and "raw" in r for r in per_round)}


def table(res: dict) -> str:
    """Markdown table, each row's CPU and latency also as a ratio to the raw row."""
    n = len(res.get("rounds", [])) or 1
    rows = [f"{res['streams']:,} streams x {1 / res['interval']:g} events/s each (awaiting producers), "
            f"~{res['size']} bytes of data; {res['seconds']:g} s window; medians of {n} round(s), "
            "ratios to raw taken within each round"
            + (" (side by side: every server at once, on one core, in each round's window; streams per server)"
               if res.get("side_by_side") else "") + ".\n",
            "| server | server CPU % of a core | x raw | latency p50 ms | p90 ms | p99 ms | events delivered |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    by = {r["impl"]: r for r in res["results"]}
    ratios = res.get("ratios", {})
    for impl in IMPLS:
        r = by.get(impl)
        if r:
            q = ratios.get(impl)
            ratio = f"{q['server_cpu_percent']:.2f}" if q else ""
            rows.append(f"| {LABELS[impl]} | {r['server_cpu_percent']:.1f} | {ratio} | {r['p50_ms']:.2f} | "
                        f"{r['p90_ms']:.2f} | {r['p99_ms']:.2f} | {100 * r['events'] / r['events_expected']:.0f}% |")
    return "\n".join(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="awaiting producers: many streams, one send per event")
    ap.add_argument("--quick", action="store_true", help="300 streams, 6 s window")
    ap.add_argument("--streams", type=int, default=None)
    ap.add_argument("--seconds", type=float, default=None)
    ap.add_argument("--interval", type=float, default=0.05, help="seconds each producer sleeps (default 0.05: 20/s)")
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--impls", default=",".join(IMPLS))
    ap.add_argument("--rounds", type=int, default=1, help="measure every impl N times, alternating the order")
    ap.add_argument("--side-by-side", action="store_true",
                    help="run every impl's server at once on the server core, one window per round "
                         "(--streams per server: keep the total load under one core)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    streams = args.streams or (300 if args.quick else 1000)
    seconds = args.seconds or (6.0 if args.quick else 20.0)
    if args.side_by_side:
        res = run_side_by_side(streams, seconds, args.interval, args.size, args.impls.split(","), args.rounds)
    else:
        res = run(streams, seconds, args.interval, args.size, args.impls.split(","), args.rounds)
    return report(res, table, args.json)


if __name__ == "__main__":
    sys.exit(main())
