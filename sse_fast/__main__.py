"""Command line: ``python -m sse_fast demo [--host H] [--port P] [--backend B]``.

Runs the demo app (``sse_fast.demo``) under uvicorn, with uvloop and httptools
when they are installed, no access log.
"""

from __future__ import annotations

import argparse
import importlib.util
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
    args = parser.parse_args(argv)

    if args.command == "demo":
        if not 0 <= args.port <= 65535:
            parser.error(f"--port must be in 0..65535, got {args.port}")
        try:
            import uvicorn
        except ImportError:
            sys.stderr.write("the demo needs uvicorn: pip install 'sse_fast[demo]'\n")
            return 2
        from .demo import create_app

        try:
            app = create_app(args.backend)
        except ImportError as exc:
            sys.stderr.write(f"--backend {args.backend} needs sse-starlette ({exc}): pip install 'sse_fast[compare]'\n")
            return 2
        loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
        http = "httptools" if importlib.util.find_spec("httptools") else "h11"
        print(
            f"sse_fast demo ({args.backend}) on http://{args.host}:{args.port}/  "
            f"(loop={loop}, http={http}); try: curl -N http://{args.host}:{args.port}/events",
            flush=True,
        )
        uvicorn.run(app, host=args.host, port=args.port, loop=loop, http=http, access_log=False, log_level=args.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
