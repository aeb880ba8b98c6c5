"""Tests of ``sse_fast.locust.SSEUser``: parsing, statistics entries, reconnection, errors.

``import locust`` monkeypatches the standard library (gevent), so the user never runs in this
pytest process: each test runs a small harness in a subprocess (``python -c HARNESS spec``) that
drives one user against a server on 127.0.0.1 and prints what locust was told as JSON. The
servers are a scripted HTTP/1.1 server in a thread of this process (exact bytes, split where
the test wants, timed drops) and the demo app (``python -m sse_fast demo``) in a subprocess.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import DEMO_COMMAND, Server, free_port

# find_spec, not importorskip: importing locust here would monkeypatch this
# whole pytest process with gevent and hang the asyncio tests
if importlib.util.find_spec("locust") is None:
    pytest.fail("locust is not installed: pip install 'sse_fast[locust]'", pytrace=False)

ROOT = Path(__file__).resolve().parent.parent

HARNESS = r"""
import json, sys
spec = json.loads(sys.argv[1])
import gevent
from locust.env import Environment
from sse_fast.locust import SSEUser

seen = []
attrs = dict(spec.get("attrs", {}))
attrs["host"] = spec["host"]
if spec.get("hook", True):
    def on_event(self, event):
        seen.append([event.event, event.data, event.id, event.retry])
    attrs["on_event"] = on_event
U = type("U", (SSEUser,), attrs)
env = Environment(user_classes=[U])
env.create_local_runner()
records = []
def on_request(request_type, name, response_time, response_length, exception=None, **kw):
    records.append({
        "type": request_type, "name": name, "rt": response_time, "len": response_length,
        "error": None if exception is None else f"{type(exception).__name__}: {exception}",
    })
env.events.request.add_listener(on_request)
out = {"results": []}
try:
    user = U(env)
except Exception as exc:
    out["results"].append(f"{type(exc).__name__}: {exc}")
    user = None
if user is not None:
    for call in spec.get("calls", [{}]):
        try:
            with gevent.Timeout(spec.get("timeout", 20)):
                out["results"].append(user.stream(**call))
        except BaseException as exc:
            out["results"].append(f"{type(exc).__name__}: {exc}")
    out["counters"] = {
        k: getattr(user, k)
        for k in ("events_received", "bytes_received", "connections", "drops",
                  "last_event_id", "retry")
    }
out["records"] = records
out["events"] = seen
out["stats"] = {
    name: {"n": e.num_requests, "fail": e.num_failures, "bytes": e.total_content_length}
    for (name, method), e in env.stats.entries.items() if e.num_requests or e.num_failures
}
print("RESULT " + json.dumps(out))
"""


def run_user(host: str, *, timeout: float = 60, **spec: Any) -> dict[str, Any]:
    """Run the harness with ``spec`` against ``host``; return its decoded JSON output."""
    spec["host"] = host
    proc = subprocess.run(
        [sys.executable, "-c", HARNESS, json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert line, proc.stdout + proc.stderr
    return json.loads(line[-1][len("RESULT ") :])


def rows(out: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [r for r in out["records"] if r["name"] == name]


class ScriptedServer:
    """An HTTP/1.1 server on 127.0.0.1 that answers connection i with ``scripts[i]``.

    A script: ``status`` (int), ``ctype`` (str), ``pieces`` (list of (bytes, delay seconds)
    sent as one HTTP chunk each after the delay), ``end``: ``"chunked"`` (terminating chunk),
    ``"close"`` (close mid-stream), ``"hang"`` (keep the connection open, send nothing more).
    The last script repeats for further connections. ``requests``: (monotonic time, request
    head) per connection; ``closed_at``: monotonic time each connection was closed.
    """

    def __init__(self, scripts: list[dict[str, Any]]) -> None:
        self.scripts = scripts
        self.requests: list[tuple[float, str]] = []
        self.closed_at: list[float] = []
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._threads: list[threading.Thread] = []
        self._accept = threading.Thread(target=self._serve, daemon=True)
        self._accept.start()

    def _serve(self) -> None:
        index = 0
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            script = self.scripts[min(index, len(self.scripts) - 1)]
            index += 1
            thread = threading.Thread(target=self._handle, args=(conn, script), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _handle(self, conn: socket.socket, script: dict[str, Any]) -> None:
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                data = conn.recv(4096)
                if not data:
                    return
                head += data
            self.requests.append((time.monotonic(), head.decode("latin-1")))
            status = script.get("status", 200)
            if status != 200:
                conn.sendall(f"HTTP/1.1 {status} Nope\r\nContent-Length: 0\r\n\r\n".encode())
                self.closed_at.append(time.monotonic())
                return
            ctype = script.get("ctype", "text/event-stream; charset=utf-8")
            conn.sendall(
                f"HTTP/1.1 200 OK\r\ncontent-type: {ctype}\r\n"
                "transfer-encoding: chunked\r\n\r\n".encode()
            )
            try:
                for piece, delay in script.get("pieces", []):
                    if delay:
                        time.sleep(delay)
                    conn.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
                end = script.get("end", "chunked")
                if end == "chunked":
                    conn.sendall(b"0\r\n\r\n")
                    time.sleep(0.2)  # let the client see the end before the close
                elif end == "hang":
                    self._stop.wait(30)
            except OSError:
                pass
            self.closed_at.append(time.monotonic())

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        self._accept.join(5)
        for thread in self._threads:
            thread.join(5)


@pytest.fixture
def scripted() -> Iterator[Any]:
    servers: list[ScriptedServer] = []

    def make(*scripts: dict[str, Any]) -> ScriptedServer:
        server = ScriptedServer(list(scripts))
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


@pytest.fixture(scope="module")
def demo() -> Iterator[str]:
    """The demo app (sse_fast backend) under uvicorn in a subprocess; yields its base URL."""
    srv = Server(command=DEMO_COMMAND)
    yield srv.url
    srv.stop()


# -- parsing and statistics against the scripted server -----------------------------------------


def test_whatwg_parsing_any_terminator_split_anywhere(scripted: Any) -> None:
    pieces = [
        b"\xef\xbb\xbfretry: 50\r",
        b"\n: a comment\rdata: a\r\ndata: b\n\nevent: tick\ndata: x\r",
        b"\rid: 7\nda",
        b"ta: y\n",
        b"\n",
        b"data:no space\r\n\r\n",
        b"data: incomplete, never dispatched\n",
    ]
    body = b"".join(pieces)
    server = scripted({"pieces": [(p, 0.02) for p in pieces], "end": "chunked"})
    out = run_user(
        server.url,
        attrs={"path": "/s", "stream_end_is_failure": False, "reconnect": False},
    )
    assert out["events"] == [
        ["message", "a\nb", "", 50],
        ["tick", "x", "", 50],
        ["message", "y", "7", 50],
        ["message", "no space", "7", 50],
    ]
    assert out["results"] == [4]
    c = out["counters"]
    assert c["events_received"] == 4 and c["bytes_received"] == len(body)
    assert c["last_event_id"] == "7" and c["retry"] == pytest.approx(0.05)
    assert c["connections"] == 1 and c["drops"] == 1
    assert [r["name"] for r in rows(out, "/s event:message")] == ["/s event:message"] * 3
    assert len(rows(out, "/s event:tick")) == 1
    assert len(rows(out, "/s connect")) == 1 and rows(out, "/s connect")[0]["error"] is None
    assert len(rows(out, "/s first event")) == 1
    (end,) = rows(out, "/s disconnect")
    assert end["error"] is None  # a clean end of a finite stream, not a failure here
    # every body byte is attributed to exactly one entry
    assert sum(r["len"] for r in out["records"]) == len(body)
    assert all(r["type"] == "SSE" for r in out["records"])
    request = server.requests[0][1]
    assert request.startswith("GET /s HTTP/1.1\r\n")
    assert "Accept: text/event-stream\r\n" in request
    assert "Accept-Encoding: identity\r\n" in request
    assert "Last-Event-ID" not in request


def test_reconnect_sends_last_event_id_after_retry(scripted: Any) -> None:
    server = scripted(
        {"pieces": [(b"retry: 300\nid: 41\ndata: one\n\n", 0)], "end": "close"},
        {"pieces": [(b"data: two\n\n", 0), (b"id: 42\ndata: three\n\n", 0.02)], "end": "hang"},
    )
    out = run_user(server.url, attrs={"path": "/r", "stream_name": "r"}, calls=[{"max_events": 3}])
    assert out["results"] == [3]
    assert [e[1:3] for e in out["events"]] == [["one", "41"], ["two", "41"], ["three", "42"]]
    assert len(server.requests) == 2
    assert "Last-Event-ID" not in server.requests[0][1]
    assert "\r\nLast-Event-ID: 41\r\n" in server.requests[1][1]
    gap = server.requests[1][0] - server.closed_at[0]
    assert 0.25 <= gap < 3.0, gap  # the server's retry (300 ms), not the 3 s default
    (drop,) = rows(out, "r disconnect")
    assert drop["error"].startswith("StreamDropped: the connection closed after 1 events")
    assert len(rows(out, "r connect")) == 2 and len(rows(out, "r first event")) == 2
    assert out["stats"]["r disconnect"]["fail"] == 1
    assert out["counters"]["drops"] == 1 and out["counters"]["connections"] == 2


def test_server_end_is_a_failure_for_endless_streams(scripted: Any) -> None:
    server = scripted({"pieces": [(b"data: a\n\n", 0)], "end": "chunked"})
    out = run_user(server.url, attrs={"path": "/e", "reconnect": False})
    (drop,) = rows(out, "/e disconnect")
    assert drop["error"] == "StreamDropped: the server ended the stream after 1 events"


@pytest.mark.parametrize(
    ("script", "error"),
    [
        ({"status": 404}, "StreamRejected: HTTP 404, Content-Type ''"),
        ({"ctype": "text/plain"}, "StreamRejected: HTTP 200, Content-Type 'text/plain'"),
    ],
)
def test_rejected_stream_is_a_failure_and_not_retried(
    scripted: Any, script: dict[str, Any], error: str
) -> None:
    server = scripted(script)
    out = run_user(server.url, attrs={"path": "/x", "default_retry": 0.05})
    assert out["results"] == [0]
    (connect,) = rows(out, "/x connect")
    assert connect["error"] == error
    assert len(server.requests) == 1
    assert out["counters"]["connections"] == 0


def test_connection_refused_is_a_connect_failure() -> None:
    port = free_port()  # nothing listens there
    out = run_user(f"http://127.0.0.1:{port}", attrs={"path": "/", "reconnect": False})
    (connect,) = rows(out, "/ connect")
    assert connect["error"].startswith("ConnectionRefusedError")
    assert out["results"] == [0]


def test_read_timeout_drops_a_silent_stream(scripted: Any) -> None:
    server = scripted({"pieces": [(b": hi\n\n", 0)], "end": "hang"})
    out = run_user(server.url, attrs={"path": "/q", "read_timeout": 0.3, "reconnect": False})
    (drop,) = rows(out, "/q disconnect")
    assert drop["error"] == "StreamDropped: no data for 0.3 s (read_timeout)"
    assert 250 <= drop["rt"] < 5000
    (ping,) = rows(out, "/q ping")  # the comment-only read
    assert ping["error"] is None and ping["len"] == 6


def test_latency_from_the_events_send_time(scripted: Any) -> None:
    # the send time says 0.5 s ago: the latency row reads ~500 ms
    sent = json.dumps({"t": time.time() - 0.5}).encode()
    server = scripted(
        {"pieces": [(b"data: " + sent + b"\n\n", 0), (b"data: {}\n\n", 0)], "end": "hang"}
    )
    out = run_user(
        server.url, attrs={"path": "/l", "event_stats": "stream"}, calls=[{"max_events": 2}]
    )
    first, second = rows(out, "/l events")
    assert 450 <= first["rt"] < 5000
    assert 0 <= second["rt"] < 1000  # no send time: ms waited since the previous event


@pytest.mark.parametrize("mode", ["type", "stream", "batch", "off"])
@pytest.mark.parametrize("hook", [True, False])
def test_event_stats_modes_count_exactly(scripted: Any, mode: str, hook: bool) -> None:
    n = 500
    body = b"".join(b"event: e%d\ndata: %d\n\n" % (i % 3, i) for i in range(n))
    pieces = [(body[i : i + 1000], 0) for i in range(0, len(body), 1000)]
    server = scripted({"pieces": pieces, "end": "chunked"})
    out = run_user(
        server.url,
        hook=hook,
        attrs={"path": "/m", "event_stats": mode, "reconnect": False, "sent_at_field": None},
    )
    assert out["counters"]["events_received"] == n
    assert out["counters"]["bytes_received"] == len(body)
    assert len(out["events"]) == (n if hook else 0)
    stats = out["stats"]
    event_rows = {k: v["n"] for k, v in stats.items() if "event" in k and "first" not in k}
    if mode == "type":
        assert event_rows == {"/m event:e0": 167, "/m event:e1": 167, "/m event:e2": 166}
    elif mode in ("stream", "batch"):
        assert event_rows == {"/m events": n}
    else:
        assert event_rows == {}
    if mode != "off":
        assert sum(v["bytes"] for v in stats.values()) == len(body)
    assert stats["/m first event"]["n"] == 1
    assert sum(v["fail"] for v in stats.values()) == 1  # the end of an endless stream


def test_many_event_types_fold_into_other(scripted: Any) -> None:
    body = b"".join(b"event: t%d\ndata: x\n\n" % i for i in range(30))
    server = scripted({"pieces": [(body, 0)], "end": "chunked"})
    out = run_user(server.url, attrs={"path": "/t", "max_event_types": 5, "reconnect": False})
    names = {k for k in out["stats"] if "event:" in k}
    assert len(names) == 6 and "/t event:(other)" in names
    assert out["stats"]["/t event:(other)"]["n"] == 25


def test_bad_arguments_fail_early(scripted: Any) -> None:
    server = scripted({"end": "hang"})
    out = run_user(
        server.url,
        calls=[
            {"path": "no-slash"},
            {"path": "/", "max_events": 0},
            {"path": "/", "duration": -1},
            {"path": "ftp://example.com/"},
        ],
    )
    assert out["results"] == [
        "ValueError: path must start with '/' or be an absolute URL, got 'no-slash'",
        "ValueError: max_events must be a positive int or None, got 0",
        "ValueError: duration must be a positive number of seconds, got -1",
        "ValueError: path must start with '/' or be an absolute URL, got 'ftp://example.com/'",
    ]
    assert server.requests == []
    out = run_user(server.url, attrs={"event_stats": "bogus"})
    assert out["results"] == [
        "ValueError: event_stats must be one of ('type', 'stream', 'batch', 'off'), got 'bogus'"
    ]
    out = run_user("", calls=[{"path": "/"}])
    assert out["results"][0].startswith("ValueError: U.host is not set")


def test_import_without_locust_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['locust'] = None\n"
        "try:\n    import sse_fast.locust\nexcept ImportError as e:\n    print(e)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert 'pip install "sse_fast[locust]"' in proc.stdout, proc.stdout + proc.stderr


# -- against the demo app ---------------------------------------------------------------------


def test_demo_events_resume_with_last_event_id(demo: str) -> None:
    out = run_user(
        demo,
        attrs={"path": "/events?interval=0.02", "stream_name": "ev", "event_stats": "stream"},
        calls=[{"max_events": 5}, {"max_events": 5}],
    )
    assert out["results"] == [5, 5]
    assert [e[2] for e in out["events"]] == [str(i) for i in range(10)]
    assert [json.loads(e[1])["n"] for e in out["events"]] == list(range(10))
    latencies = [r["rt"] for r in rows(out, "ev events")]
    assert len(latencies) == 10 and all(0 <= x < 2000 for x in latencies)
    assert out["stats"]["ev connect"] == {"n": 2, "fail": 0, "bytes": 0}
    assert "ev disconnect" not in out["stats"]


def test_demo_finite_stream_and_duration(demo: str) -> None:
    out = run_user(
        demo,
        attrs={"stream_end_is_failure": False, "reconnect": False, "event_stats": "batch"},
        calls=[{"path": "/stream?n=300&size=20"}, {"path": "/idle?ping=0.2", "duration": 0.7}],
    )
    assert out["results"] == [300, 0]
    assert out["stats"]["/stream?n=300&size=20 events"]["n"] == 300
    assert out["stats"]["/stream?n=300&size=20 disconnect"]["fail"] == 0
    assert 2 <= out["stats"]["/idle?ping=0.2 ping"]["n"] <= 4
    assert sum(v["fail"] for v in out["stats"].values()) == 0


@pytest.mark.parametrize(
    ("locustfile", "row"),
    [("idle_streams.py", "idle ping"), ("fanout.py", "fanout events"),
     ("firehose.py", "firehose events")],
)  # fmt: skip
def test_locustfiles_run_headless(demo: str, tmp_path: Path, locustfile: str, row: str) -> None:
    extra = ["--sse-path", "/idle?ping=0.5"] if locustfile == "idle_streams.py" else []
    proc = subprocess.run(
        [
            sys.executable, "-m", "locust", "-f", str(ROOT / "locustfiles" / locustfile),
            "--host", demo, "--headless", "-u", "3", "-r", "10", "-t", "3s",
            "--json-file", str(tmp_path / "stats"), "--only-summary", *extra,
        ],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
        env=dict(os.environ, PYTHONWARNINGS="ignore"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    stats = {e["name"]: e for e in json.loads((tmp_path / "stats.json").read_text())}
    assert stats[row]["num_requests"] > 0
    assert sum(e["num_failures"] for e in stats.values()) == 0
