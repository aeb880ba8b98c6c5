"""sse_fast: Server-Sent Events for ASGI, a faster drop-in for sse-starlette.

Public names (as ``sse_starlette``): ``EventSourceResponse``,
``ServerSentEvent``, ``JSONServerSentEvent``, ``ensure_bytes``,
``SendTimeoutError``, ``AppStatus``.

``IMPLEMENTATION`` is ``"cython"`` when the compiled encoder is in use and
``"python"`` when the pure-Python twin is (extension not built, or
``SSE_FAST_NO_EXTENSIONS=1``).
"""

from ._encoder import IMPLEMENTATION
from ._shutdown import AppStatus
from ._writer import SendTimeoutError
from .event import JSONServerSentEvent, ServerSentEvent, ensure_bytes
from .response import EventSourceResponse

__version__ = "0.1.0"

__all__ = [
    "EventSourceResponse",
    "ServerSentEvent",
    "JSONServerSentEvent",
    "ensure_bytes",
    "SendTimeoutError",
    "AppStatus",
    "IMPLEMENTATION",
    "__version__",
]
