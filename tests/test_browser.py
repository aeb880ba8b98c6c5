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
import time
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


# --- the chat page: two tabs, a server-side drop, replay after Last-Event-ID ---------


#: wait_for_function polls on a timer: its default (animation frames) is throttled in a tab that is
#: not in front, as are the stability checks of click() (about 1 s each, measured)
_POLL_MS = 20


def _chat_send(page, text: str) -> None:
    """Type ``text`` into the page's form, click Send, wait until the server has answered."""
    count = page.evaluate("window.sent.length")
    page.fill("#text", text)
    page.click("#send")
    page.wait_for_function("(n) => window.sent.length > n", arg=count, polling=_POLL_MS, timeout=5_000)
    assert page.input_value("#text") == ""  # the page cleared the box: the post succeeded


def _wait_live(url: str, *clients: str) -> None:
    """Until the server streams the chat to each of ``clients`` (its subscription registered)."""
    deadline = time.monotonic() + 10
    while not set(clients) <= set(httpx.get(f"{url}/chat/_clients", timeout=5).json()["live"]):
        assert time.monotonic() < deadline, f"chat clients {clients} not live"
        time.sleep(0.02)


@pytest.mark.browser
def test_browser_chat_between_tabs_resumes_after_a_server_drop_without_loss_or_duplicate(demo_server):
    """Two tabs on ``/chat``: tab 1 posts (form and click), tab 2 shows it. The server then ends
    tab 2's stream (``/chat/_drop``, farewell ``retry: 1500``); tab 1 posts while tab 2 waits to
    reconnect; tab 2's ``EventSource`` comes back with ``Last-Event-ID`` and shows every missed
    message exactly once, in order, then live ones."""
    sync_playwright = _require_browser()
    tag = uuid.uuid4().hex[:8]
    c1, c2 = f"tab1-{tag}", f"tab2-{tag}"
    missed = [f"missed {i} {tag}" for i in range(3)]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            ctx = browser.new_context()
            p1, p2 = ctx.new_page(), ctx.new_page()
            p1.goto(f"{demo_server}/chat?client={c1}")
            p2.goto(f"{demo_server}/chat?client={c2}")
            p1.bring_to_front()  # the tab that types and clicks
            assert p1.title() == "sse_fast chat"
            _wait_live(demo_server, c1, c2)
            p1.fill("#name", "ann")

            _chat_send(p1, f"hello {tag}")
            p2.wait_for_function("window.received.length >= 1", polling=_POLL_MS, timeout=5_000)
            assert p2.locator("#messages li").first.inner_text().endswith(f"ann: hello {tag}")

            dropped = httpx.post(f"{demo_server}/chat/_drop", params={"client": c2, "retry": 1500}, timeout=5)
            assert dropped.status_code == 200, dropped.text
            for text in missed:
                _chat_send(p1, text)
            # tab 2 reconnects by itself (after the 1.5 s farewell retry) and catches up
            p2.wait_for_function(
                f"window.received.length >= {1 + len(missed)}"
                " && window.log.filter((e) => e.kind === 'open').length >= 2",
                polling=_POLL_MS,
                timeout=10_000,
            )
            _wait_live(demo_server, c2)
            # one more, live: anything replayed twice would have come before it on the stream
            _chat_send(p1, f"live {tag}")
            for page in (p2, p1):
                page.wait_for_function(f"window.received.length >= {2 + len(missed)}", polling=_POLL_MS, timeout=5_000)

            sent = p1.evaluate("window.sent")
            got1, got2 = p1.evaluate("window.received"), p2.evaluate("window.received")
            log2 = p2.evaluate("window.log")
            shown2 = p2.eval_on_selector_all("#messages li", "els => els.map((e) => [e.dataset.id, e.innerText])")
            notice_hidden = p2.eval_on_selector("#notice", "el => el.hidden")
        finally:
            browser.close()

    texts = [f"hello {tag}", *missed, f"live {tag}"]
    assert [s["text"] for s in sent] == texts
    ids = [s["id"] for s in sent]
    assert [int(i) for i in ids] == list(range(int(ids[0]), int(ids[0]) + len(texts)))  # consecutive
    # tab 2: every message exactly once, in order, none lost across the drop
    assert [(r["id"], r["name"], r["text"]) for r in got2] == [(i, "ann", t) for i, t in zip(ids, texts, strict=True)]
    assert [(r["id"], r["text"]) for r in got1] == list(zip(ids, texts, strict=True))
    assert [i for i, _ in shown2] == ids and all(line.endswith(f"ann: {t}") for (_, line), t in zip(shown2, texts, strict=True))
    assert notice_hidden  # no gap event: the history had it all
    # the stream was ended by the server and reopened once by EventSource itself, and the missed
    # messages were posted while tab 2 was away (so they came through the replay, not live)
    kinds = [e["kind"] for e in log2]
    assert kinds == ["open", "error", "open"], log2
    reopened = log2[2]["at"]
    assert all(s["at"] < reopened for s in sent[1 : 1 + len(missed)]), (sent, log2)
    assert reopened - log2[1]["at"] >= 1500 * 0.8  # the farewell retry was honoured
