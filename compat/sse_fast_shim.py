"""pytest plugin: run sse-starlette's own test suite against sse_fast.

Loaded with ``-p sse_fast_shim`` (``compat/`` on ``PYTHONPATH``) by
``compat/sse_starlette_suite.py``. pytest imports ``-p`` plugins while it
parses its options, before any conftest or test module, so the aliasing below
is in place when the suite first imports ``sse_starlette``; the
``sse_starlette`` installed in the environment (or unpacked beside the tests)
is never imported.

It provides:

- the aliases ``sse_starlette``, ``sse_starlette.sse``, ``sse_starlette.event``
  -> ``sse_fast``, ``sse_fast.sse``, ``sse_fast.event`` in ``sys.modules`` (the
  submodules are attributes of the package, so ``sse_starlette.sse.X`` and
  ``from sse_starlette import sse`` give sse_fast's too);
- what the suite takes from files its sdist does not ship (``tests/conftest.py``,
  ``tests/anyio_compat.py``), written here from their use in the tests and from
  public API only: the ``anyio_backend`` fixture (asyncio), an autouse reset of
  ``AppStatus.should_exit``, and ``tests.anyio_compat.collapse_excgroups``;
- the expected-failure list (``--sse-fast-expected FILE``): each listed node id
  becomes a strict xfail (a listed test that passes fails the run), a listed
  module path whose import fails counts as one expected failure, and a listed
  id that its collected file does not contain fails the run (a stale entry);
- a watchdog: pytest-timeout's signal method ends a test by raising in it, which
  cannot end a test whose clean-up then waits forever (``asyncio.run`` cancelling
  a task that never finishes); a test still running at twice the timeout
  (+10 s) stops the run, naming it, with every thread's stack.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import sys
import threading
import types
from pathlib import Path

import pytest

import sse_fast
import sse_fast.event
import sse_fast.sse

ALIASES = {
    "sse_starlette": sse_fast,
    "sse_starlette.sse": sse_fast.sse,
    "sse_starlette.event": sse_fast.event,
}
sys.modules.update(ALIASES)


@contextlib.contextmanager
def collapse_excgroups():
    """Re-raise an exception group holding one exception as that exception (nested too)."""
    try:
        yield
    except BaseExceptionGroup as group:
        exc: BaseException = group
        while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
            exc = exc.exceptions[0]
        raise exc from None


_anyio_compat = types.ModuleType("tests.anyio_compat", "sse_fast_shim's stand-in for the sdist's missing helper")
_anyio_compat.collapse_excgroups = collapse_excgroups
# A module already in sys.modules is used without importing its parent package.
sys.modules["tests.anyio_compat"] = _anyio_compat


class _SuiteFixtures:
    """The fixtures of the suite's missing conftest. Registered in ``pytest_configure``,
    after the entry-point plugins, so that they override anyio's ``anyio_backend``."""

    @pytest.fixture
    def anyio_backend(self):
        """The suite runs on asyncio only (its own conftest excludes trio)."""
        return "asyncio"

    @pytest.fixture(autouse=True)
    def _reset_should_exit(self):
        """The suite expects ``AppStatus.should_exit`` to be False when each test starts."""
        sse_fast.AppStatus.should_exit = False


def pytest_addoption(parser):
    parser.addoption("--sse-fast-expected", metavar="FILE", help="expected-failure list (node id  # reason)")


def _read_expected(path: str | None) -> dict[str, str]:
    expected: dict[str, str] = {}
    for line in Path(path).read_text().splitlines() if path else ():
        node, _, reason = line.partition("#")
        if node.strip():
            expected[node.strip()] = reason.strip() or "listed in the expected-failure list"
    return expected


class _Tally:
    def __init__(self, expected: dict[str, str]) -> None:
        self.expected = expected
        self.outcomes: dict[str, str] = {}  # node id -> passed / expected / skipped / the failure
        self.stale: list[str] = []
        self.files: set[str] = set()

    @pytest.hookimpl(wrapper=True)
    def pytest_make_collect_report(self, collector):
        report = yield
        if report.failed and report.nodeid in self.expected:
            report.outcome = "skipped"
            report.longrepr = (str(collector.path), 0, f"expected failure: {self.expected[report.nodeid]}")
            self.outcomes[report.nodeid] = "expected"
        elif report.nodeid in self.expected and isinstance(collector, pytest.Module):
            self.stale.append(f"{report.nodeid} (the module imports now: list its tests instead)")
        return report

    @pytest.hookimpl(tryfirst=True)
    def pytest_collection_modifyitems(self, items):
        for item in items:
            self.files.add(item.nodeid.split("::")[0])
            reason = self.expected.get(item.nodeid)
            if reason is not None:
                item.add_marker(pytest.mark.xfail(reason=reason, strict=True))
        ids = {item.nodeid for item in items}
        self.stale += [n for n in self.expected if "::" in n and n not in ids and n.split("::")[0] in self.files]

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(self, item):
        limit = item.config.getoption("timeout", None)
        watchdog = threading.Timer(2 * limit + 10, self._hung, (item.config, item.nodeid)) if limit else None
        if watchdog:
            watchdog.daemon = True
            watchdog.start()
        try:
            return (yield)
        finally:
            if watchdog:
                watchdog.cancel()

    def _hung(self, config, nodeid):
        self.outcomes[nodeid] = "hung: did not end after pytest-timeout's exception"
        capture = config.pluginmanager.get_plugin("capturemanager")
        if capture is not None:
            capture.suspend_global_capture(in_=True)  # the terminal's file descriptors back
        faulthandler.dump_traceback(all_threads=True)
        tr = config.pluginmanager.get_plugin("terminalreporter")
        self.pytest_terminal_summary(tr)
        tr.write_line(f"run aborted: {nodeid} hung")
        sys.stdout.flush()
        os._exit(3)

    def pytest_runtest_logreport(self, report):
        if report.failed:
            xpass = "XPASS" in str(report.longrepr)
            self.outcomes[report.nodeid] = "passed but listed: remove it from the list" if xpass else f"failed ({report.when})"
        elif report.skipped:
            self.outcomes[report.nodeid] = "expected" if hasattr(report, "wasxfail") else "skipped"
        elif report.when == "call":
            self.outcomes[report.nodeid] = "passed"

    def pytest_collectreport(self, report):
        if report.failed:
            self.outcomes[report.nodeid] = "failed (collection)"

    def pytest_terminal_summary(self, terminalreporter):
        tr = terminalreporter
        tr.section(f"sse-starlette suite on sse_fast ({sse_fast.IMPLEMENTATION} encoder)")
        counts = {"passed": 0, "expected": 0, "skipped": 0, "unexpected": 0}
        for nodeid, outcome in self.outcomes.items():
            if outcome in counts:
                counts[outcome] += 1
            else:
                counts["unexpected"] += 1
                tr.write_line(f"UNEXPECTED {nodeid}: {outcome}")
        for entry in self.stale:
            tr.write_line(f"STALE LIST ENTRY {entry}")
        tr.write_line(
            f"{counts['passed']} passed, {counts['expected']} expected failures, "
            f"{counts['unexpected']} unexpected failures, {counts['skipped']} skipped, "
            f"{len(self.stale)} stale list entries"
        )

    def pytest_sessionfinish(self, session):
        if self.stale and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_configure(config):
    config.pluginmanager.register(_SuiteFixtures(), "sse_fast_suite_fixtures")
    config.pluginmanager.register(_Tally(_read_expected(config.getoption("--sse-fast-expected"))), "sse_fast_tally")
