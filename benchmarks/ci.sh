#!/usr/bin/env bash
# CI: the encoder micro-benchmarks in quick mode, JSON kept in benchmarks/out/,
# and the floor gate (compiled encoder >= check_floor.FLOOR = 5x sse-starlette's, timed
# side by side in one test: test_floor_compiled_vs_sse_starlette). The parser benchmark runs once
# per case as a smoke check, and so do the cases of instructions.py.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p benchmarks/out
python -m pytest benchmarks/test_bench_encoder.py -q -p no:cacheprovider \
    --benchmark-min-rounds=5 --benchmark-max-time=0.05 \
    --benchmark-json=benchmarks/out/encoder.json
# the table, and the same floor (check_floor.FLOOR) checked on these timings, as a report: the gate is the
# test above, which times both encoders interleaved in one process
python benchmarks/check_floor.py benchmarks/out/encoder.json --report-only
python -m pytest benchmarks/bench_parser.py -q -p no:cacheprovider --benchmark-disable
# the instruction-count benchmark's cases, run once each without valgrind (a smoke check: CI has no valgrind)
for case_impl in "open raw" "open sse_fast" "open sse_starlette" "awaiting raw" "awaiting hand" "awaiting sse_fast" \
        "awaiting sse_starlette"; do
    set -- $case_impl
    python benchmarks/instructions.py --child "$1" "$2" 20
done
echo "instructions.py cases ran"
