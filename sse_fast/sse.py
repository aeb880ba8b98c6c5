"""Compatibility path mirroring ``sse_starlette.sse``."""

from ._shutdown import AppStatus
from ._writer import SendTimeoutError
from .event import JSONServerSentEvent, ServerSentEvent, ensure_bytes
from .response import EventSourceResponse

__all__ = [
    "EventSourceResponse",
    "ServerSentEvent",
    "JSONServerSentEvent",
    "ensure_bytes",
    "SendTimeoutError",
    "AppStatus",
]
