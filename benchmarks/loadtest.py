"""Load-test the demo server with locust, for sse_fast and sse-starlette, and write a summary.

One command starts the demo server (``python -m sse_fast demo``: uvicorn + uvloop + httptools)
for each backend, runs a bounded headless locust run of a locustfile from ``locustfiles/``
against it, samples the server's RSS, CPU and open file descriptors with psutil once a second,
stops the server, and writes:

- ``reports/loadtest/<scenario>-<backend>-u<users>{.html,_stats.csv,...,.json,.log}``: locust's
  HTML, CSV and exact JSON reports, locust's and the server's logs, the psutil samples;
- ``benchmarks/LOADTEST.md``: a markdown table (streams held, events/s, latency p50/p99,
  failures, server RSS and CPU) plus the machine and the exact command.

Examples::

    python benchmarks/loadtest.py                                   # idle, 2,000 streams, 60 s
    python benchmarks/loadtest.py --scenario idle fanout firehose -t 30
    python benchmarks/loadtest.py --scenario idle -u 5000 10000 -r 500 -t 60

The server is pinned to ``--server-cpus`` (default ``0``) and locust to ``--client-cpus``
(default ``1``) with ``taskset`` when it exists. The soft limit of open files is raised to the
hard limit for both (each stream costs one descriptor on each side). Exit status: 0 when every
run had zero locust failures and received events (or pings), 1 otherwise.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent

#: scenario -> (locustfile, default users, default spawn rate, the row holding the events)
SCENARIOS: dict[str, dict[str, Any]] = {
    "idle": {"file": "idle_streams.py", "users": 2000, "rate": 200, "row": "idle ping"},
    "fanout": {"file": "fanout.py", "users": 1000, "rate": 200, "row": "fanout events"},
    "firehose": {"file": "firehose.py", "users": 4, "rate": 4, "row": "firehose events"},
}
BACKENDS = ("sse_fast", "sse_starlette")


def _raise_nofile() -> tuple[int, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard and hard != resource.RLIM_INFINITY:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _pin(cpus: str) -> list[str]:
    if cpus and shutil.which("taskset"):
        return ["taskset", "-c", cpus]
    return []


def _wait_port(port: int, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with status {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"the server did not listen on port {port} within {timeout} s")


class _Sampler(threading.Thread):
    """Samples a process tree (CPU %, RSS bytes, open fds) once per ``interval`` seconds."""

    def __init__(self, pid: int, interval: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.interval = interval
        self.samples: list[dict[str, float]] = []
        self._stop_event = threading.Event()
        self._procs: dict[int, psutil.Process] = {}

    def _tree(self) -> list[psutil.Process]:
        procs = [self.proc]
        try:
            procs += self.proc.children(recursive=True)
        except psutil.Error:
            pass
        out = []
        for p in procs:  # keep the Process objects: cpu_percent() measures since the last call
            out.append(self._procs.setdefault(p.pid, p))
        return out

    def run(self) -> None:
        for p in self._tree():
            try:
                p.cpu_percent(None)
            except psutil.Error:
                pass
        while not self._stop_event.wait(self.interval):
            cpu = rss = fds = 0.0
            for p in self._tree():
                try:
                    with p.oneshot():
                        cpu += p.cpu_percent(None)
                        rss += p.memory_info().rss
                        fds += p.num_fds()
                except psutil.Error:
                    pass
            self.samples.append({"t": time.time(), "cpu": cpu, "rss": rss, "fds": fds})

    def stop(self) -> list[dict[str, float]]:
        self._stop_event.set()
        self.join(5)
        return self.samples


def _percentile(histogram: dict[str, int], q: float) -> float | None:
    """The locust-style percentile (ms) of a ``{response_time: count}`` histogram."""
    items = sorted((float(k), v) for k, v in histogram.items())
    total = sum(v for _, v in items)
    if not total:
        return None
    rank = q * total
    seen = 0
    for value, count in items:
        seen += count
        if seen >= rank:
            return value
    return items[-1][0]


def _fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def run_one(
    scenario: str, backend: str, users: int, args: argparse.Namespace, out: Path
) -> dict[str, Any]:
    """Run one (scenario, backend, users) load test; return its summary row."""
    spec = SCENARIOS[scenario]
    rate = args.rate or spec["rate"]
    duration = args.duration
    if args.hold is not None:
        duration = math.ceil(users / rate) + args.hold
    port = args.port or _free_port()
    stem = f"{scenario}-{backend}-u{users}"
    if args.server_cmd:
        server_cmd = shlex.split(args.server_cmd.format(port=port, backend=backend))
    else:
        server_cmd = [
            sys.executable, "-m", "sse_fast", "demo",
            "--host", "127.0.0.1", "--port", str(port), "--backend", backend,
        ]  # fmt: skip
    server_cmd = _pin(args.server_cpus) + server_cmd
    locust_cmd = _pin(args.client_cpus) + [
        sys.executable, "-m", "locust",
        "-f", str(ROOT / "locustfiles" / spec["file"]),
        "--host", f"http://127.0.0.1:{port}",
        "--headless", "-u", str(users), "-r", str(rate), "-t", f"{duration}s",
        "--csv", str(out / stem), "--html", str(out / f"{stem}.html"),
        "--json-file", str(out / stem),
        "--exit-code-on-error", "1",
        "--only-summary",
    ]  # fmt: skip
    if args.processes > 1:
        locust_cmd += ["--processes", str(args.processes)]
    locust_cmd += args.locust_args

    print(f"== {stem}: {shlex.join(server_cmd)}", flush=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(out / f"{stem}.server.log", "w") as server_log:
        server = subprocess.Popen(
            server_cmd, stdout=server_log, stderr=subprocess.STDOUT, env=env, cwd=ROOT
        )
    try:
        _wait_port(port, server, 30)
        time.sleep(1.0)
        sampler = _Sampler(server.pid)
        base = psutil.Process(server.pid)
        base_rss = base.memory_info().rss + sum(
            c.memory_info().rss for c in base.children(recursive=True)
        )
        base_fds = base.num_fds()
        sampler.start()
        print(f"   {shlex.join(locust_cmd)}", flush=True)
        started = time.time()
        with open(out / f"{stem}.locust.log", "w") as locust_log:
            client = subprocess.Popen(
                locust_cmd, stdout=locust_log, stderr=subprocess.STDOUT, env=env, cwd=ROOT
            )
            client_sampler = _Sampler(client.pid)
            client_sampler.start()
            try:
                rc = client.wait(duration + 120)
            except subprocess.TimeoutExpired:
                client.kill()
                rc = client.wait()
        samples = sampler.stop()
        client_samples = client_sampler.stop()
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()

    stats = json.loads((out / f"{stem}.json").read_text())
    locust_log = (out / f"{stem}.locust.log").read_text(errors="replace")
    cpu_warning = "CPU usage" in locust_log
    (out / f"{stem}.samples.json").write_text(
        json.dumps({"server": samples, "client": client_samples}, indent=1)
    )
    rows = {e["name"]: e for e in stats}
    failures = sum(e["num_failures"] for e in stats)
    connects = rows.get(f"{scenario} connect", {})
    connected = connects.get("num_requests", 0) - connects.get("num_failures", 0)
    drops = rows.get(f"{scenario} disconnect", {}).get("num_requests", 0)
    ev = rows.get(spec["row"], {})
    events = ev.get("num_requests", 0)

    # steady state: after every user was spawned (+2 s), before the last (partial) second
    ramp_end = started + users / rate + 2.0
    per_sec = {int(k): v for k, v in ev.get("num_reqs_per_sec", {}).items()}
    window = range(math.ceil(ramp_end), int(started + duration))
    rate_steady = sum(per_sec.get(k, 0) for k in window) / len(window) if len(window) else None
    steady_samples = [s for s in samples if s["t"] >= ramp_end] or samples
    client_steady = [s for s in client_samples if s["t"] >= ramp_end] or client_samples
    peak_rss = max((s["rss"] for s in samples), default=0.0)
    peak_fds = max((s["fds"] for s in samples), default=0.0)
    held = int(peak_fds - base_fds)
    latency = scenario == "fanout"
    hist = ev.get("response_times", {})
    first = rows.get(f"{scenario} first event", {}).get("response_times", {})
    return {
        "scenario": scenario,
        "backend": backend,
        "users": users,
        "rate": rate,
        "duration": duration,
        "hold": duration - users / rate,
        "locust_rc": rc,
        "connected": connected,
        "drops": drops,
        "streams_held": min(held, connected - drops) if connected else held,
        "server_sockets_peak": held,
        "events": events,
        "events_per_s": rate_steady,
        "latency_p50": _percentile(hist, 0.50) if latency else None,
        "latency_p99": _percentile(hist, 0.99) if latency else None,
        "first_event_p50": _percentile(first, 0.50),
        "first_event_p99": _percentile(first, 0.99),
        "failures": failures,
        "server_rss_mib": peak_rss / 2**20,
        "server_rss_per_stream_kib": (peak_rss - base_rss) / 1024 / held if held > 0 else None,
        "server_cpu_pct": statistics.fmean(s["cpu"] for s in steady_samples)
        if steady_samples
        else None,
        "client_cpu_pct": statistics.fmean(s["cpu"] for s in client_steady)
        if client_steady
        else None,
        "locust_cpu_warning": cpu_warning,
        "reports": f"reports/loadtest/{stem}.html",
    }


def _markdown(results: list[dict[str, Any]], argv: list[str], note: str) -> str:
    versions = {}
    for mod in ("locust", "uvicorn", "uvloop", "sse_starlette", "starlette"):
        try:
            from importlib.metadata import version

            versions[mod] = version(mod.replace("_", "-"))
        except Exception:  # noqa: BLE001 - a missing package only drops its version
            versions[mod] = "?"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    lines = [
        "# Load test: sse_fast vs sse-starlette under locust",
        "",
        f"Measured {_dt.datetime.now(_dt.UTC):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} cores "
        f"({cpu}), Python {platform.python_version()}, "
        + ", ".join(f"{k} {v}" for k, v in versions.items())
        + ". Server: `python -m sse_fast demo` (uvicorn + uvloop + httptools), pinned with "
        "`taskset`; client: locust (`sse_fast.locust.SSEUser`) on the other core.",
        "",
        "Command:",
        "",
        "```",
        "python benchmarks/loadtest.py " + shlex.join(argv),
        "```",
        "",
    ]
    if note:
        lines += [note, ""]
    lines += [
        "| scenario | backend | users | held for (s) | streams held | events/s | latency p50 / p99 (ms) "
        "| first event p50 / p99 (ms) | failures | server RSS (MiB) | RSS / stream (KiB) "
        "| server CPU | locust CPU |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lat = (
            f"{_fmt(r['latency_p50'])} / {_fmt(r['latency_p99'])}"
            if r["latency_p50"] is not None
            else "-"
        )
        lines.append(
            f"| {r['scenario']} | {r['backend']} | {r['users']:,} | {r['hold']:.0f} "
            f"| {r['streams_held']:,} "
            f"| {_fmt(r['events_per_s'])} | {lat} "
            f"| {_fmt(r['first_event_p50'])} / {_fmt(r['first_event_p99'])} | {r['failures']:,} "
            f"| {_fmt(r['server_rss_mib'], 1)} | {_fmt(r['server_rss_per_stream_kib'], 1)} "
            f"| {_fmt(r['server_cpu_pct'])}% | {_fmt(r['client_cpu_pct'])}%"
            + (" (locust CPU warning)" if r["locust_cpu_warning"] else "")
            + " |"
        )
    lines += [
        "",
        "Columns: *held for* = run time after the last user was spawned; *streams held* = the server's open descriptors at their peak minus before the "
        "run, capped by locust's successful connects minus drops; *events/s* = the mean over the "
        "complete seconds after every user was spawned (idle: pings, fanout: broadcast events "
        "received by all clients, firehose: events); *latency* = receive time minus the send "
        "time carried in the event (fanout only); *first event* = from the request to the first "
        "event (for idle streams: none, they only get pings); *failures* = all locust failures "
        "(connect errors, non-200, drops, silent streams); *server RSS* = peak, *RSS / stream* = "
        "(peak - before the run) / streams held; *CPU* = mean of 1 s samples after the ramp "
        "(100% = one core). Per-run HTML/CSV/JSON reports are under `reports/loadtest/`.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", nargs="+", default=["idle"], choices=sorted(SCENARIOS))
    parser.add_argument("--backend", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument(
        "-u",
        "--users",
        nargs="+",
        type=int,
        default=None,
        help="concurrent streams (several: one run each); default per scenario",
    )
    parser.add_argument(
        "-r",
        "--rate",
        type=float,
        default=None,
        help="users spawned per second (default per scenario)",
    )
    parser.add_argument(
        "-t",
        "--duration",
        type=int,
        default=None,
        help="locust run time in seconds, ramp included (default 60)",
    )
    parser.add_argument(
        "--hold",
        type=int,
        default=None,
        help="seconds to hold every stream after the ramp: run time = "
        "ceil(users / rate) + hold (instead of -t)",
    )
    parser.add_argument("--processes", type=int, default=1, help="locust worker processes")
    parser.add_argument("--server-cpus", default="0", help="taskset CPU list for the server")
    parser.add_argument("--client-cpus", default="1", help="taskset CPU list for locust")
    parser.add_argument("--port", type=int, default=0, help="server port (default: a free one)")
    parser.add_argument("--out", default=str(ROOT / "reports" / "loadtest"))
    parser.add_argument(
        "--md",
        default=str(ROOT / "benchmarks" / "LOADTEST.md"),
        help="markdown summary to write ('' to skip)",
    )
    parser.add_argument("--note", default="", help="a line added above the table")
    parser.add_argument(
        "--server-cmd",
        default="",
        help="server command template with {port} and {backend} "
        "(default: python -m sse_fast demo ...)",
    )
    parser.add_argument("locust_args", nargs="*", help="extra locust arguments (after --)")
    args = parser.parse_args(argv)  # fmt: skip
    if args.duration is not None and args.hold is not None:
        parser.error("give -t/--duration or --hold, not both")
    if args.duration is None and args.hold is None:
        args.duration = 60
    if args.duration is not None and args.duration < 1:
        parser.error(f"--duration must be >= 1 second, got {args.duration}")
    if args.hold is not None and args.hold < 1:
        parser.error(f"--hold must be >= 1 second, got {args.hold}")
    if args.users is not None and any(u < 1 for u in args.users):
        parser.error(f"--users must be positive, got {args.users}")
    if args.rate is not None and not args.rate > 0:
        parser.error(f"--rate must be > 0, got {args.rate}")
    if args.processes < 1:
        parser.error(f"--processes must be >= 1, got {args.processes}")

    soft, hard = _raise_nofile()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for scenario in args.scenario:
        for users in args.users or [SCENARIOS[scenario]["users"]]:
            if users + 100 > soft:
                print(f"warning: {users} streams need more than the {soft} open files allowed")
            for backend in args.backend:
                result = run_one(scenario, backend, users, args, out)
                results.append(result)
                print(
                    f"   held {result['streams_held']:,} streams, {_fmt(result['events_per_s'])} "
                    f"events/s, {result['failures']} failures, server "
                    f"{_fmt(result['server_rss_mib'], 1)} MiB, {_fmt(result['server_cpu_pct'])}% CPU",
                    flush=True,
                )
    (out / "summary.json").write_text(json.dumps(results, indent=1))
    text = _markdown(results, argv, args.note)
    if args.md:
        Path(args.md).write_text(text)
    print(text)
    ok = all(r["failures"] == 0 and r["events"] > 0 and r["locust_rc"] == 0 for r in results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
