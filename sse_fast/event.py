"""Events: ``ServerSentEvent``, ``JSONServerSentEvent`` and ``ensure_bytes``.

Mirrors ``sse_starlette.event``: a project switches by replacing the package name.
"""

from __future__ import annotations

import json
from typing import Any

from . import _encoder
from ._encoder_py import check_fields

__all__ = ["ServerSentEvent", "JSONServerSentEvent", "ensure_bytes"]


class ServerSentEvent:
    """One event of an event stream (WHATWG HTML 9.2, "event stream").

    Args:
        data: any object; ``str(data)`` becomes one ``data:`` field per line
            (split on CRLF, CR and LF). ``None``: no ``data`` field.
        event: the event type the client dispatches (``message`` when absent);
            CR and LF are removed.
        id: the last event ID the client will send back in ``Last-Event-ID``;
            CR and LF are removed.
        retry: the client's reconnection time, in milliseconds (``int`` >= 0).
        comment: any object; ``str(comment)`` becomes one ``:`` line per line.
            Clients ignore comments; they keep connections alive.
        sep: line terminator, ``"\\r\\n"`` (default), ``"\\r"`` or ``"\\n"``.

    Raises:
        TypeError: ``retry`` is not an ``int`` (``bool`` is refused), or
            ``id``/``event`` is not a ``str``.
        ValueError: ``retry`` is negative, or ``sep`` is not a line terminator.

    The fields stay plain mutable attributes (``data``, ``event``, ``id``,
    ``retry``, ``comment``) as in sse-starlette; they are checked again when
    the event is encoded.
    """

    __slots__ = ("data", "event", "id", "retry", "comment", "_sep")

    DEFAULT_SEPARATOR = "\r\n"

    def __init__(
        self,
        data: Any | None = None,
        *,
        event: str | None = None,
        id: str | None = None,
        retry: int | None = None,
        comment: str | None = None,
        sep: str | None = None,
    ) -> None:
        if retry is not None or (id is not None and type(id) is not str) or (event is not None and type(event) is not str):
            check_fields(event, id, retry)  # the encoder's own rules, checked early
        self.data = data
        self.event = event
        self.id = id
        self.retry = retry
        self.comment = comment
        self._sep = self.DEFAULT_SEPARATOR if sep is None else _encoder.check_sep(sep)

    @property
    def sep(self) -> str:
        """The line terminator this event is encoded with."""
        return self._sep

    def encode(self) -> bytes:
        """Return the event as UTF-8 bytes, ending with an empty line.

        Raises:
            TypeError, ValueError: a field was set to a bad value after construction.
        """
        return _encoder.encode_fields(self.data, self.event, self.id, self.retry, self.comment, self._sep)

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{name}={getattr(self, name)!r}"
            for name in ("data", "event", "id", "retry", "comment")
            if getattr(self, name) is not None
        )
        return f"{type(self).__name__}({fields})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ServerSentEvent):
            return NotImplemented
        return (self.data, self.event, self.id, self.retry, self.comment, self._sep) == (
            other.data,
            other.event,
            other.id,
            other.retry,
            other.comment,
            other._sep,
        )

    __hash__ = None  # type: ignore[assignment]  # mutable


class JSONServerSentEvent(ServerSentEvent):
    """A ``ServerSentEvent`` whose ``data`` is serialised as compact JSON.

    ``json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)``:
    no spaces, non-ASCII kept as UTF-8, bytes identical to sse-starlette's.
    ``data=None`` writes no ``data`` field. Other arguments as ``ServerSentEvent``.

    Raises:
        ValueError: ``data`` holds NaN or an infinity (not JSON).
        TypeError: ``data`` is not JSON serialisable.
    """

    __slots__ = ()

    def __init__(self, data: Any | None = None, *args: Any, **kwargs: Any) -> None:
        if data is not None:
            data = json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        super().__init__(data, *args, **kwargs)


_encoder.set_event_class(ServerSentEvent)


#: ``ensure_bytes(data, sep) -> bytes``: one content item as event stream bytes, as
#: ``sse_starlette.sse.ensure_bytes`` (the compiled twin's where built; its docstring
#: gives the rules and errors)
ensure_bytes = _encoder.ensure_bytes
