"""Fan-out: N streams each fed one ~100-byte event every 100 ms by one broadcaster.

For each implementation a fresh server (uvicorn, uvloop + httptools, pinned to
core 0) serves ``/fanout?impl=I&interval=0.1&size=100``. The event data carries
the server's ``time.time()`` at broadcast (``"t"``). This process (pinned to
core 1) holds the N streams with raw asyncio sockets and, for every event
received, takes ``time.time() - t`` as the delivery latency. Server CPU comes
from the server's ``/proc/PID/task/*/schedstat`` over the measuring window.

Rows (``--impls``):

- ``sse_starlette``, ``sse_fast``: queue per client (``benchmarks/apps.py``):
  one broadcaster task puts each event on every client's ``asyncio.Queue``;
  each client's generator yields what its queue gets.
- ``sse_fast_broadcast``: ``sse_fast.broadcast.Broadcast``: one task publishes
  each event to a topic; every ``EventSourceResponse(broadcast.subscribe(topic))``
  gets it (encoded once; idle streams are sent to by one fan-out task per
  publish, ``sse_fast/broadcast/_fanout.py``). Served by this module's ``app``
  (see below).
- ``raw``: the ceiling: a raw ASGI app whose broadcaster task encodes each event
  once and awaits every connection's ``send()`` in turn (no pings, no
  timeouts, no disconnect handling beyond unregistering). Also this module's ``app``.

The same data (``{"seq":...,"t":...,"p":"xx..."}``, id = seq), the same
absolute schedule in every row.

Usage::

    python benchmarks/fanout.py                    # 1,000 streams, 20 s window
    python benchmarks/fanout.py --quick            # 300 streams, 6 s window
    python benchmarks/fanout.py --streams 1000 --seconds 20 --json out.json
    python benchmarks/fanout.py --impls sse_fast,sse_fast_broadcast,raw
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import time
from urllib.parse import parse_qs

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import psutil  # noqa: E402
from _harness import (  # noqa: E402
    SERVER_CORE,
    EventStreamProtocol,
    cpu_seconds,
    open_clients,
    probe_status,
    report,
    round_ratio,
    run_rounds,
    server,
)

IMPLS = ["sse_starlette", "sse_fast", "sse_fast_broadcast", "raw"]
#: served by this module's ``app`` (the others by ``benchmarks/apps.py``, unchanged)
OWN_IMPLS = ("sse_fast_broadcast", "raw")
LABELS = {"sse_starlette": "sse_starlette (queue per client)", "sse_fast": "sse_fast (queue per client)",
          "sse_fast_broadcast": "sse_fast broadcast (default: fan-out task)",
          "raw": "raw ceiling (encode once, await each send)"}
T_RE = re.compile(rb'"t":([0-9]+\.[0-9]+)')


# ---------------------------------------------------------------- server side: broadcast and raw ceiling
def _event_data(seq: int, pad: str) -> str:
    """The data of event ``seq``: as ``benchmarks/apps.py``'s broadcaster writes it."""
    return f'{{"seq":{seq:07d},"t":{time.time():.6f},"p":"{pad}"}}'


def _pad(size: int) -> str:
    return "x" * max(0, size - len('{"seq":0000000,"t":1700000000.000000,"p":""}'))


class _Ticker:
    """One task calling ``tick(seq)`` every ``interval`` seconds on an absolute schedule."""

    def __init__(self, interval: float, tick) -> None:
        self.interval = interval
        self.tick = tick
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        seq = 0
        start = loop.time()
        while True:
            seq += 1
            await asyncio.sleep(max(0.0, start + seq * self.interval - loop.time()))
            await self.tick(seq)


class _RawFanout:
    """The ceiling: each event encoded once, every connection's ``send()`` awaited in turn."""

    def __init__(self, interval: float, size: int) -> None:
        self.pad = _pad(size)
        self.sends: set = set()
        self.ticker = _Ticker(interval, self.tick)

    async def tick(self, seq: int) -> None:
        body = f"id: {seq}\r\ndata: {_event_data(seq, self.pad)}\r\n\r\n".encode()
        message = {"type": "http.response.body", "body": body, "more_body": True}
        for send in list(self.sends):
            try:
                await send(message)
            except OSError:
                self.sends.discard(send)

    async def serve(self, receive, send) -> None:
        from sse_fast.response import _DEFAULT_RAW_HEADERS

        await send({"type": "http.response.start", "status": 200, "headers": list(_DEFAULT_RAW_HEADERS)})
        self.sends.add(send)
        self.ticker.start()
        try:
            while (await receive())["type"] != "http.disconnect":
                pass
        finally:
            self.sends.discard(send)


_BROADCAST: list = []
_TICKERS: dict[tuple[float, int], _Ticker] = {}
_RAW: dict[tuple[float, int], _RawFanout] = {}


def _broadcast_response(interval: float, size: int, ping, send_timeout):
    from sse_fast import EventSourceResponse
    from sse_fast.broadcast import Broadcast

    if not _BROADCAST:
        _BROADCAST.append(Broadcast())
    b = _BROADCAST[0]
    topic = f"fanout/{interval!r}/{size}"
    ticker = _TICKERS.get((interval, size))
    if ticker is None:
        pad = _pad(size)

        async def tick(seq: int) -> None:
            b.publish({"id": str(seq), "data": _event_data(seq, pad)}, topic)

        ticker = _TICKERS[(interval, size)] = _Ticker(interval, tick)
    ticker.start()
    return EventSourceResponse(b.subscribe(topic), ping=ping, send_timeout=send_timeout)


async def app(scope, receive, send) -> None:
    """``/fanout?impl=sse_fast_broadcast|raw``; everything else goes to ``benchmarks/apps.py``."""
    import apps

    q = parse_qs(scope.get("query_string", b"").decode()) if scope["type"] == "http" else {}
    impl = q.get("impl", [""])[0]
    if scope["type"] != "http" or scope["path"] != "/fanout" or impl not in OWN_IMPLS:
        await apps.app(scope, receive, send)
        return
    interval = float(q.get("interval", ["0.1"])[0])
    size = int(q.get("size", ["100"])[0])
    if impl == "raw":
        fan = _RAW.get((interval, size))
        if fan is None:
            fan = _RAW[(interval, size)] = _RawFanout(interval, size)
        await fan.serve(receive, send)
        return
    ping = float(q.get("ping", ["15"])[0])
    send_timeout = float(q["send_timeout"][0]) if "send_timeout" in q else None
    await _broadcast_response(interval, size, ping, send_timeout)(scope, receive, send)


def own_server(core: int = SERVER_CORE, backlog: int = 8192):
    """``_harness.server()`` serving this module's ``app`` (same flags, same pinning, same cleanup)."""
    return server(core, backlog=backlog, app="fanout:app")


# ---------------------------------------------------------------- client side


class FanoutClient(EventStreamProtocol):
    """One stream: records a latency per event while ``recording`` is true."""

    recording = False
    latencies: list[float] = []
    events_read = 0

    def events(self, buf: bytes, end: int, now: float) -> None:
        if FanoutClient.recording:
            ts = T_RE.findall(buf, 0, end)
            FanoutClient.events_read += len(ts)
            lat = FanoutClient.latencies
            for t in ts:
                lat.append(now - float(t))


def _pct(sorted_vals: list[float], q: float) -> float:
    if not sorted_vals:
        return float("nan")
    return sorted_vals[min(len(sorted_vals) - 1, int(q * len(sorted_vals)))]


async def measure_impl(impl: str, streams: int, seconds: float, interval: float, size: int, log=print,
                       on_start=None) -> dict:
    """Hold ``streams`` fan-out streams on a fresh server; measure ``seconds`` of steady state.

    ``on_start(server_pid)``, when given, is called as the measuring window opens (profilers).
    """
    with (own_server() if impl in OWN_IMPLS else server()) as srv:
        p = psutil.Process(srv.pid)
        me = psutil.Process()
        path = f"/fanout?impl={impl}&interval={interval:g}&size={size}"
        status, text = probe_status(srv.port, path)
        if status != 200:
            raise RuntimeError(f"status {status}: {text.strip()[:200]}")
        clients = await open_clients(FanoutClient, srv.port, path, streams)
        await asyncio.sleep(2.0)  # settle: every stream has had events
        FanoutClient.latencies = []
        FanoutClient.events_read = 0
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
        "events": FanoutClient.events_read,
        "events_expected": expected,
        "server_cpu_percent": 100 * (c1 - c0) / wall,
        "client_cpu_percent": 100 * ((m1.user - m0.user) + (m1.system - m0.system)) / wall,
        "p50_ms": _pct(lat, 0.50) * 1e3,
        "p90_ms": _pct(lat, 0.90) * 1e3,
        "p99_ms": _pct(lat, 0.99) * 1e3,
        "max_ms": (lat[-1] * 1e3) if lat else float("nan"),
    }
    log(f"  {impl:18s} {streams} streams: server CPU {res['server_cpu_percent']:.1f}%, "
        f"latency p50 {res['p50_ms']:.1f} ms p99 {res['p99_ms']:.1f} ms, "
        f"{res['events']:,} events ({100 * res['events'] / expected:.0f}% of expected), "
        f"client CPU {res['client_cpu_percent']:.0f}%")
    return res


def run(streams: int = 1000, seconds: float = 20.0, interval: float = 0.1, size: int = 100, impls=IMPLS,
        rounds: int = 1, log=print) -> dict:
    """Measure every implementation, ``rounds`` times in alternating order; returns a JSON-able dict (see ``table``).

    ``results``: per impl, the medians over the rounds; ``ratios``: medians of
    the ratios taken within each round; ``rounds``: every round's results.
    """
    return run_rounds(lambda impl: measure_impl(impl, streams, seconds, interval, size, log), impls, IMPLS,
                      rounds, _ratios, {"streams": streams, "seconds": seconds, "interval": interval, "size": size},
                      log)


PAIRS = (("sse_fast", "sse_starlette", "sse_fast / sse-starlette"),
         ("sse_fast_broadcast", "sse_starlette", "sse_fast broadcast / sse-starlette"),
         ("sse_fast_broadcast", "raw", "sse_fast broadcast / raw ceiling"))
RATIO_KEYS = ("server_cpu_percent", "p50_ms", "p90_ms", "p99_ms")


def _ratios(per_round: list) -> dict:
    """``{"a/b": {key: median ratio within a round}}`` for the pairs measured."""
    out = {}
    for a, b, _ in PAIRS:
        if any(a in r and b in r for r in per_round):
            out[f"{a}/{b}"] = {k: round_ratio(per_round, a, b, k) for k in RATIO_KEYS}
    return out


def table(res: dict) -> str:
    """Markdown table with sse_fast / sse-starlette ratios."""
    n = len(res.get("rounds", [])) or 1
    rows = [f"{res['streams']:,} streams x {1 / res['interval']:g} events/s, ~{res['size']} bytes each; "
            f"{res['seconds']:g} s window; medians of {n} round(s), ratios taken within each round.\n",
            "| server | server CPU % of a core | latency p50 ms | p90 ms | p99 ms | max ms | events delivered |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    by = {r["impl"]: r for r in res["results"]}
    for impl in IMPLS:
        r = by.get(impl)
        if r:
            rows.append(f"| {LABELS[impl]} | {r['server_cpu_percent']:.1f} | {r['p50_ms']:.1f} | {r['p90_ms']:.1f} | "
                        f"{r['p99_ms']:.1f} | {r['max_ms']:.1f} | {100 * r['events'] / r['events_expected']:.0f}% |")
    for x, y, label in PAIRS:
        q = res.get("ratios", {}).get(f"{x}/{y}")
        if q:
            rows.append(f"| {label} | {q['server_cpu_percent']:.2f} | {q['p50_ms']:.2f} | {q['p90_ms']:.2f} | "
                        f"{q['p99_ms']:.2f} | | |")
    return "\n".join(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="fan-out: many streams fed by one broadcaster")
    ap.add_argument("--quick", action="store_true", help="300 streams, 6 s window")
    ap.add_argument("--streams", type=int, default=None)
    ap.add_argument("--seconds", type=float, default=None)
    ap.add_argument("--interval", type=float, default=0.1)
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--impls", default=",".join(IMPLS))
    ap.add_argument("--rounds", type=int, default=1, help="measure every impl N times, alternating the order")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    streams = args.streams or (300 if args.quick else 1000)
    seconds = args.seconds or (6.0 if args.quick else 20.0)
    res = run(streams, seconds, args.interval, args.size, args.impls.split(","), args.rounds)
    return report(res, table, args.json)


if __name__ == "__main__":
    sys.exit(main())
