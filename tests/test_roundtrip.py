"""Round trip: what sse_fast encodes, our parser and httpx-sse read back (hypothesis).

The contract (README, "Conformance notes"): for any text in ``data``, ``id``,
``event`` and ``comment``, any ``retry`` and each separator, a conforming
client reads back

- an event only when ``data`` is not ``None``;
- ``data`` with every CRLF / CR turned into LF (each line terminator splits a
  ``data:`` line; the client joins them with LF);
- the event type with CR and LF removed, ``"message"`` when that leaves it
  empty (or it was not given);
- the last event ID with CR and LF removed; an ID containing U+0000 NULL is
  ignored by the client, which keeps the previous one;
- the reconnection time from the latest ``retry``;
- no comment at all.

sse-starlette 3.7's encoder is read the same way (its bytes are ours).
"""

from __future__ import annotations

import pytest
import sse_starlette
from hypothesis import given, settings
from hypothesis import strategies as st

from sse_fast import ServerSentEvent, _encoder_py
from sse_fast._parser import Event
from tests.parser_twins import TWINS, as_tuples, httpx_sse_events, parse_chunks


def _c_encode_fields(**fields):
    from sse_fast._encoder_c import encode_fields  # ImportError fails the case, never skips

    return encode_fields(**fields)


ENCODERS = {"cython": _c_encode_fields, "python": _encoder_py.encode_fields}

# text with the characters that matter here well represented
_special = st.sampled_from(
    ["\r", "\n", "\r\n", "\x00", " ", ":", "\ufeff", "\u2028", "\x85", "é", "😀", "data: "]
)
_text = st.lists(st.one_of(st.text(max_size=8), _special), max_size=6).map("".join)
_opt_text = st.none() | _text
_fields = st.fixed_dictionaries(
    {
        "data": _opt_text,
        "event": _opt_text,
        "id": _opt_text,
        "retry": st.none() | st.integers(0, 2**40),
        "comment": _opt_text,
    }
)


def _strip_eol(s: str) -> str:
    return s.replace("\r", "").replace("\n", "")


def whatwg_reading(items: list[dict]) -> list[tuple]:
    """What a WHATWG client reads from these events, by the contract above."""
    out = []
    last_id, retry = "", None
    for f in items:
        if f["id"] is not None and "\x00" not in f["id"]:
            last_id = _strip_eol(f["id"])
        if f["retry"] is not None:
            retry = f["retry"]
        if f["data"] is not None:
            etype = _strip_eol(f["event"] or "") or "message"
            data = f["data"].replace("\r\n", "\n").replace("\r", "\n")
            out.append((etype, data, last_id, retry))
    return out


def httpx_sse_reading(items: list[dict]) -> list[tuple]:
    """What httpx-sse 0.4.3 reads: it also dispatches blocks without data, and
    reports ``retry`` only for the event that carries the field."""
    out = []
    last_id = ""
    for f in items:
        if f["id"] is not None and "\x00" not in f["id"]:
            last_id = _strip_eol(f["id"])
        etype = _strip_eol(f["event"] or "")
        if f["data"] is None and not etype and not last_id and f["retry"] is None:
            continue
        data = "" if f["data"] is None else f["data"].replace("\r\n", "\n").replace("\r", "\n")
        out.append((etype or "message", data, last_id, f["retry"]))
    return out


def _chunks(stream: bytes, cuts: list[int]) -> list[bytes]:
    cuts = sorted({c % (len(stream) + 1) for c in cuts})
    return [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]


@pytest.mark.parametrize("encoder", sorted(ENCODERS))
@pytest.mark.parametrize("parser", sorted(TWINS))
@settings(max_examples=150, deadline=None)
@given(
    items=st.lists(_fields, min_size=1, max_size=5),
    sep=st.sampled_from(["\r\n", "\r", "\n"]),
    cuts=st.lists(st.integers(0, 10_000), max_size=5),
)
def test_round_trip_our_parser(parser, encoder, items, sep, cuts):
    """Both parser twins x both encoder twins (hypothesis tests cannot use function fixtures)."""
    stream = b"".join(ENCODERS[encoder](sep=sep, **f) for f in items)
    p = TWINS[parser]()
    events = [e for c in _chunks(stream, cuts) for e in p.feed(c)]
    assert as_tuples(events) == whatwg_reading(items)
    assert not p.pending  # every encoded event ends with its blank line


@settings(max_examples=150, deadline=None)
@given(
    items=st.lists(_fields, min_size=1, max_size=5),
    sep=st.sampled_from(["\r\n", "\r", "\n"]),
    cuts=st.lists(st.integers(0, 10_000), max_size=5),
)
def test_round_trip_httpx_sse(items, sep, cuts):
    stream = b"".join(ServerSentEvent(sep=sep, **f).encode() for f in items)
    assert as_tuples(httpx_sse_events(_chunks(stream, cuts))) == httpx_sse_reading(items)


@settings(max_examples=150, deadline=None)
@given(
    items=st.lists(
        _fields.filter(lambda f: f["data"] is not None and f["retry"] is None),
        min_size=1,
        max_size=5,
    ),
    sep=st.sampled_from(["\r\n", "\r", "\n"]),
)
def test_httpx_sse_agrees_on_events_with_data_and_no_retry(items, sep):
    stream = b"".join(ServerSentEvent(sep=sep, **f).encode() for f in items)
    ours = as_tuples(parse_chunks(TWINS["cython"], [stream]))
    assert ours == as_tuples(httpx_sse_events([stream])) == whatwg_reading(items)


@settings(max_examples=150, deadline=None)
@given(items=st.lists(_fields, min_size=1, max_size=4), sep=st.sampled_from(["\r\n", "\r", "\n"]))
def test_sse_starlette_encoding_reads_the_same(items, sep):
    ours = b"".join(ServerSentEvent(sep=sep, **f).encode() for f in items)
    theirs = b"".join(sse_starlette.ServerSentEvent(sep=sep, **f).encode() for f in items)
    assert ours == theirs
    assert as_tuples(parse_chunks(TWINS["python"], [theirs])) == whatwg_reading(items)


# --- the documented edge cases, one by one -------------------------------------------


def _read(*events: ServerSentEvent) -> list[Event]:
    return parse_chunks(TWINS["cython"], [b"".join(e.encode() for e in events)])


def test_id_with_null_is_ignored_by_the_client():
    got = _read(ServerSentEvent("a", id="1"), ServerSentEvent("b", id="2\x00"))
    assert [(e.data, e.id) for e in got] == [("a", "1"), ("b", "1")]


def test_event_name_empty_after_newline_removal_is_message():
    for name in ["", "\n", "\r\n", "\r\r"]:
        assert _read(ServerSentEvent("a", event=name))[0].event == "message"
    assert _read(ServerSentEvent("a", event="up\ndate"))[0].event == "update"


def test_id_newlines_removed():
    assert _read(ServerSentEvent("a", id="4\r\n2"))[0].id == "42"


def test_data_line_ends_become_lf():
    assert _read(ServerSentEvent("a\r\nb\rc\nd"))[0].data == "a\nb\nc\nd"
    assert _read(ServerSentEvent("a\n"))[0].data == "a\n"
    assert _read(ServerSentEvent("\r\n"))[0].data == "\n"


def test_no_data_no_event_but_id_and_retry_count():
    p = TWINS["python"]()
    assert p.feed(ServerSentEvent(id="7", retry=300, event="x", comment="hi").encode()) == []
    assert (p.last_event_id, p.retry) == ("7", 300)
    assert p.feed(ServerSentEvent("").encode()) == [Event("message", "", "7", 300)]


def test_comment_and_empty_event_are_invisible():
    assert _read(ServerSentEvent(comment="a\nb"), ServerSentEvent(), ServerSentEvent("x")) == [
        Event("message", "x", "", None)
    ]


def test_leading_spaces_survive():
    (e,) = _read(ServerSentEvent("  two", event=" sp", id=" 1"))
    assert (e.data, e.event, e.id) == ("  two", " sp", " 1")
