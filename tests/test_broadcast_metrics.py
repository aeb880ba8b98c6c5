"""The broadcast's metrics (``sse_fast.metrics``), exact counts, on both encoder twins.

Memory backend in process; the Redis backend's reconnect counter and lag gauge
against a real ``redis-server`` cut off by a relay (``tests/test_redis.py``'s
``Partition``).
"""

from __future__ import annotations

import asyncio
import gc

import anyio
import pytest

prometheus_client = pytest.importorskip("prometheus_client")

from sse_fast import metrics  # noqa: E402
from sse_fast.broadcast import Broadcast  # noqa: E402

NS = "sse_fast"


@pytest.fixture
def registry():
    gc.collect()  # earlier tests' broadcasts (cycles: topics hold subscriptions) leave the scrape
    metrics.disable_metrics()
    reg = prometheus_client.CollectorRegistry()
    metrics.enable_metrics(reg)
    yield reg
    metrics.disable_metrics()


def value(reg, name: str, **labels) -> float:
    v = reg.get_sample_value(f"{NS}_{name}", labels)
    return 0.0 if v is None else v


def run(main, *args):
    async def guarded():
        with anyio.fail_after(10):
            return await main(*args)

    return asyncio.run(guarded())


async def take(sub, n: int) -> list[bytes]:
    out = []
    async for data in sub:
        out.append(data)
        if len(out) == n:
            break
    return out


def test_publishes_deliveries_replays_gaps_and_subscribers_per_topic(impl, registry):
    async def main():
        b = Broadcast(history=3)
        subs = [b.subscribe("a"), b.subscribe("a"), b.subscribe("b")]
        tasks = [asyncio.create_task(take(s, 5)) for s in subs[:2]] + [asyncio.create_task(take(subs[2], 1))]
        await asyncio.sleep(0)
        counts = {"a": value(registry, "broadcast_subscribers", topic="a"),
                  "b": value(registry, "broadcast_subscribers", topic="b")}
        for i in range(5):
            b.publish({"data": f"d{i}"}, "a")
        b.publish("x", "b")
        await asyncio.gather(*tasks)
        # id 3 is in the history (3, 4, 5 kept): 2 replayed; id 1 is not: a gap, then 3 replayed
        replay = await take(b.subscribe("a", last_event_id="3"), 2)
        gap = await take(b.subscribe("a", last_event_id="1"), 4)
        return counts, replay, gap

    counts, replay, gap = run(main)
    assert counts == {"a": 2.0, "b": 1.0}
    assert value(registry, "broadcast_publishes_total") == 6
    assert value(registry, "broadcast_delivery_seconds_count") == 6  # one per event, all its subscribers
    assert 0 < value(registry, "broadcast_delivery_seconds_sum") < 1.0
    assert len(replay) == 2 and gap[0].startswith(b"event: sse_fast.gap")
    assert value(registry, "broadcast_replayed_events_total") == 2 + 3
    assert value(registry, "broadcast_gaps_total") == 1


@pytest.mark.parametrize("on_slow", ["disconnect", "drop"])
def test_slow_subscribers_are_counted_by_action(impl, registry, on_slow):
    async def main():
        b = Broadcast(max_subscriber_bytes=100, on_slow=on_slow)
        sub = b.subscribe("t")
        it = sub.__aiter__()
        first = asyncio.create_task(it.__anext__())
        await asyncio.sleep(0)
        b.publish({"data": "x" * 60}, "t")
        await first
        for _ in range(3):  # never read: the second one passes the bound
            b.publish({"data": "x" * 60}, "t")
        await sub.aclose()

    run(main)
    assert value(registry, "broadcast_slow_subscribers_total", action=on_slow) == (1 if on_slow == "disconnect" else 2)
    assert value(registry, "broadcast_gaps_total") == (0 if on_slow == "disconnect" else 2)


def test_nothing_is_counted_when_metrics_are_off(impl):
    metrics.disable_metrics()
    reg = prometheus_client.CollectorRegistry()

    async def main():
        b = Broadcast()
        t = asyncio.create_task(take(b.subscribe("t"), 1))
        await asyncio.sleep(0)
        b.publish("x", "t")
        await t

    run(main)
    assert metrics.ACTIVE is None
    assert list(reg.collect()) == []
