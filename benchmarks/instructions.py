"""Instructions per stream opened and per awaited event, counted by valgrind's callgrind.

CPU time on a shared 2-core machine drifts by 10-30% between runs (see
``RESULTS.md``), more than the differences issue 16 is about. Callgrind counts
the instructions a process executes, which repeat to within ~1% for the same
binary and inputs whatever else the machine does. This script runs each case
in process (no server, no sockets: what the library itself costs) in a child
process under ``valgrind --tool=callgrind`` twice, with a small and a large
count, and reports the difference divided by the difference of the counts, so
that interpreter start-up and imports cancel out.

Cases (``--case``):

- ``open``: open streams that stay idle (the generator of ``apps.idle_events``
  never yields; ping every 15 s), each with a stand-in for the server's
  per-connection objects (an ``asyncio.Event``, a future, a scope dict), so
  that the garbage collector sees a heap shaped like a server's; counted until
  every response's start message went out, before any teardown. ``--no-gc``
  disables the garbage collector, which separates its share.
  Impls: ``raw`` (``apps.raw_idle``: start, empty body, ``await receive()``),
  ``sse_fast``, ``sse_starlette``.
- ``awaiting``: streams whose producer awaits ``asyncio.sleep(0)`` before
  each of ``K`` events (a dict with an id and ~100 bytes of JSON data, as
  ``awaiting.py``), sent to a ``send`` that returns at once. Impls: ``raw``
  (the awaits and sends in the request's own coroutine, f-string encoding),
  ``hand`` (the same generator consumed by ``async for``, sse_fast's
  ``EventBuffer``, ``await send``), ``sse_fast``, ``sse_starlette``.

What this leaves out, and ``many_streams.py`` / ``awaiting.py`` measure: the
server's own per-connection and per-send work (uvicorn, uvloop, the kernel),
which every impl pays, and cache misses, which make the collector's share
larger in wall time than in instructions.

Usage (needs ``valgrind``: Debian's package of that name)::

    python benchmarks/instructions.py                         # both cases, every impl
    python benchmarks/instructions.py --case open --impls raw,sse_fast
    python benchmarks/instructions.py --case open --no-gc --counts 1000,4000
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import re
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

CASES = {"open": ["raw", "sse_fast", "sse_starlette"], "awaiting": ["raw", "hand", "sse_fast", "sse_starlette"]}
COUNTS = {"open": (1000, 4000), "awaiting": (20, 60)}  # streams opened; events per stream (200 streams)
AWAITING_STREAMS = 200
_COLLECTED = re.compile(r"Collected : (\d+)")


# ---------------------------------------------------------------- child side
class _Connection:
    """A stand-in for a server's per-connection objects (protocol, request cycle, scope)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.message_event = asyncio.Event()
        self.disconnected = loop.create_future()
        self.scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1",
                      "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 50000), "scheme": "http",
                      "method": "GET", "root_path": "", "path": "/idle", "raw_path": b"/idle",
                      "query_string": b"ping=15", "headers": [(b"host", b"127.0.0.1"), (b"accept", b"text/event-stream")],
                      "state": {}}


def _response_class(impl: str):
    if impl == "sse_fast":
        from sse_fast import EventSourceResponse
    else:
        from sse_starlette import EventSourceResponse
    return EventSourceResponse


async def _open(impl: str, n: int) -> None:
    import apps

    loop = asyncio.get_running_loop()
    started = 0

    async def one() -> None:
        conn = _Connection(loop)

        async def receive():
            return await conn.disconnected

        async def send(message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started += 1

        if impl == "raw":
            await apps.raw_idle(send, receive)
        else:
            await _response_class(impl)(apps.idle_events(), ping=15)(conn.scope, receive, send)

    tasks = [loop.create_task(one()) for _ in range(n)]
    deadline = time.monotonic() + 120
    while started < n:
        await asyncio.sleep(0)
        if time.monotonic() > deadline:  # a stream that failed never starts: say why, do not spin
            failed = next((t for t in tasks if t.done()), None)
            if failed is not None:
                failed.result()
            raise RuntimeError(f"only {started} of {n} streams started within 120 s")
    for _ in range(3):
        await asyncio.sleep(0)
    del tasks
    # leave without tearing the streams down: only the opening is counted
    sys.stdout.flush()
    os._exit(0)


def _data(seq: int) -> str:
    return f'{{"seq":{seq:07d},"t":{time.time():.6f},"p":"{"x" * 55}"}}'


async def _awaiting(impl: str, k: int) -> None:
    from sse_fast import _encoder

    async def gen():
        sleep = asyncio.sleep
        for seq in range(k):
            await sleep(0)
            yield {"id": str(seq), "data": _data(seq)}

    forever = asyncio.get_running_loop().create_future()

    async def receive():
        return await forever

    async def send(message) -> None:
        pass

    scope = {"type": "http", "method": "GET", "path": "/", "headers": [], "asgi": {"version": "3.0"}}

    async def one() -> None:
        if impl == "raw":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            for seq in range(k):
                await asyncio.sleep(0)
                body = f"id: {seq}\r\ndata: {_data(seq)}\r\n\r\n".encode()
                await send({"type": "http.response.body", "body": body, "more_body": True})
        elif impl == "hand":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            buf = _encoder.EventBuffer("\r\n")
            async for item in gen():
                buf.append(item)
                await send({"type": "http.response.body", "body": buf.take(), "more_body": True})
        else:
            await _response_class(impl)(gen(), ping=15)(scope, receive, send)

    await asyncio.gather(*(one() for _ in range(AWAITING_STREAMS)))
    sys.stdout.flush()
    os._exit(0)


def child(case: str, impl: str, count: int, no_gc: bool) -> None:
    # the imports a server has made before its first stream (the collector's heap)
    import httptools  # noqa: F401
    import sse_starlette  # noqa: F401
    import starlette.responses  # noqa: F401
    import uvicorn  # noqa: F401
    import uvloop

    import sse_fast  # noqa: F401

    if no_gc:
        gc.disable()
    uvloop.run(_open(impl, count) if case == "open" else _awaiting(impl, count))


# ---------------------------------------------------------------- parent side
def instructions(case: str, impl: str, count: int, no_gc: bool) -> int:
    """Instructions executed by one child run (callgrind's ``Collected`` total).

    Raises:
        RuntimeError: valgrind is missing, or the child failed.
    """
    if shutil.which("valgrind") is None:
        raise RuntimeError("valgrind not found: install Debian's valgrind package")
    cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, os.path.abspath(__file__),
           "--child", case, impl, str(count)] + (["--no-gc"] if no_gc else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    m = _COLLECTED.search(out.stderr)
    if out.returncode != 0 or m is None:
        raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}): {out.stderr[-2000:]}")
    return int(m.group(1))


def per_unit(case: str, impl: str, counts: tuple[int, int], no_gc: bool) -> float:
    """Instructions per stream opened (``open``) or per event (``awaiting``)."""
    lo, hi = counts
    units = hi - lo if case == "open" else (hi - lo) * AWAITING_STREAMS
    return (instructions(case, impl, hi, no_gc) - instructions(case, impl, lo, no_gc)) / units


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="instructions per stream opened / per awaited event (callgrind)")
    ap.add_argument("--case", choices=["open", "awaiting", "both"], default="both")
    ap.add_argument("--impls", default=None, help="comma-separated; default every impl of the case")
    ap.add_argument("--counts", default=None, help="small,large: streams (open) or events per stream (awaiting)")
    ap.add_argument("--no-gc", action="store_true", help="disable the garbage collector in the child")
    ap.add_argument("--child", nargs=3, metavar=("CASE", "IMPL", "COUNT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        case, impl, count = args.child
        child(case, impl, int(count), args.no_gc)
        return 0
    for case in (["open", "awaiting"] if args.case == "both" else [args.case]):
        impls = args.impls.split(",") if args.impls else CASES[case]
        counts = tuple(int(c) for c in args.counts.split(",")) if args.counts else COUNTS[case]
        unit = "stream opened" if case == "open" else "event"
        print(f"\n{case}: instructions per {unit} (counts {counts[0]} -> {counts[1]}"
              f"{', garbage collector off' if args.no_gc else ''})\n")
        results = {impl: per_unit(case, impl, counts, args.no_gc) for impl in impls}  # type: ignore[arg-type]
        raw, ref = results.get("raw"), results.get("sse_starlette")
        print("| impl | instructions | x raw | x sse-starlette |\n|---|---:|---:|---:|")
        for impl, n in results.items():
            print(f"| {impl} | {n:,.0f} | {f'{n / raw:.2f}' if raw else ''} | {f'{n / ref:.2f}' if ref else ''} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
