"""End-to-end single stream: events/s and MB/s, every peer side by side on one server.

The server (uvicorn, uvloop + httptools, ``benchmarks/apps.py``) runs in its own
process pinned to core 0; this process is the client, pinned to core 1, reading
the raw socket until the server closes it. Server CPU per event comes from the
server process's CPU time (schedstat, ns) over the stream.

Usage::

    python benchmarks/e2e.py                 # 200,000 small + 20,000 1-KiB events, best of 3
    python benchmarks/e2e.py --quick         # a tenth of the events, best of 1 (development)
    python benchmarks/e2e.py --json out.json

Rows (same generator for every row but ``raw``):

- ``sse-starlette``: ``EventSourceResponse(gen)`` (ping 15 s, its default);
- ``sse-starlette send_timeout=5``;
- ``sse_fast``: ``EventSourceResponse(gen)``;
- ``sse_fast full contract``: ``ping=15, send_timeout=5`` (disconnect listener always on);
- ``sse_fast bytes, full contract``: the generator yields preformatted ``bytes``;
- ``hand loop``: f-string encoding, 64 events per send, no features;
- ``raw ceiling``: preformatted 64-event batches.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _harness import cpu_seconds, machine, pin_self, read_stream, report, server  # noqa: E402

ROWS = [
    # (label, query without n/size)
    ("sse-starlette", "impl=sse_starlette&kind=dict"),
    ("sse-starlette send_timeout=5", "impl=sse_starlette&kind=dict&send_timeout=5"),
    ("sse_fast", "impl=sse_fast&kind=dict"),
    ("sse_fast full contract", "impl=sse_fast&kind=dict&ping=15&send_timeout=5"),
    ("sse_fast bytes, full contract", "impl=sse_fast&kind=bytes&ping=15&send_timeout=5"),
    ("hand loop (f-string, 64/send)", "impl=hand"),
    ("raw ceiling (64-event batches)", "impl=raw"),
]

WORKLOADS = [
    # (label, n, size in bytes of data)
    ("small", 200_000, 45),
    ("1 KiB", 20_000, 1024),
]


def measure(port: int, pid: int, query: str, n: int, size: int) -> dict:
    """Stream ``n`` events once; return events/s, MB/s, server CPU us/event."""
    c0 = cpu_seconds(pid)
    r = read_stream(port, f"/stream?{query}&n={n}&size={size}", timeout=60)
    cpu = cpu_seconds(pid) - c0
    if r.status != 200:
        raise RuntimeError(f"status {r.status} for {query}")
    events = r.blank_lines - 2  # the header block end and the last chunk
    return {
        "events": events,
        "ok": events >= n,
        "seconds": r.seconds,
        "events_per_s": n / r.seconds,
        "mb_per_s": r.nbytes / r.seconds / 1e6,
        "server_cpu_us_per_event": cpu / n * 1e6,
        "server_cpu_share": cpu / r.seconds,
    }


def available(port: int, query: str) -> str | None:
    """None when the row's implementation answers; else the reason (e.g. sse_fast not importable)."""
    from _harness import http_get

    status, body = http_get(port, f"/stream?{query}&n=1&size=8")
    return None if status == 200 else body.strip()


def run(repeat: int = 3, scale: float = 1.0, rows=ROWS, workloads=WORKLOADS, log=print) -> dict:
    """Run every row x workload ``repeat`` times, interleaved; keep each one's best events/s."""
    pin_self()
    results: dict = {"rows": [r[0] for r in rows], "workloads": [], "machine": machine(),
                     "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "repeat": repeat}
    with server() as srv:
        usable = []
        for label, query in rows:
            why = available(srv.port, query)
            if why:
                log(f"  skipping {label}: {why}")
            else:
                usable.append((label, query))
        for wl_label, n, size in workloads:
            n = max(BATCH_MIN, int(n * scale))
            best: dict[str, dict] = {}
            for _label, query in usable:  # warm-up: imports, allocator, code paths
                measure(srv.port, srv.pid, query, min(n, 5000), size)
            for rep in range(repeat):
                for label, query in usable:
                    m = measure(srv.port, srv.pid, query, n, size)
                    log(f"  {wl_label} #{rep + 1} {label:32s} {m['events_per_s']:>12,.0f} ev/s "
                        f"{m['mb_per_s']:8.1f} MB/s  {m['server_cpu_us_per_event']:7.2f} us/ev"
                        f"{'' if m['ok'] else '  (EVENTS MISSING: ' + str(m['events']) + ')'}")
                    if label not in best or m["events_per_s"] > best[label]["events_per_s"]:
                        best[label] = m
            results["workloads"].append({"label": wl_label, "n": n, "size": size, "best": best})
    return results


BATCH_MIN = 640


def table(results: dict) -> str:
    """Markdown table: one block per workload, ratios vs sse-starlette and the raw ceiling."""
    out = []
    for wl in results["workloads"]:
        best = wl["best"]
        ref = best.get("sse-starlette", {}).get("events_per_s")
        ceil = best.get("raw ceiling (64-event batches)", {}).get("events_per_s")
        out.append(f"**{wl['n']:,} events of {wl['size']} bytes of data** (best of {results['repeat']})\n")
        out.append("| server | events/s | MB/s | server CPU us/event | x sse-starlette | % of raw ceiling |")
        out.append("|---|---:|---:|---:|---:|---:|")
        for label in results["rows"]:
            if label not in best:
                out.append(f"| {label} | n/a | | | | |")
                continue
            m = best[label]
            eps = m["events_per_s"]
            out.append(f"| {label} | {eps:,.0f} | {m['mb_per_s']:.1f} | {m['server_cpu_us_per_event']:.2f} | "
                       f"{eps / ref:.1f}x | {100 * eps / ceil:.1f}% |" if ref and ceil else
                       f"| {label} | {eps:,.0f} | {m['mb_per_s']:.1f} | {m['server_cpu_us_per_event']:.2f} | | |")
        out.append("")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="end-to-end single-stream benchmark")
    ap.add_argument("--quick", action="store_true", help="a tenth of the events, one repeat")
    ap.add_argument("--repeat", type=int, default=None)
    ap.add_argument("--only", default=None, help="comma-separated substrings of row labels to run")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    rows = ROWS
    if args.only:
        keys = args.only.split(",")
        rows = [r for r in ROWS if any(k in r[0] for k in keys)]
    repeat = args.repeat or (1 if args.quick else 3)
    res = run(repeat=repeat, scale=0.1 if args.quick else 1.0, rows=rows)
    return report(res, table, args.json)


if __name__ == "__main__":
    sys.exit(main())
