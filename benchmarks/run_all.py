"""Run every benchmark and write ``benchmarks/RESULTS.md``.

Usage::

    python benchmarks/run_all.py                 # the full run (~6-8 minutes on 2 cores)
    python benchmarks/run_all.py --quick         # smaller loads, for checking the harness
    python benchmarks/run_all.py --note "other jobs were running"

Parts, in order: encoder micro-benchmarks (pytest-benchmark, JSON in
``benchmarks/out/encoder.json``), end-to-end single stream (``e2e.py``), many
idle streams (``many_streams.py``), fan-out (``fanout.py``). Raw results go to
``benchmarks/out/*.json``; the Markdown report (tables, headline ratios against
the targets of issue 3, machine, versions, date, load average) to
``benchmarks/RESULTS.md`` (``--out`` to change).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import check_floor  # noqa: E402
import e2e  # noqa: E402
import fanout  # noqa: E402
import many_streams  # noqa: E402
from _harness import ROOT, machine  # noqa: E402

OUT = os.path.join(HERE, "out")


def run_encoder(quick: bool) -> dict:
    """Run ``test_bench_encoder.py`` under pytest-benchmark; return ``{case: {impl: ns/event}}``."""
    path = os.path.join(OUT, "encoder.json")
    args = ["--benchmark-min-rounds=5", "--benchmark-max-time=0.05"] if quick else \
        ["--benchmark-min-rounds=20", "--benchmark-max-time=0.5"]
    cmd = [sys.executable, "-m", "pytest", os.path.join(HERE, "test_bench_encoder.py"), "-q", "-p",
           "no:cacheprovider", "--benchmark-columns=min,median,rounds", f"--benchmark-json={path}", *args]
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        cmd = ["taskset", "-c", "1"] + cmd
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return check_floor.ns_per_event(path)


def _get(d, *keys, default=None):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return default
        d = d[k]
    return d


def headline(enc: dict, e2e_res: dict, many: dict, fan: dict) -> list[tuple[str, str, str, str]]:
    """Rows ``(what, target, measured, met?)`` for the targets of issues 3, 8 and 12."""
    rows = []

    def verdict(ok):
        return "n/a" if ok is None else ("yes" if ok else "**no**")

    t = enc.get("typical", {})
    if "compiled" in t and "sse_starlette" in t:
        r = t["sse_starlette"] / t["compiled"]
        rows.append(("encoder, typical event: compiled vs sse-starlette", ">= 20x", f"{r:.1f}x", verdict(r >= 20)))
    if "compiled" in t and "fstring" in t:
        r = t["compiled"] / t["fstring"]
        rows.append(("encoder, typical event: compiled / bare f-string", "<= 2", f"{r:.2f}", verdict(r <= 2)))
    small = next((w for w in e2e_res.get("workloads", []) if w["label"] == "small"), None)
    if small:
        b = small["best"]

        def eps(label):
            return _get(b, label, "events_per_s")

        full, ref = eps("sse_fast full contract"), eps("sse-starlette full contract")
        hand, raw, byts = eps("hand loop (f-string, 64/send)"), eps("raw ceiling (64-event batches)"), \
            eps("sse_fast bytes, full contract")
        n = _get(b, "sse_fast full contract", "n", default=small["n"])
        if full and ref:
            rows.append((f"one stream, {n:,} dicts, full contract: vs sse-starlette full contract (issue 8)",
                         ">= 40x", f"{full / ref:.1f}x", verdict(full / ref >= 40)))
        if full and hand:
            rows.append((f"one stream, {n:,} dicts, full contract: vs hand-written loop (issue 8)", ">= 1.5x",
                         f"{full / hand:.2f}x", verdict(full / hand >= 1.5)))
        if byts and raw:
            rows.append(("one stream, preformatted bytes, full contract: share of raw ceiling", ">= 50%",
                         f"{100 * byts / raw:.0f}%", verdict(byts / raw >= 0.5)))
    for wl in e2e_res.get("workloads", []):
        cost = e2e.metrics_cost(wl["best"])
        if cost is not None:
            rows.append((f"metrics on vs off, one stream, {wl['label']} (issue 12)", ">= -5%",
                         f"{cost:+.1f}%", verdict(cost >= -5)))
    s0 = next((w for w in e2e_res.get("workloads", []) if w["label"] == "sleep0"), None)
    if s0:
        full = _get(s0["best"], "sse_fast full contract", "events_per_s")
        ref = _get(s0["best"], "sse-starlette full contract", "events_per_s")
        if full and ref:
            rows.append(("producer awaiting asyncio.sleep(0) per event: vs sse-starlette full contract (report)",
                         "report", f"{full / ref:.1f}x ({full:,.0f} vs {ref:,.0f} events/s)", "n/a"))
    by = {r["impl"]: {p["streams"]: p for p in r["points"]} for r in many.get("results", [])}
    top = max(many.get("counts", [0]))
    a, s = _get(by, "sse_fast", top), _get(by, "sse_starlette", top)
    if a:
        rows.append((f"{top:,} idle streams: RSS per stream", "<= 18 KiB", f"{a['rss_kib_per_stream']:.1f} KiB",
                     verdict(a["rss_kib_per_stream"] <= 18)))
    if a and s:
        r = a["open_cpu_ms_per_stream"] / s["open_cpu_ms_per_stream"]
        rows.append((f"{top:,} idle streams: CPU per stream opened vs sse-starlette", "<= 0.33", f"{r:.2f}",
                     verdict(r <= 1 / 3)))
        if s.get("idle_cpu_percent"):
            r = a["idle_cpu_percent"] / s["idle_cpu_percent"]
            rows.append((f"{top:,} idle streams: idle CPU vs sse-starlette", "<= 0.33", f"{r:.2f}",
                         verdict(r <= 1 / 3)))
    fb = {r["impl"]: r for r in fan.get("results", [])}
    a, s = fb.get("sse_fast"), fb.get("sse_starlette")
    if a and s:
        r = a["p99_ms"] / s["p99_ms"]
        rows.append((f"fan-out {fan['streams']:,} x {1 / fan['interval']:g}/s: p99 latency vs sse-starlette",
                     "<= 0.25", f"{r:.2f} ({a['p99_ms']:.1f} vs {s['p99_ms']:.1f} ms)", verdict(r <= 0.25)))
        r = a["server_cpu_percent"] / s["server_cpu_percent"]
        rows.append((f"fan-out {fan['streams']:,} x {1 / fan['interval']:g}/s: server CPU vs sse-starlette",
                     "<= 0.33", f"{r:.2f} ({a['server_cpu_percent']:.0f}% vs {s['server_cpu_percent']:.0f}%)",
                     verdict(r <= 1 / 3)))
    return rows


def loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def write_report(path: str, enc, e2e_res, many, fan, quick: bool, note: str, load_before: str,
                 load_after: str, started: str, cmd: str) -> None:
    m = machine()
    lines = ["# sse_fast benchmark results", "",
             f"Generated by `{cmd}` on {started}{' (QUICK mode: small loads, not for quoting)' if quick else ''}.",
             "Every figure in a table was measured in this one run, peers side by side; absolute numbers drift "
             "between runs, the ratios hold.", ""]
    if note:
        lines += [f"**Note:** {note}", ""]
    lines += [f"Load average (1, 5, 15 min) before: {load_before}; after: {load_after}.", "",
              "## Machine and versions", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in m.items()]
    lines += ["", "Server: uvicorn with uvloop + httptools, no access log, in its own process pinned to core 0 "
              "(`taskset -c 0`); client: another process pinned to core 1, reading raw sockets.", "",
              "## Headline (targets of issues 3, 8 and 12)", "", "| what | target | measured | met |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in headline(enc, e2e_res, many, fan)]
    lines += ["", "## Encoder micro-benchmarks", "",
              "ns per event (minimum round time / events per round; `pytest benchmarks/test_bench_encoder.py`). "
              "Cases: tiny = `\"hello\"`; typical = dict with id, event and 60 bytes of JSON data; multiline = "
              "5 data lines; 4k / 64k = dict with 4 KiB / 64 KiB of data. event_object = "
              "`ServerSentEvent(data, event=, id=).encode()`; encode_fields = the field encoder alone; buffer64 = "
              "`EventBuffer.append` x 64 + `take()`, per event.", "", check_floor.table(enc), "",
              "## End-to-end, one stream", "",
              "Each row of a scenario streams the same generator (`{\"id\": str(i), \"data\": ...}` dicts) "
              "through one server; `raw ceiling` sends preformatted 64-event batches. Fast rows stream more events "
              "(see `events`); compare rates. `sends` = non-empty HTTP chunks = the server's non-empty body "
              "`send()` calls. Server CPU from the server process's `/proc/PID/task/*/schedstat` (ns). "
              "Details: `python benchmarks/e2e.py --help`.", "", e2e.table(e2e_res), "",
              "## Metrics on and off", "", e2e.metrics_section(e2e_res), "",
              "## Many idle streams", "", many_streams.table(many), "",
              "## Fan-out", "",
              "One broadcaster task puts each event on every client's `asyncio.Queue`; latency = client receive "
              "time - server `time.time()` in the data (same machine clock).", "", fanout.table(fan), "",
              "## Reproducing", "", "```", "pip install -e '.[bench]'   # builds the Cython encoder",
              "python benchmarks/run_all.py          # writes benchmarks/RESULTS.md", "```", "",
              "Parts alone: `python benchmarks/e2e.py`, `python benchmarks/many_streams.py`, "
              "`python benchmarks/fanout.py` (each takes `--quick` and `--json FILE`); encoder: "
              "`pytest benchmarks/test_bench_encoder.py --benchmark-json=benchmarks/out/encoder.json && "
              "python benchmarks/check_floor.py benchmarks/out/encoder.json`.", ""]
    lines += _kept_sections(path)
    with open(path, "w") as fh:
        fh.write("\n".join(lines))


#: sections of RESULTS.md that run_all does not measure (they need a redis-server, and take minutes):
#: kept as they are when the file is rewritten; each names its own command
KEPT_SECTIONS = ("## Broadcast over Redis",)


def _kept_sections(path: str) -> list[str]:
    """The ``KEPT_SECTIONS`` of the existing file at ``path``, as lines (empty when there is none)."""
    try:
        with open(path) as fh:
            old = fh.read().split("\n")
    except OSError:
        return []
    out: list[str] = []
    keep = False
    for line in old:
        if line.startswith("## "):
            keep = line.startswith(KEPT_SECTIONS)
        if keep:
            out.append(line)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="run every benchmark, write benchmarks/RESULTS.md")
    ap.add_argument("--quick", action="store_true", help="small loads (harness check, not for quoting)")
    ap.add_argument("--note", default="", help="a line for the report (e.g. other work running)")
    ap.add_argument("--out", default=os.path.join(HERE, "RESULTS.md"))
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: encoder,e2e,many,fanout")
    args = ap.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    os.makedirs(OUT, exist_ok=True)
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    load_before = loadavg()
    enc = e2e_res = many = fan = {}
    if "encoder" not in skip:
        print("== encoder", flush=True)
        enc = run_encoder(args.quick)
        print(check_floor.table(enc), flush=True)
    if "e2e" not in skip:
        print("== end-to-end, one stream", flush=True)
        e2e_res = e2e.run(repeat=1 if args.quick else 3, scale=0.1 if args.quick else 1.0)
        print(e2e.table(e2e_res), flush=True)
    if "many" not in skip:
        print("== many idle streams", flush=True)
        many = many_streams.run([200, 1000] if args.quick else [1000, 5000], 15.0 if args.quick else 30.0)
        print(many_streams.table(many), flush=True)
    if "fanout" not in skip:
        print("== fan-out", flush=True)
        fan = fanout.run(300 if args.quick else 1000, 6.0 if args.quick else 20.0)
        print(fanout.table(fan), flush=True)
    for name, obj in (("e2e", e2e_res), ("many_streams", many), ("fanout", fan)):
        if obj:
            with open(os.path.join(OUT, f"{name}.json"), "w") as fh:
                json.dump(obj, fh, indent=1)
    cmd = "python benchmarks/run_all.py" + (" --quick" if args.quick else "")
    write_report(args.out, enc, e2e_res, many, fan, args.quick, args.note, load_before, loadavg(), started, cmd)
    print(f"wrote {args.out}")
    for row in headline(enc, e2e_res, many, fan):
        print(" | ".join(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
