"""A real browser's ``EventSource`` against the demo app (``/conformance/``).

Headless Chromium (Debian's ``chromium`` at /usr/bin/chromium) is driven by
Playwright against ``python -m sse_fast demo`` on 127.0.0.1. A missing browser
or Playwright fails the test (CI installs both) unless ``SSE_FAST_SKIP_BROWSER=1``.

The first tests check the conformance endpoints in process (no browser), so a
failure there is told apart from a browser disagreement.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import uuid

import httpx
import pytest
from starlette.applications import Starlette

from sse_fast._demo_conformance import ROUTES, expected_event
from sse_fast.testing import stream_app

from .conftest import DEMO_COMMAND, Server

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
]


# --- the endpoints, in process ---------------------------------------------------------


def _app():
    return Starlette(routes=ROUTES)


def test_conformance_stream_drops_and_resumes_in_process():
    async def main():
        app = _app()
        got = []
        last = None
        for _ in range(3):
            headers = {} if last is None else {"last-event-id": last}
            async with stream_app(
                app, "/conformance/stream?session=inproc&n=12&drop=5&retry=700", headers=headers
            ) as s:
                async for ev in s.events(timeout=5):
                    got.append(ev)
                assert s.ended
                last = s.parser.last_event_id
        async with stream_app(
            app, "/conformance/stream?session=inproc&n=12", headers={"last-event-id": "11"}
        ) as s:
            assert s.status == 204
        return got

    got = asyncio.run(main())
    assert [(e.event, e.data, e.id) for e in got[:-1]] == [expected_event(i) for i in range(12)]
    assert (got[-1].event, got[-1].data, got[-1].id) == ("done", "12", "11")
    assert {e.retry for e in got} == {700}


def test_conformance_bad_parameter_is_an_error():
    async def main():
        async with stream_app(_app(), "/conformance/stream?n=zero"):
            pass

    with pytest.raises(ValueError, match="query parameter n must be an integer, got 'zero'"):
        asyncio.run(main())


# --- the browser --------------------------------------------------------------------


def _require_browser():
    skip = os.environ.get("SSE_FAST_SKIP_BROWSER", "") not in ("", "0")
    if not (os.path.exists(CHROMIUM) or shutil.which("chromium")):
        if skip:
            pytest.skip("chromium not installed and SSE_FAST_SKIP_BROWSER=1")
        pytest.fail(
            f"{CHROMIUM} not found: apt-get install chromium (or set SSE_FAST_SKIP_BROWSER=1)"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if skip:
            pytest.skip("playwright not installed and SSE_FAST_SKIP_BROWSER=1")
        pytest.fail(
            "the playwright package is missing: pip install playwright (or set SSE_FAST_SKIP_BROWSER=1)"
        )
    return sync_playwright


@pytest.fixture(scope="module")
def demo_server():
    """``python -m sse_fast demo`` in a subprocess; yields its base URL."""
    srv = Server(command=DEMO_COMMAND)
    yield srv.url
    srv.stop()


@pytest.mark.browser
def test_browser_eventsource_receives_resumes_and_honours_retry(demo_server):
    sync_playwright = _require_browser()
    n, drop, retry_ms = 12, 5, 700
    session = uuid.uuid4().hex
    url = f"{demo_server}/conformance/?session={session}&n={n}&drop={drop}&retry={retry_ms}"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(url)
            page.wait_for_function("window.done === true", timeout=30_000)
            received = page.evaluate("window.received")
            page_log = page.evaluate("window.log")
            title = page.title()
        finally:
            browser.close()
    assert title == "sse_fast conformance"

    # every event exactly once, in order, with the exact data (multi-line, non-ASCII)
    got = [(r["type"], r["data"], r["lastEventId"]) for r in received]
    assert got == [expected_event(i) for i in range(n)]
    # named events reached addEventListener, and only the unnamed ones reached onmessage
    for r in received:
        assert r["via"] == ("onmessage" if r["type"] == "message" else r["type"])
    assert {r["type"] for r in received} == {"message", "greeting", "json"}
    assert page_log[-1]["kind"] == "done" and page_log[-1]["data"] == str(n)
    assert [e["kind"] for e in page_log].count("open") == 3

    # the server saw three connections: the browser sent Last-Event-ID with the last id
    # received, after waiting the retry time once the server had ended the response
    conns = httpx.get(
        f"{demo_server}/conformance/log", params={"session": session}, timeout=5
    ).json()
    assert [c["last_event_id"] for c in conns] == [None, str(drop - 1), str(2 * drop - 1)]
    assert [c["start"] for c in conns] == [0, drop, 2 * drop]
    assert [c["sent"] for c in conns] == [drop, drop, n - 2 * drop]
    for before, after in zip(conns, conns[1:], strict=False):
        gap = after["t_open"] - before["t_close"]
        assert retry_ms / 1000 * 0.8 <= gap <= retry_ms / 1000 + 5.0, (gap, json.dumps(conns))
