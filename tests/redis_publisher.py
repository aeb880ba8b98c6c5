"""A publisher in its own process, with no event loop: ``python -m tests.redis_publisher``.

``--url U --topic T --n N --interval S --prefix P [--key-prefix K]``: publishes
``N`` events (data ``P<i>``) with ``sse_fast.broadcast.RedisPublisher``, one
every ``S`` seconds, and prints one JSON line per event: ``{"i", "id"}``, or
``{"i", "error"}`` when the publish raised ``PublishError`` (then it goes on).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from sse_fast.broadcast import PublishError, RedisPublisher


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--topic", default="t")
    p.add_argument("--n", type=int, default=10)
    p.add_argument("--interval", type=float, default=0.0)
    p.add_argument("--prefix", default="p")
    p.add_argument("--key-prefix", default="sse_fast:")
    p.add_argument("--timeout", type=float, default=1.0)
    a = p.parse_args()
    with RedisPublisher(a.url, key_prefix=a.key_prefix, timeout=a.timeout) as pub:
        start = time.monotonic()
        for i in range(a.n):
            try:
                line = {"i": i, "id": pub.publish({"data": f"{a.prefix}{i}"}, a.topic)}
            except PublishError as exc:
                line = {"i": i, "error": str(exc)}
            print(json.dumps(line), flush=True)
            time.sleep(max(0.0, start + (i + 1) * a.interval - time.monotonic()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
