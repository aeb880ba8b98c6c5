"""Profile the server side of one stream (or of the fan-out load) with py-spy.

Starts the benchmark server (pinned to core 0), attaches ``py-spy record`` to it,
drives the load from this process (core 1) and prints the hottest functions:
self time (the frame on top of the stack) and inclusive time, as shares of the
samples. The raw collapsed stacks are kept in ``benchmarks/out/profile-*.txt``
(feed them to any flame-graph tool).

Usage::

    pip install py-spy
    python benchmarks/profile_stream.py                       # sse_fast, full contract, dict items
    python benchmarks/profile_stream.py --query "impl=sse_fast&kind=bytes&ping=15&send_timeout=5"
    python benchmarks/profile_stream.py --fanout --impl sse_fast --seconds 10

Needs ptrace permission on the server process (root, or ``kernel.yama.ptrace_scope=0``).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from _harness import pin_self, read_stream, server  # noqa: E402


def summarize(path: str, top: int = 25) -> str:
    """Top functions by self and inclusive share of samples from py-spy's raw (collapsed) output."""
    self_c: collections.Counter = collections.Counter()
    incl: collections.Counter = collections.Counter()
    total = 0
    with open(path) as fh:
        for line in fh:
            stack, _, n = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            k = int(n)
            total += k
            frames = [f.split(" (")[0] + " (" + f.split(" (", 1)[1].rsplit(":", 1)[0].split("/")[-1] + ")"
                      if " (" in f else f for f in stack.split(";")]
            self_c[frames[-1]] += k
            for f in set(frames):
                incl[f] += k
    lines: collections.Counter = collections.Counter()
    with open(path) as fh:
        for line in fh:
            stack, _, n = line.rstrip("\n").rpartition(" ")
            if stack:
                leaf = stack.split(";")[-1]
                lines[leaf.split(" (")[0] + " " + leaf.rsplit("/", 1)[-1].rstrip(")")] += int(n)
    out = [f"{total} samples", "", "self %  function (file)"]
    out += [f"{100 * c / total:6.1f}  {f}" for f, c in self_c.most_common(top)]
    out += ["", "incl %  function (file)"]
    out += [f"{100 * c / total:6.1f}  {f}" for f, c in incl.most_common(top)]
    out += ["", "self %  function file:line (the line on top of the stack)"]
    out += [f"{100 * c / total:6.1f}  {f}" for f, c in lines.most_common(top)]
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="py-spy profile of the benchmark server")
    ap.add_argument("--query", default="impl=sse_fast&kind=dict&ping=15&send_timeout=5")
    ap.add_argument("--n", type=int, default=3_000_000, help="events per stream (long enough to sample)")
    ap.add_argument("--size", type=int, default=45)
    ap.add_argument("--seconds", type=float, default=8.0, help="py-spy duration")
    ap.add_argument("--fanout", action="store_true", help="profile the fan-out load instead")
    ap.add_argument("--impl", default="sse_fast", help="for --fanout")
    ap.add_argument("--streams", type=int, default=1000, help="for --fanout")
    ap.add_argument("--rate", type=int, default=997)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--native", action="store_true", help="py-spy --native: show C/Cython frames")
    args = ap.parse_args(argv)
    spy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    os.makedirs(os.path.join(HERE, "out"), exist_ok=True)
    tag = f"fanout-{args.impl}" if args.fanout else args.query.replace("&", "_").replace("=", "-")
    raw = os.path.join(HERE, "out", f"profile-{tag}.txt")
    pin_self()
    if args.fanout:
        import fanout

        procs = []

        def start(pid: int) -> None:
            cmd = [spy, "record", "--pid", str(pid), "--rate", str(args.rate), "--format", "raw",
                   "--duration", str(int(args.seconds)), "--output", raw] + (["--native"] if args.native else ["--nonblocking"])
            procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))

        asyncio.run(fanout.measure_impl(args.impl, args.streams, args.seconds + 1, 0.1, 100, on_start=start))
        err = procs[0].communicate(timeout=30)[1]
        if procs[0].returncode:
            print(err.decode(errors="replace"), file=sys.stderr)
            return 1
        print(f"\nprofile of fan-out, {args.impl}, {args.streams} streams (raw stacks: {raw})\n")
        print(summarize(raw, args.top))
        return 0
    with server() as srv:
        cmd = [spy, "record", "--pid", str(srv.pid), "--rate", str(args.rate), "--format", "raw",
               "--duration", str(int(args.seconds)), "--output", raw] + (["--native"] if args.native else ["--nonblocking"])
        read_stream(srv.port, f"/stream?{args.query}&n=10000&size={args.size}")  # warm-up: imports
        spy_proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(0.5)
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < args.seconds:
            r = read_stream(srv.port, f"/stream?{args.query}&n={args.n}&size={args.size}")
            print(f"  streamed {args.n:,} events in {r.seconds:.2f} s ({args.n / r.seconds:,.0f} ev/s)")
        err = spy_proc.communicate(timeout=args.seconds + 30)[1]
        if spy_proc.returncode:
            print(err.decode(errors="replace"), file=sys.stderr)
            return 1
    print(f"\nprofile of {args.query} (raw stacks: {raw})\n")
    print(summarize(raw, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
