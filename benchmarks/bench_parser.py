"""Parser speed: sse_fast's event stream parser (compiled, pure) vs httpx-sse 0.4.

The stream: ``SIZE_MB`` (default 10) MB of typical events (``id`` + ``event`` +
~60 B of compact JSON ``data``, CRLF line ends, as ``EventSourceResponse``
sends them), cut into 64 KiB chunks (one socket read each).

Run with pytest-benchmark (``events/s`` = ``extra_info["events"] / min``)::

    pytest benchmarks/bench_parser.py --benchmark-min-rounds=3 \\
        --benchmark-json=benchmarks/out/parser.json
    pytest benchmarks/bench_parser.py --benchmark-disable   # CI quick mode: each case once

or as a script that prints an events/s table (min of 5 runs per case)::

    python benchmarks/bench_parser.py

Cases:
- ``sse_fast-cython`` / ``sse_fast-python``: ``EventStreamParser.feed`` on the
  bytes, building an ``Event`` per event;
- ``...-count``: ``feed_count`` (no ``Event`` built, data not decoded);
- ``httpx-sse-decoder``: httpx-sse's own line and event decoders on text
  decoded incrementally (what ``iter_sse`` does, minus httpx);
- ``httpx-sse-iter_sse`` / ``sse_fast-iter_events``: the public APIs on the
  same in-memory ``httpx.Response`` (httpx's byte stream included).
"""

from __future__ import annotations

import codecs
import json
import os
import sys
import time

import httpx
import httpx_sse
import pytest
from httpx_sse._decoders import SSEDecoder, SSELineDecoder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from sse_fast import ServerSentEvent  # noqa: E402
from sse_fast import _parser_py as parser_py  # noqa: E402
from sse_fast.client import iter_events  # noqa: E402

try:
    from sse_fast import _parser_c as parser_c
except ImportError:  # reported by the compiled cases as a failure, never skipped
    parser_c = None

SIZE_MB = float(os.environ.get("SSE_FAST_BENCH_MB", "10"))
CHUNK = 64 * 1024


def make_stream(size_mb: float = SIZE_MB) -> tuple[bytes, int]:
    """Return ``(stream bytes, number of events)`` of about ``size_mb`` MB of typical events."""
    target = int(size_mb * 1_000_000)
    parts = []
    total = 0
    n = 0
    while total < target:
        data = json.dumps(
            {"n": n, "t": 1763900000.123456 + n, "user": "u42", "ok": True}, separators=(",", ":")
        )
        b = ServerSentEvent(data, id=str(n), event="update").encode()
        parts.append(b)
        total += len(b)
        n += 1
    return b"".join(parts), n


STREAM, EVENTS = make_stream()
CHUNKS = [STREAM[i : i + CHUNK] for i in range(0, len(STREAM), CHUNK)]


def _parser_cls(name: str):
    if name == "cython":
        if parser_c is None:
            raise ImportError(
                "sse_fast._parser_c is not built: python setup.py build_ext --inplace"
            )
        return parser_c.EventStreamParser
    return parser_py.EventStreamParser


def run_feed(name: str) -> int:
    p = _parser_cls(name)()
    n = 0
    for c in CHUNKS:
        n += len(p.feed(c))
    return n


def run_feed_count(name: str) -> int:
    p = _parser_cls(name)()
    n = 0
    for c in CHUNKS:
        n += p.feed_count(c)
    return n


def run_httpx_sse_decoder() -> int:
    text = codecs.getincrementaldecoder("utf-8")()
    lines = SSELineDecoder()
    dec = SSEDecoder()
    n = 0
    for c in CHUNKS:
        for line in lines.decode(text.decode(c)):
            if dec.decode(line) is not None:
                n += 1
    return n


def _response() -> httpx.Response:
    return httpx.Response(
        200, headers={"content-type": "text/event-stream; charset=utf-8"}, content=iter(CHUNKS)
    )


def run_httpx_sse_iter_sse() -> int:
    return sum(1 for _ in httpx_sse.EventSource(_response()).iter_sse())


def run_iter_events() -> int:
    return sum(1 for _ in iter_events(_response()))


CASES = {
    "sse_fast-cython": lambda: run_feed("cython"),
    "sse_fast-python": lambda: run_feed("python"),
    "sse_fast-cython-count": lambda: run_feed_count("cython"),
    "sse_fast-python-count": lambda: run_feed_count("python"),
    "httpx-sse-decoder": run_httpx_sse_decoder,
    "sse_fast-iter_events": run_iter_events,
    "httpx-sse-iter_sse": run_httpx_sse_iter_sse,
}


@pytest.mark.parametrize("case", list(CASES))
def test_parse_stream(benchmark, case):
    """Parse the whole stream once per round; every case must see every event."""
    fn = CASES[case]
    benchmark.group = f"parse {len(STREAM) / 1e6:.1f} MB typical events"
    benchmark.extra_info.update(case=case, events=EVENTS, bytes=len(STREAM), chunk=CHUNK)
    count = benchmark.pedantic(fn, rounds=_rounds(benchmark), warmup_rounds=0, iterations=1)
    assert count == EVENTS


def _rounds(benchmark) -> int:
    # honour --benchmark-min-rounds (default 5 is too many for a 10 MB parse)
    return max(1, min(getattr(benchmark, "_min_rounds", 3), 5))


def main(repeat: int = 5) -> None:
    print(
        f"stream: {len(STREAM) / 1e6:.1f} MB, {EVENTS} events, {CHUNK} B chunks; python {sys.version.split()[0]}"
    )
    print(f"{'case':28} {'events/s':>12} {'MB/s':>8} {'ns/event':>9}")
    for name, fn in CASES.items():
        best = float("inf")
        for _ in range(repeat):
            t0 = time.perf_counter()
            count = fn()
            best = min(best, time.perf_counter() - t0)
        assert count == EVENTS, (name, count)
        print(
            f"{name:28} {EVENTS / best:12,.0f} {len(STREAM) / best / 1e6:8.1f} {best / EVENTS * 1e9:9.0f}"
        )


if __name__ == "__main__":
    main()
