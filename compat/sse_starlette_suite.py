"""Run sse-starlette 3.7.0's own test suite against sse_fast.

What: the tests shipped in sse-starlette's sdist, run by pytest with every
``sse_starlette`` import resolved to sse_fast (``compat/sse_fast_shim.py``, a
``-p`` plugin), plus ``compat/check_shim.py``, which proves that they got
sse_fast. Tests listed in ``compat/expected_failures.txt`` (``node id  # reason``)
are expected to fail.

How::

    pip install -r compat/requirements.txt
    python compat/sse_starlette_suite.py [--sdist-dir DIR] [--timeout S] [-- PYTEST ARGS]

PYTEST ARGS are added to the run (``-- -x -k ping``); when one of them starts
with ``tests`` (``-- tests/test_event.py``), it replaces the default ``tests``.

The sdist is downloaded with pip (``--no-binary :all:``) into a temporary
directory, or into DIR and reused from there on later runs (DIR may also be an
unpacked sdist). pytest runs in the unpacked sdist with its own settings
(``pyproject.toml``: asyncio_mode=auto), each test under a pytest-timeout
limit. ``SSE_FAST_NO_EXTENSIONS=1`` runs it on the pure-Python encoder.
Exit status: pytest's, so non-zero when a test not listed fails, when a listed
test passes (strict xfail), or when a listed id no longer exists; 3 when a test
hangs past its timeout (the shim's watchdog); 2 when a package is missing.

Why: same API and same behaviour as sse-starlette is sse_fast's promise; its
upstream's suite checks that with tests that we did not write. Nothing of
sse-starlette is copied into this repository: the suite is fetched at run time.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

VERSION = "3.7.0"
COMPAT = Path(__file__).resolve().parent
NEEDED = ("pytest", "pytest_asyncio", "pytest_timeout", "asgi_lifespan", "httpx2", "uvicorn")


def unpacked_sdist(directory: Path) -> Path:
    """The root of the unpacked sdist in ``directory``, downloading and unpacking it if needed."""
    for root in (directory, directory / f"sse_starlette-{VERSION}"):
        if (root / "tests").is_dir() and (root / "pyproject.toml").is_file():
            return root
    archive = directory / f"sse_starlette-{VERSION}.tar.gz"
    if not archive.is_file():
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
             f"sse-starlette=={VERSION}", "-d", str(directory)],
            check=True,
        )
    with tarfile.open(archive) as tar:
        tar.extractall(directory, filter="data")
    return directory / f"sse_starlette-{VERSION}"


def run_suite(root: Path, timeout: float, pytest_args: list[str]) -> int:
    # Inside the suite's tests/ so that its node id is tests/…, like the others'.
    shutil.copyfile(COMPAT / "check_shim.py", root / "tests" / "test_sse_fast_shim.py")
    targets = [] if any(arg.startswith("tests") for arg in pytest_args) else ["tests"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(COMPAT), os.environ.get("PYTHONPATH")])))
    command = [
        sys.executable, "-m", "pytest",  # -m: the sdist root is on sys.path, for `import tests.…`
        "-p", "sse_fast_shim",
        "-p", "no:cacheprovider",
        "-c", str(root / "pyproject.toml"),
        "--rootdir", str(root),
        f"--timeout={timeout}",
        "--continue-on-collection-errors",
        "--sse-fast-expected", str(COMPAT / "expected_failures.txt"),
        "-rfE",
        *targets,
        *pytest_args,
    ]
    return subprocess.run(command, cwd=root, env=env).returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sdist-dir", type=Path, help="where the sdist is (or goes); default: a temporary directory")
    parser.add_argument("--timeout", type=float, default=60, help="seconds per test (pytest-timeout); default 60")
    parser.add_argument("pytest_args", nargs="*", help="after --: more pytest arguments")
    args = parser.parse_args()
    missing = [name for name in NEEDED if importlib.util.find_spec(name) is None]
    if missing:
        print(f"missing: {', '.join(missing)}; run: pip install -r {COMPAT / 'requirements.txt'}", file=sys.stderr)
        return 2
    if args.sdist_dir is not None:
        args.sdist_dir.mkdir(parents=True, exist_ok=True)
        return run_suite(unpacked_sdist(args.sdist_dir.resolve()), args.timeout, args.pytest_args)
    with tempfile.TemporaryDirectory(prefix="sse-starlette-suite-") as directory:
        return run_suite(unpacked_sdist(Path(directory)), args.timeout, args.pytest_args)


if __name__ == "__main__":
    sys.exit(main())
