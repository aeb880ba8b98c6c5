"""Command line: ``python -m sse_fast demo [--host H] [--port P] [--backend B] [--broadcast-url URL] [--workers N]``.

Runs the demo app (``sse_fast.demo``) under uvicorn, with uvloop and httptools
when they are installed, no access log. ``--broadcast-url redis://...`` puts
the chat on Redis, so that ``--workers N`` (or several machines) serve one chat.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the command; returns the process exit status."""
    parser = argparse.ArgumentParser(prog="python -m sse_fast", description="sse_fast tools")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the demo server (uvicorn) streaming live events")
    demo.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    demo.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    demo.add_argument(
        "--backend",
        default="sse_fast",
        choices=["sse_fast", "sse_starlette"],
        help="whose EventSourceResponse streams (sse_starlette: for comparisons; needs sse-starlette, "
        "e.g. pip install 'sse_fast[compare]')",
    )
    demo.add_argument("--log-level", default="info", help="uvicorn log level (default info)")
    demo.add_argument(
        "--broadcast-url",
        default=os.environ.get("SSE_FAST_BROADCAST_URL") or None,
        help="the chat's broadcast backend: a Redis URL (redis://127.0.0.1:6379/0) shares it between "
        "workers and machines (needs 'sse_fast[redis]'); default: in memory, this process "
        "(environment: SSE_FAST_BROADCAST_URL)",
    )
    demo.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (default 1)")
    args = parser.parse_args(argv)

    if args.command == "demo":
        if not 0 <= args.port <= 65535:
            parser.error(f"--port must be in 0..65535, got {args.port}")
        if args.workers < 1:
            parser.error(f"--workers must be >= 1, got {args.workers}")
        try:
            import uvicorn
        except ImportError:
            sys.stderr.write("the demo needs uvicorn: pip install 'sse_fast[demo]'\n")
            return 2
        from .demo import create_app

        try:
            app = create_app(args.backend, args.broadcast_url)
        except ImportError as exc:
            need = "redis" if "redis" in str(exc) else "compare"
            sys.stderr.write(f"{exc}: pip install 'sse_fast[{need}]'\n")
            return 2
        except ValueError as exc:
            parser.error(f"--broadcast-url: {exc}")
        loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
        http = "httptools" if importlib.util.find_spec("httptools") else "h11"
        print(
            f"sse_fast demo ({args.backend}) on http://{args.host}:{args.port}/  "
            f"(loop={loop}, http={http}, chat broadcast={app.state.chat_broadcast.backend.url}, "
            f"workers={args.workers}); try: curl -N http://{args.host}:{args.port}/events",
            flush=True,
        )
        common = dict(host=args.host, port=args.port, loop=loop, http=http, access_log=False, log_level=args.log_level)
        if args.workers == 1:
            uvicorn.run(app, **common)
        else:
            # each worker process builds its own app from the environment
            os.environ["SSE_FAST_DEMO_BACKEND"] = args.backend
            os.environ["SSE_FAST_BROADCAST_URL"] = args.broadcast_url or ""
            uvicorn.run("sse_fast.demo:app_from_env", factory=True, workers=args.workers, **common)
    return 0


if __name__ == "__main__":
    sys.exit(main())
