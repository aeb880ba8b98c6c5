"""pytest-benchmark settings for the encoder micro-benchmarks.

Quick mode (CI): ``--benchmark-min-rounds=5 --benchmark-max-time=0.05``.
Each benchmark calls the encoder ``INNER`` times per round (pytest-benchmark's
pedantic mode), so a round is long enough to time and ``ns/event`` is
``stats.min / INNER``; ``check_floor.py`` turns the saved JSON into a table.
"""

from __future__ import annotations


def pytest_benchmark_update_json(config, benchmarks, output_json):
    """Record the inner-loop size so JSON readers can compute ns/event."""
    output_json.setdefault("sse_fast", {})["note"] = "times are per round; divide by extra_info.inner"


def pytest_configure(config):
    """Create the folder of ``--benchmark-json`` (e.g. ``benchmarks/out/``) when missing."""
    import os

    path = config.getoption("benchmark_json", None)
    if path:
        folder = os.path.dirname(os.fspath(path))
        if folder:
            os.makedirs(folder, exist_ok=True)
