"""Read pytest-benchmark JSON from ``test_bench_encoder.py``: print ns/event and check the floor.

Usage::

    python benchmarks/check_floor.py benchmarks/out/encoder.json [--floor 5] [--report-only]

Prints one row per case: ns/event for each implementation (the minimum round
time divided by the events in a round) and the speed-up over sse-starlette 3.7.
Exits with status 1 when the compiled encoder is less than ``--floor`` times
(default ``FLOOR``, 5) faster than sse-starlette's on the ``typical`` event
(both measured in the same run), 2 when the JSON lacks either timing.
``--report-only`` prints the same check against the same floor and exits 0:
``ci.sh`` uses it because its gate is ``test_floor_compiled_vs_sse_starlette``
in ``test_bench_encoder.py`` (both encoders timed interleaved in one test,
against this module's ``FLOOR``).
"""

from __future__ import annotations

import argparse
import json
import sys

ORDER = ["tiny", "typical", "multiline", "4k", "64k", "event_object", "encode_fields", "buffer64"]
IMPLS = ["compiled", "pure", "sse_starlette", "fstring"]
FLOOR = 5.0  # the compiled encoder must be this many times faster than sse-starlette's (typical event)


def ns_per_event(path: str) -> dict[str, dict[str, float]]:
    """Return ``{case: {impl: ns_per_event}}`` from a pytest-benchmark JSON file."""
    with open(path) as fh:
        doc = json.load(fh)
    out: dict[str, dict[str, float]] = {}
    for b in doc["benchmarks"]:
        info = b.get("extra_info", {})
        if "impl" not in info:
            continue
        out.setdefault(info["case"], {})[info["impl"]] = b["stats"]["min"] / info["events"] * 1e9
    return out


def table(data: dict[str, dict[str, float]], markdown: bool = True) -> str:
    """Format ``ns_per_event`` output as a Markdown table (ns/event and x sse-starlette)."""
    rows = ["| case | sse_fast compiled | sse_fast pure | sse-starlette 3.7 | f-string | compiled vs sse-starlette | pure vs sse-starlette | compiled / f-string |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for case in ORDER + sorted(set(data) - set(ORDER)):
        if case not in data:
            continue
        d = data[case]

        def cell(k, d=d):
            return f"{d[k]:,.0f}" if k in d else ""

        def ratio(a, b, d=d):
            return f"{d[b] / d[a]:.1f}x" if a in d and b in d else ""

        fs = f"{d['compiled'] / d['fstring']:.2f}" if "fstring" in d and "compiled" in d else ""
        rows.append(f"| {case} | {cell('compiled')} | {cell('pure')} | {cell('sse_starlette')} | {cell('fstring')} "
                    f"| {ratio('compiled', 'sse_starlette')} | {ratio('pure', 'sse_starlette')} | {fs} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("json", help="file written by --benchmark-json")
    ap.add_argument("--floor", type=float, default=FLOOR, help=f"minimum compiled speed-up (default {FLOOR:g})")
    ap.add_argument("--report-only", action="store_true",
                    help="print the check against the floor but exit 0 (the gate is enforced elsewhere)")
    args = ap.parse_args(argv)
    data = ns_per_event(args.json)
    print("ns/event (min round / events per round)\n")
    print(table(data))
    typ = data.get("typical", {})
    if "compiled" not in typ or "sse_starlette" not in typ:
        print("\nfloor check: typical compiled/sse_starlette timings missing", file=sys.stderr)
        return 2
    ratio = typ["sse_starlette"] / typ["compiled"]
    ok = ratio >= args.floor
    if args.report_only:
        print(f"\nfloor check (report only; gated by test_floor_compiled_vs_sse_starlette): compiled encoder "
              f"{ratio:.1f}x faster than sse-starlette on the typical event (floor {args.floor:g}x): "
              f"{'OK' if ok else 'BELOW'}")
        return 0
    print(f"\nfloor check: compiled encoder {ratio:.1f}x faster than sse-starlette on the typical event "
          f"(floor {args.floor:g}x): {'OK' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
