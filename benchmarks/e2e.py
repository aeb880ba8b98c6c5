"""End-to-end single stream: events/s, MB/s and send() calls, every peer side by side on one server.

The server (uvicorn, uvloop + httptools, ``benchmarks/apps.py``) runs in its own
process pinned to core 0; this process is the client, pinned to core 1, reading
the raw socket until the server closes it. Server CPU per event comes from the
server process's CPU time (schedstat, ns) over the stream. ``sends`` is the
number of non-empty HTTP/1.1 chunks in the body: uvicorn writes one chunk per
``http.response.body`` message with a non-empty body, so it counts the server's
non-empty ``send()`` calls exactly (socket reads do not).

Scenarios (``--scenario``; all three by default):

- ``small``: dicts ``{"id": str(i), "data": <45 B of JSON>}``. sse-starlette and
  ``fastapi.sse`` stream 200,000 events; sse_fast and the hand loop 2,000,000
  (10x, so their timing is not a few milliseconds); the raw ceiling 10,000,000 (50x).
- ``1kib``: the same with 1 KiB of data; 20,000 / 200,000 / 1,000,000 events.
- ``sleep0``: the dicts of ``small`` from a producer that does
  ``await asyncio.sleep(0)`` before each event; 100,000 events for every row.

Rows (the same generator for every row of a scenario but ``raw``):

- ``sse-starlette``: ``EventSourceResponse(gen)`` (ping 15 s, its default);
- ``sse-starlette full contract``: ``ping=15, send_timeout=5`` (disconnect listener always on);
- ``fastapi.sse``: FastAPI's own SSE, ``response_class=fastapi.sse.EventSourceResponse``
  on a route yielding ``ServerSentEvent(raw_data=..., id=...)``. That is its full
  contract: ``: ping`` after 15 s idle, Starlette's disconnect listener; FastAPI
  has no send timeout. Events end with LF LF, not CRLF CRLF (2 bytes fewer each);
- ``sse_fast``: ``EventSourceResponse(gen)``;
- ``sse_fast+metrics``: the same, on a second server process (same core) whose
  sse_fast has its Prometheus metrics enabled (``SSE_FAST_BENCH_METRICS=1``:
  ``sse_fast.metrics.enable_metrics()``);
- ``sse_fast, metrics off``: the same, on that second server, with this stream's
  metrics off (``metrics=off``: the disabled path), so that the cost of the metrics
  (``+metrics`` against this row) is measured within one process;
- ``sse_fast full contract``: ``ping=15, send_timeout=5`` (disconnect listener always on);
- ``sse_fast bytes, full contract``: the generator yields preformatted ``bytes``;
- ``hand loop``: f-string encoding, 64 events per send, no ping, no timeout, no listener;
- ``raw ceiling``: preformatted 64-event batches (not in ``sleep0``: no producer).

Events/s is events / (request sent -> connection closed); rows with different
event counts compare by rate. Every ratio is taken within one run (best of
``--repeat``, rows interleaved).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from dataclasses import dataclass
from urllib.parse import parse_qs

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _harness import cpu_seconds, machine, pin_self, read_stream, report, server  # noqa: E402
from apps import expected_body_bytes  # noqa: E402

FULL = "ping=15&send_timeout=5"

STARLETTE = "sse-starlette"
STARLETTE_FULL = "sse-starlette full contract"
FASTAPI = "fastapi.sse"
FAST = "sse_fast"
FAST_METRICS = "sse_fast+metrics"
FAST_METRICS_OFF = "sse_fast, metrics off"
FAST_FULL = "sse_fast full contract"
FAST_BYTES = "sse_fast bytes, full contract"
HAND = "hand loop (f-string, 64/send)"
RAW = "raw ceiling (64-event batches)"


@dataclass(frozen=True)
class Row:
    """One peer: a label, the ``/stream`` query (without ``n``/``size``/``kind``) and its event count factor."""

    label: str
    query: str
    factor: int = 1  # events = scenario n x factor
    kind: str | None = None  # overrides the scenario's generator kind
    metrics: bool = False  # streamed by the server whose sse_fast metrics are enabled


@dataclass(frozen=True)
class Scenario:
    """A generator kind, a base event count and data size, and the rows that stream it."""

    key: str
    title: str
    kind: str
    n: int
    size: int
    rows: tuple[Row, ...]


_PEERS = (
    Row(STARLETTE, "impl=sse_starlette"),
    Row(STARLETTE_FULL, f"impl=sse_starlette&{FULL}"),
    Row(FASTAPI, "impl=fastapi"),
)

SCENARIOS = (
    Scenario("small", "small dict events", "dict", 200_000, 45, _PEERS + (
        Row(FAST, "impl=sse_fast", 10),
        Row(FAST_METRICS_OFF, "impl=sse_fast&metrics=off", 10, metrics=True),
        Row(FAST_METRICS, "impl=sse_fast", 10, metrics=True),
        Row(FAST_FULL, f"impl=sse_fast&{FULL}", 10),
        Row(FAST_BYTES, f"impl=sse_fast&{FULL}", 10, kind="bytes"),
        Row(HAND, "impl=hand", 10),
        Row(RAW, "impl=raw", 50),
    )),
    Scenario("1kib", "1 KiB dict events", "dict", 20_000, 1024, _PEERS + (
        Row(FAST, "impl=sse_fast", 10),
        Row(FAST_METRICS_OFF, "impl=sse_fast&metrics=off", 10, metrics=True),
        Row(FAST_METRICS, "impl=sse_fast", 10, metrics=True),
        Row(FAST_FULL, f"impl=sse_fast&{FULL}", 10),
        Row(FAST_BYTES, f"impl=sse_fast&{FULL}", 10, kind="bytes"),
        Row(HAND, "impl=hand", 10),
        Row(RAW, "impl=raw", 50),
    )),
    Scenario("sleep0", "producer awaits asyncio.sleep(0) before each event", "sleep0", 100_000, 45, _PEERS + (
        Row(FAST, "impl=sse_fast"),
        Row(FAST_METRICS_OFF, "impl=sse_fast&metrics=off", metrics=True),
        Row(FAST_METRICS, "impl=sse_fast", metrics=True),
        Row(FAST_FULL, f"impl=sse_fast&{FULL}"),
        Row(HAND, "impl=hand"),
    )),
)

MIN_EVENTS = 640  # ten 64-event batches
# sse_fast full contract against these, in this order (present rows only)
RATIO_REFS = (STARLETTE_FULL, STARLETTE, FASTAPI, HAND, RAW)


def stream_path(row: Row, sc: Scenario, n: int) -> str:
    """The request path for ``row`` in scenario ``sc`` with ``n`` events."""
    return f"/stream?{row.query}&kind={row.kind or sc.kind}&n={n}&size={sc.size}"


def measure(port: int, pid: int, row: Row, sc: Scenario, n: int) -> dict:
    """Stream ``n`` events of ``row`` once; return events/s, MB/s, sends, server CPU us/event.

    ``ok``: the body ended properly and holds at least the expected bytes (the
    events are deterministic, so their total size is known; pings only add).
    """
    c0 = cpu_seconds(pid)
    r = read_stream(port, stream_path(row, sc, n), timeout=60)
    cpu = cpu_seconds(pid) - c0
    if r.status != 200:
        raise RuntimeError(f"status {r.status} for {row.label}")
    expected = expected_body_bytes(parse_qs(row.query)["impl"][0], row.kind or sc.kind, n, sc.size)
    return {
        "n": n,
        "body_bytes": r.body_bytes,
        "expected_body_bytes": expected,
        "ok": r.body_bytes >= expected and r.complete,
        "complete": r.complete,
        "seconds": r.seconds,
        "events_per_s": n / r.seconds,
        "mb_per_s": r.body_bytes / r.seconds / 1e6,
        "sends": r.chunks,
        "events_per_send": n / r.chunks if r.chunks else 0.0,
        "server_cpu_us_per_event": cpu / n * 1e6,
        "server_cpu_share": cpu / r.seconds,
    }


def available(port: int, row: Row, sc: Scenario) -> str | None:
    """None when the row's implementation answers 200 for a 1-event stream; else the reason."""
    from _harness import http_get

    status, body = http_get(port, stream_path(row, sc, 1))
    if status == 200:
        return None
    return f"status {status}: {body.strip()[:200]}"


def select(scenarios: tuple[Scenario, ...], keys: list[str] | None, only: list[str] | None) -> list[Scenario]:
    """Scenarios whose key is in ``keys`` (all when None), rows filtered by label substrings ``only``."""
    out = []
    for sc in scenarios:
        if keys and sc.key not in keys:
            continue
        rows = tuple(r for r in sc.rows if not only or any(k in r.label for k in only))
        if rows:
            out.append(Scenario(sc.key, sc.title, sc.kind, sc.n, sc.size, rows))
    return out


def run(repeat: int = 3, scale: float = 1.0, scenarios: list[Scenario] | None = None, log=print,
        wait_import: float = 0.0) -> dict:
    """Run every row of every scenario ``repeat`` times, rows interleaved; keep each row's best events/s.

    ``scale`` multiplies every event count (``--quick``: 0.1). A row whose
    implementation does not answer 200 is skipped and reported; with
    ``wait_import`` > 0 the check is retried for that many seconds first (an
    sse_fast being rebuilt). Returns the results dict that ``table`` formats.
    """
    pin_self()
    scenarios = list(SCENARIOS) if scenarios is None else scenarios
    results: dict = {"workloads": [], "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                     "repeat": repeat, "scale": scale, "skipped": {}}
    with contextlib.ExitStack() as stack:
        plain = stack.enter_context(server())
        counted = None
        if any(row.metrics for sc in scenarios for row in sc.rows):
            # a second server, same core, idle while the other streams: sse_fast's metrics enabled
            counted = stack.enter_context(server(env={"SSE_FAST_BENCH_METRICS": "1"}))

        def srv_for(row: Row):
            return counted if row.metrics else plain

        for sc in scenarios:
            usable = []
            for row in sc.rows:
                why = available(srv_for(row).port, row, sc)
                deadline = time.monotonic() + wait_import
                while why and time.monotonic() < deadline:
                    time.sleep(5)
                    why = available(srv_for(row).port, row, sc)
                if why:
                    log(f"  skipping {sc.key} / {row.label}: {why}")
                    results["skipped"][f"{sc.key} / {row.label}"] = why
                else:
                    usable.append(row)
            counts = {row.label: max(MIN_EVENTS, int(sc.n * row.factor * scale)) for row in usable}
            for row in usable:  # warm-up: imports, allocator, code paths
                measure(srv_for(row).port, srv_for(row).pid, row, sc, min(counts[row.label], 5000))
            best: dict[str, dict] = {}
            for rep in range(repeat):
                for row in usable:
                    m = measure(srv_for(row).port, srv_for(row).pid, row, sc, counts[row.label])
                    flag = "" if m["ok"] else (f"  (INCOMPLETE: {m['body_bytes']:,} of {m['expected_body_bytes']:,} "
                                               f"bytes, complete={m['complete']})")
                    log(f"  {sc.key} #{rep + 1} {row.label:31s} {m['n']:>10,} ev {m['seconds']:7.3f} s "
                        f"{m['events_per_s']:>12,.0f} ev/s {m['mb_per_s']:7.1f} MB/s "
                        f"{m['events_per_send']:8.1f} ev/send {m['server_cpu_us_per_event']:6.2f} us/ev{flag}",
                        flush=True)
                    if row.label not in best or m["events_per_s"] > best[row.label]["events_per_s"]:
                        best[row.label] = m
            results["workloads"].append({"label": sc.key, "title": sc.title, "kind": sc.kind, "n": sc.n,
                                         "size": sc.size, "rows": [r.label for r in sc.rows], "best": best})
    return results


def ratios(best: dict[str, dict]) -> list[tuple[str, float]]:
    """``(reference label, sse_fast full contract events/s / reference events/s)`` for each present reference."""
    if FAST_FULL not in best:
        return []
    top = best[FAST_FULL]["events_per_s"]
    return [(ref, top / best[ref]["events_per_s"]) for ref in RATIO_REFS if ref in best]


def metrics_cost(best: dict[str, dict]) -> float | None:
    """Percent change of events/s with sse_fast's metrics on, in one process (negative: slower); None when a row is missing."""
    if FAST_METRICS_OFF not in best or FAST_METRICS not in best:
        return None
    return 100 * (best[FAST_METRICS]["events_per_s"] / best[FAST_METRICS_OFF]["events_per_s"] - 1)


def metrics_section(results: dict) -> str:
    """Markdown: per scenario, ``sse_fast`` with and without its Prometheus metrics, from one run."""
    out = [f"One server process with `sse_fast.metrics.enable_metrics()` (a second server on the same core "
           f"as the plain one) streams `{FAST_METRICS}` and `{FAST_METRICS_OFF}` (the same request with "
           "`sse_fast.metrics.ACTIVE` = `None` when it starts: the disabled path), rows interleaved, best of "
           f"{results.get('repeat', '?')}; `{FAST}` is the plain server's row (metrics never enabled there). "
           "Target (issue 12): metrics on at most 5% slower.", "",
           f"| scenario | events/send | `{FAST}`, events/s | metrics off, events/s | metrics on, events/s "
           "| on vs off | server CPU us/event off / on |", "|---|---:|---:|---:|---:|---:|---:|"]
    rows = 0
    for wl in results.get("workloads", []):
        best = wl["best"]
        cost = metrics_cost(best)
        if cost is None:
            continue
        off, on = best[FAST_METRICS_OFF], best[FAST_METRICS]
        plain = f"{best[FAST]['events_per_s']:,.0f}" if FAST in best else "n/a"
        out.append(f"| {wl.get('title', wl['label'])} (`{wl['label']}`) | {off['events_per_send']:.1f} | {plain} "
                   f"| {off['events_per_s']:,.0f} | {on['events_per_s']:,.0f} | {cost:+.1f}% "
                   f"| {off['server_cpu_us_per_event']:.2f} / {on['server_cpu_us_per_event']:.2f} |")
        rows += 1
    return "\n".join(out) if rows else "(not measured in this run)"


def table(results: dict) -> str:
    """Markdown: per scenario, one row per peer, then sse_fast full contract's ratios to the others."""
    out = []
    for wl in results["workloads"]:
        best = wl["best"]
        ref = best.get(STARLETTE_FULL, {}).get("events_per_s")
        ceil = best.get(RAW, {}).get("events_per_s")
        out.append(f"**{wl.get('title', wl['label'])}, {wl['size']} bytes of data** "
                   f"(best of {results['repeat']}; `{wl['label']}`)\n")
        out.append("| server | events | seconds | events/s | MB/s | sends | events/send | server CPU us/event "
                   "| x sse-starlette full contract | % of raw ceiling |")
        out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for label in wl.get("rows", list(best)):
            if label not in best:
                out.append(f"| {label} | n/a | | | | | | | | |")
                continue
            m = best[label]
            eps = m["events_per_s"]
            x = f"{eps / ref:.1f}x" if ref else ""
            pct = f"{100 * eps / ceil:.1f}%" if ceil else ""
            bad = "" if m.get("ok", True) else " (INCOMPLETE)"
            out.append(f"| {label}{bad} | {m['n']:,} | {m['seconds']:.3f} | {eps:,.0f} | {m['mb_per_s']:.1f} "
                       f"| {m['sends']:,} | {m['events_per_send']:.1f} | {m['server_cpu_us_per_event']:.2f} "
                       f"| {x} | {pct} |")
        mc = metrics_cost(best)
        if mc is not None:
            out.append("")
            out.append(f"Metrics on (`{FAST_METRICS}` vs `{FAST_METRICS_OFF}`, one server process, same run): "
                       f"{mc:+.1f}% events/s ({best[FAST_METRICS]['events_per_s']:,.0f} vs "
                       f"{best[FAST_METRICS_OFF]['events_per_s']:,.0f}).")
        rs = ratios(best)
        if rs:
            out.append("")
            out.append(f"| {FAST_FULL} vs | ratio of events/s |")
            out.append("|---|---:|")
            for label, r in rs:
                out.append(f"| {label} | {r:.2f}x{f' ({100 * r:.1f}% of it)' if label == RAW else ''} |")
        out.append("")
    if results.get("skipped"):
        out.append("Skipped: " + "; ".join(f"{k} ({v})" for k, v in results["skipped"].items()))
        out.append("")
    return "\n".join(out)


def main(argv=None) -> int:
    """Command line: parse options, run the chosen scenarios, print the table (and save JSON)."""
    ap = argparse.ArgumentParser(
        prog="python benchmarks/e2e.py",
        description="End-to-end single-stream benchmark: sse_fast vs sse-starlette vs fastapi.sse vs a "
                    "hand-written loop vs the raw ASGI ceiling, one uvicorn server pinned to core 0, "
                    "this client on core 1. Prints a Markdown table per scenario.",
        epilog="scenarios: " + "; ".join(f"{s.key} = {s.title}, {s.n:,} events x row factor" for s in SCENARIOS)
               + ". Examples: `python benchmarks/e2e.py --quick` (about 5 s); `python benchmarks/e2e.py` "
                 "(full, best of 3, about 2 minutes); `python benchmarks/e2e.py --scenario sleep0 --only "
                 "sse_fast,starlette`; `python benchmarks/e2e.py --json benchmarks/out/e2e.json`.")
    ap.add_argument("--quick", action="store_true",
                    help="a tenth of the events and one repeat (about 5 s; for checking, not for quoting)")
    ap.add_argument("--repeat", type=int, default=None, metavar="N",
                    help="runs per row, interleaved; the best is kept (default 3, 1 with --quick)")
    ap.add_argument("--scale", type=float, default=None, metavar="F",
                    help="multiply every event count by F (default 1, 0.1 with --quick)")
    ap.add_argument("--scenario", default=None, metavar="KEYS",
                    help="comma-separated scenarios to run: " + ",".join(s.key for s in SCENARIOS) + " (default all)")
    ap.add_argument("--only", default=None, metavar="SUBSTRINGS",
                    help="comma-separated substrings of row labels to run (e.g. sse_fast,starlette)")
    ap.add_argument("--wait-import", type=float, default=0.0, metavar="S",
                    help="retry a row that does not answer 200 for up to S seconds before skipping it "
                         "(e.g. sse_fast being rebuilt)")
    ap.add_argument("--list", action="store_true", help="print the scenarios and rows with their event counts, exit")
    ap.add_argument("--json", default=None, metavar="FILE", help="also write the raw results here")
    args = ap.parse_args(argv)
    keys = args.scenario.split(",") if args.scenario else None
    if keys:
        unknown = set(keys) - {s.key for s in SCENARIOS}
        if unknown:
            ap.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    scenarios = select(SCENARIOS, keys, args.only.split(",") if args.only else None)
    scale = args.scale if args.scale is not None else (0.1 if args.quick else 1.0)
    if args.list:
        for sc in scenarios:
            print(f"{sc.key}: {sc.title}, {sc.size} B of data")
            for row in sc.rows:
                print(f"  {row.label:31s} {max(MIN_EVENTS, int(sc.n * row.factor * scale)):>12,} events  "
                      f"{stream_path(row, sc, 0).replace('&n=0', '')}")
        return 0
    repeat = args.repeat or (1 if args.quick else 3)
    res = run(repeat=repeat, scale=scale, scenarios=scenarios, wait_import=args.wait_import)
    return report(res, table, args.json)


if __name__ == "__main__":
    sys.exit(main())
