#!/usr/bin/env bash
# The test command (README and .ci/run): sets everything up from scratch in
# .venv-test, builds the Cython extensions (a failed compile is fatal here), and
# runs the whole suite, sse-starlette's own suite through the import shim, the
# encoder benchmarks in quick mode, lint and a smoke load. Exits non-zero when
# anything fails.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

# Debian's Chromium (the browser test) and redis-server (the Redis backend's tests start it
# on a free port); root on CI; skipped when present
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "missing and not root: install Debian's packages: ${missing[*]}" >&2
        exit 1
    fi
fi

rm -rf .venv-test build
"$PY" -m venv .venv-test
. .venv-test/bin/activate
python -m pip install -q -U pip
# editable: the compiled twins land in sse_fast/, where the tests import them
SSE_FAST_REQUIRE_EXTENSIONS=1 python -m pip install -q -e ".[test,bench,lint]"

python - <<'PY'
import sse_fast, sse_fast._encoder_c, sse_fast._parser_c
assert sse_fast.IMPLEMENTATION == "cython", sse_fast.IMPLEMENTATION
print("compiled twins built:", sse_fast.IMPLEMENTATION)
PY

ruff check sse_fast tests benchmarks locustfiles compat

# the whole suite: every twin-pair test runs on both twins
python -m pytest -q tests

# the pure twins alone, as on a machine without a compiler (compiled cases deselected)
SSE_FAST_NO_EXTENSIONS=1 python -m pytest -q tests/test_api.py tests/test_encoder.py tests/test_response.py tests/test_parser.py

# sse-starlette 3.7.0's own test suite (fetched from PyPI) run against sse_fast through an
# import shim; compat/expected_failures.txt lists, with reasons, what is expected to fail
python -m pip install -q -r compat/requirements.txt
python compat/sse_starlette_suite.py
SSE_FAST_NO_EXTENSIONS=1 python compat/sse_starlette_suite.py

# encoder benchmarks, quick mode, JSON kept; the compiled encoder must beat sse-starlette's by >= 5x
if [ -x benchmarks/ci.sh ]; then bash benchmarks/ci.sh; fi

# a short locust load against the demo
if [ -f .ci/smoke_load.sh ]; then bash .ci/smoke_load.sh; fi

echo "all checks passed"
