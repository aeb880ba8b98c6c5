#!/usr/bin/env bash
# CI smoke load: ~200 event streams for 15 s against the demo app (sse_fast backend).
# Fails (non-zero exit) on any locust failure, or when no events were received.
#
# Usage: .ci/smoke_load.sh   (override with PYTHON=/path/to/python USERS=200 DURATION=15,
#        LOCUST_ARGS="--sse-path /fanout?interval=0.05" for extra locust arguments)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
USERS="${USERS:-200}"
DURATION="${DURATION:-15}"
OUT="reports/loadtest/smoke"
mkdir -p "$OUT"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

PORT="$("$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
"$PYTHON" -m sse_fast demo --host 127.0.0.1 --port "$PORT" --backend sse_fast >"$OUT/server.log" 2>&1 &
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  if "$PYTHON" -c "import socket,sys; socket.create_connection(('127.0.0.1', $PORT), 0.2)" 2>/dev/null; then
    break
  fi
  kill -0 "$SERVER" 2>/dev/null || { echo "demo server exited:"; cat "$OUT/server.log"; exit 1; }
  sleep 0.1
done

# fan-out: every stream gets the broadcast (10 events/s each), delivery latency measured
status=0
PYTHONUNBUFFERED=1 "$PYTHON" -m locust -f locustfiles/fanout.py --host "http://127.0.0.1:$PORT" \
  --headless -u "$USERS" -r 100 -t "${DURATION}s" \
  --csv "$OUT/smoke" --html "$OUT/smoke.html" --json-file "$OUT/smoke" \
  --exit-code-on-error 1 --only-summary ${LOCUST_ARGS:-} >"$OUT/locust.log" 2>&1 || status=$?

"$PYTHON" - "$OUT/smoke.json" "$USERS" "$status" <<'PY'
import json, sys
entries = {e["name"]: e for e in json.load(open(sys.argv[1]))}
users, status = int(sys.argv[2]), int(sys.argv[3])
failures = sum(e["num_failures"] for e in entries.values())

def pct(hist, q):
    items = sorted((float(k), v) for k, v in hist.items())
    total, seen = sum(v for _, v in items), 0
    for value, count in items:
        seen += count
        if seen >= q * total:
            return f"{value:g}"
    return "-"

print(f"{'row':<24} {'count':>9} {'failures':>9} {'p50 ms':>7} {'p99 ms':>7}")
for name, e in sorted(entries.items()):
    rt = e["response_times"]
    print(f"{name:<24} {e['num_requests']:>9} {e['num_failures']:>9} {pct(rt, .5):>7} {pct(rt, .99):>7}")
if failures:
    print("failures: see", sys.argv[1].replace(".json", ".html"), "and locust.log")
events = entries.get("fanout events", {}).get("num_requests", 0)
conn = entries.get("fanout connect", {})
connects = conn.get("num_requests", 0) - conn.get("num_failures", 0)
print(f"smoke load: {connects} streams opened (of {users}), {events} events, "
      f"{failures} failures, locust exit status {status}")
ok = status == 0 and failures == 0 and events > 0 and connects >= users
sys.exit(0 if ok else 1)
PY
