"""Encoder micro-benchmarks: sse_fast compiled vs pure vs sse-starlette 3.7.

Run (quick mode, a few tens of seconds)::

    pytest benchmarks/test_bench_encoder.py --benchmark-min-rounds=5 \\
        --benchmark-max-time=0.05 --benchmark-json=benchmarks/out/encoder.json
    python benchmarks/check_floor.py benchmarks/out/encoder.json

Every benchmark round calls the encoder ``INNER`` times; ``extra_info`` holds
``inner`` and ``events`` so ns/event is ``time / events``.
``test_floor_compiled_vs_sse_starlette`` times both encoders inside one test
(min of several ``timeit`` repeats, interleaved) and fails when the compiled
encoder is less than ``FLOOR`` times faster than sse-starlette's on the
``typical`` event.
"""

from __future__ import annotations

import gc
import os
import sys
import timeit

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from cases import CASES, IMPLEMENTATIONS, SEP, check_same_bytes, encoder, fstring_typical  # noqa: E402
from check_floor import FLOOR  # noqa: E402  (one floor for this test, check_floor.py and ci.sh's message)

INNER = 200


def _inner_loop(enc, item, sep, n=INNER):
    def run():
        for _ in range(n):
            enc(item, sep)

    return run


def test_same_bytes():
    """Sanity: every implementation gives the same bytes as sse-starlette."""
    check_same_bytes()


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_encode_item(benchmark, impl, case):
    """``encode_item``/``ensure_bytes`` for one item; group = case."""
    enc = encoder(impl)
    item = CASES[case]
    inner = INNER if case != "64k" else 20
    benchmark.group = f"encode:{case}"
    benchmark.extra_info.update(impl=impl, case=case, inner=inner, events=inner)
    benchmark.pedantic(_inner_loop(enc, item, SEP, inner), rounds=_rounds(benchmark), warmup_rounds=1)


def test_encode_typical_fstring(benchmark):
    """The floor for the typical case: a bare f-string with the same fields."""
    benchmark.group = "encode:typical"
    benchmark.extra_info.update(impl="fstring", case="typical", inner=INNER, events=INNER)
    benchmark.pedantic(_inner_loop(fstring_typical, CASES["typical"], SEP), rounds=_rounds(benchmark),
                       warmup_rounds=1)


@pytest.mark.parametrize("impl", ["compiled", "sse_starlette"])
def test_event_object_encode(benchmark, impl):
    """``ServerSentEvent(data, event=, id=).encode()`` for the typical fields (construct + encode)."""
    if impl == "sse_starlette":
        from sse_starlette.event import ServerSentEvent
    else:
        from sse_fast.event import ServerSentEvent
    item = CASES["typical"]
    data, event, id_ = item["data"], item["event"], item["id"]

    def run():
        for _ in range(INNER):
            ServerSentEvent(data, event=event, id=id_).encode()

    benchmark.group = "event_object:typical"
    benchmark.extra_info.update(impl=impl, case="event_object", inner=INNER, events=INNER)
    benchmark.pedantic(run, rounds=_rounds(benchmark), warmup_rounds=1)


@pytest.mark.parametrize("impl", ["compiled", "pure"])
def test_encode_fields(benchmark, impl):
    """``encode_fields(data, event, id, None, None, sep)`` for the typical fields."""
    if impl == "compiled":
        from sse_fast._encoder_c import encode_fields
    else:
        from sse_fast._encoder_py import encode_fields
    item = CASES["typical"]
    data, event, id_ = item["data"], item["event"], item["id"]

    def run():
        for _ in range(INNER):
            encode_fields(data, event, id_, None, None, SEP)

    benchmark.group = "encode_fields:typical"
    benchmark.extra_info.update(impl=impl, case="encode_fields", inner=INNER, events=INNER)
    benchmark.pedantic(run, rounds=_rounds(benchmark), warmup_rounds=1)


@pytest.mark.parametrize("impl", ["compiled", "pure"])
def test_event_buffer_batch(benchmark, impl):
    """``EventBuffer``: append 64 typical dicts, then ``take()`` (the writer's batch path)."""
    if impl == "compiled":
        from sse_fast._encoder_c import EventBuffer
    else:
        from sse_fast._encoder_py import EventBuffer
    import sse_fast.event  # noqa: F401

    item = CASES["typical"]
    buf = EventBuffer(SEP)
    append, take = buf.append, buf.take
    batches = INNER // 64 + 1

    def run():
        for _ in range(batches):
            for _ in range(64):
                append(item)
            take()

    benchmark.group = "event_buffer:typical x64"
    benchmark.extra_info.update(impl=impl, case="buffer64", inner=batches, events=batches * 64)
    benchmark.pedantic(run, rounds=_rounds(benchmark), warmup_rounds=1)


def _rounds(benchmark) -> int:
    """Rounds for pedantic mode from --benchmark-max-time/min-rounds (pedantic ignores them)."""
    bs = benchmark._min_rounds if hasattr(benchmark, "_min_rounds") else 5
    max_time = getattr(benchmark, "_max_time", 1.0)
    # a round is ~INNER encodes of at most a few microseconds: ~0.1-2 ms
    return max(bs, min(200, int(max_time / 0.001)))


def _best_ns(fn, item, number: int, repeat: int) -> float:
    t = timeit.Timer(lambda: fn(item, SEP))
    return min(t.repeat(repeat=repeat, number=number)) / number * 1e9


def test_floor_compiled_vs_sse_starlette():
    """CI floor: compiled encoder >= FLOOR x sse-starlette's on the typical event, same run."""
    item = CASES["typical"]
    compiled = encoder("compiled")
    starlette = encoder("sse_starlette")
    gc.collect()
    best_c = best_s = float("inf")
    for _ in range(5):  # interleave so a noisy neighbour hits both
        best_c = min(best_c, _best_ns(compiled, item, 2000, 3))
        best_s = min(best_s, _best_ns(starlette, item, 500, 3))
    ratio = best_s / best_c
    print(f"\ntypical event: compiled {best_c:.0f} ns, sse-starlette {best_s:.0f} ns, ratio {ratio:.1f}x")
    assert ratio >= FLOOR, f"compiled encoder only {ratio:.1f}x faster than sse-starlette (floor {FLOOR}x)"
