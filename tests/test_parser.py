"""The event stream parser (WHATWG HTML 9.2.6), on both twins, and against httpx-sse.

Every test takes ``parser_cls`` and runs on the compiled and the pure twin.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sse_fast import _parser
from sse_fast._parser import Event
from tests.parser_twins import TWINS, as_tuples, httpx_sse_events, parse_chunks


@pytest.fixture(params=sorted(TWINS))
def parser_cls(request):
    return TWINS[request.param]


def parse(parser_cls, data: bytes) -> list[tuple]:
    return as_tuples(parse_chunks(parser_cls, [data]))


def M(data, id="", retry=None, event="message"):  # noqa: N802  (short: expected event)
    return (event, data, id, retry)


# --- the examples of the WHATWG spec (HTML 9.2.6 / 9.2.7) ---------------------------

SPEC_EXAMPLES = [
    # "data: YHOO / +2 / 10": one message, lines joined by LF
    (b"data: YHOO\ndata: +2\ndata: 10\n\n", [M("YHOO\n+2\n10")]),
    # comment, ids, the third block has no blank line after it: not dispatched
    (
        b": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\ndata:  third event\n",
        [M("first event", "1"), M("second event", "")],
    ),
    # "data" alone, twice: an empty string then a single LF; the last is unterminated
    (b"data\n\ndata\ndata\n\ndata:", [M(""), M("\n")]),
    # with and without the space after the colon: the same event twice
    (b"data:test\n\ndata: test\n\n", [M("test"), M("test")]),
    # named events (the add/remove example)
    (
        b"event: add\ndata: 73857293\n\nevent: remove\ndata: 2153\n\nevent: add\ndata: 113411\n\n",
        [M("73857293", event="add"), M("2153", event="remove"), M("113411", event="add")],
    ),
    # a keep-alive comment line between events
    (b"data: a\n\n:\n\n: keep-alive\n\ndata: b\n\n", [M("a"), M("b")]),
]


@pytest.mark.parametrize("stream,expected", SPEC_EXAMPLES)
@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
def test_spec_examples(parser_cls, stream, expected, eol):
    assert parse(parser_cls, stream.replace(b"\n", eol)) == expected


@pytest.mark.parametrize("stream,expected", SPEC_EXAMPLES)
def test_spec_examples_every_split(parser_cls, stream, expected):
    for i in range(len(stream) + 1):
        assert as_tuples(parse_chunks(parser_cls, [stream[:i], stream[i:]])) == expected, i
    assert (
        as_tuples(parse_chunks(parser_cls, [stream[i : i + 1] for i in range(len(stream))]))
        == expected
    )


# --- edge cases -------------------------------------------------------------------

EDGE_CASES = [
    # line ends: CRLF, CR, LF, mixed; CR LF is one line end, LF CR is two
    ("crlf", b"data: a\r\ndata: b\r\n\r\n", [M("a\nb")]),
    ("cr", b"data: a\rdata: b\r\r", [M("a\nb")]),
    ("mixed", b"data: a\rdata: b\ndata: c\r\n\n", [M("a\nb\nc")]),
    ("lf-cr is two ends", b"data: a\n\r", [M("a")]),
    ("cr cr", b"data: a\r\rdata: b\r\r", [M("a"), M("b")]),
    # data: accumulation and the final newline
    ("data empty value", b"data:\n\n", [M("")]),
    ("data one space removed", b"data:  two\n\n", [M(" two")]),
    ("data trailing space kept", b"data: x \n\n", [M("x ")]),
    ("data colon in value", b"data: a: b:c\n\n", [M("a: b:c")]),
    ("data empty lines", b"data\ndata\ndata: x\ndata\n\n", [M("\n\nx\n")]),
    ("data tab not stripped", b"data:\tx\n\n", [M("\tx")]),
    # event type
    ("event default", b"data: x\n\n", [M("x")]),
    ("event empty is message", b"event:\ndata: x\n\n", [M("x")]),
    ("event no colon is message", b"event\ndata: x\n\n", [M("x")]),
    ("event last wins", b"event: a\nevent: b\ndata: x\n\n", [M("x", event="b")]),
    (
        "event reset after dispatch",
        b"event: a\ndata: x\n\ndata: y\n\n",
        [M("x", event="a"), M("y")],
    ),
    ("event-only block does not leak", b"event: a\n\ndata: y\n\n", [M("y")]),
    ("event with spaces", b"event:  a b \ndata: x\n\n", [M("x", event=" a b ")]),
    ("event non-ascii", "event: ünï ✓\ndata: x\n\n".encode(), [M("x", event="ünï ✓")]),
    # id and the last event ID buffer
    ("id persists", b"id: 7\ndata: a\n\ndata: b\n\n", [M("a", "7"), M("b", "7")]),
    ("id after data same event", b"data: a\nid: 9\n\n", [M("a", "9")]),
    (
        "id with NULL ignored",
        b"id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\n",
        [M("a", "1"), M("b", "1")],
    ),
    ("id NULL only ignored", b"id: 1\n\nid: \x00\ndata: b\n\n", [M("b", "1")]),
    ("id empty resets", b"id: 1\ndata: a\n\nid:\ndata: b\n\n", [M("a", "1"), M("b", "")]),
    ("id no colon resets", b"id: 1\ndata: a\n\nid\ndata: b\n\n", [M("a", "1"), M("b", "")]),
    ("id-only block: no event", b"id: 5\n\ndata: b\n\n", [M("b", "5")]),
    ("id non-ascii", "id: é✓😀\ndata: a\n\n".encode(), [M("a", "é✓😀")]),
    ("id keeps spaces", b"id:  a \ndata: b\n\n", [M("b", " a ")]),
    # retry: ASCII digits only
    ("retry", b"retry: 1500\ndata: a\n\n", [M("a", retry=1500)]),
    ("retry persists", b"retry: 10\ndata: a\n\ndata: b\n\n", [M("a", retry=10), M("b", retry=10)]),
    ("retry zero", b"retry: 0\ndata: a\n\n", [M("a", retry=0)]),
    ("retry leading zeros", b"retry: 007\ndata: a\n\n", [M("a", retry=7)]),
    (
        "retry big",
        b"retry: 123456789012345678901234567890\ndata: a\n\n",
        [M("a", retry=123456789012345678901234567890)],
    ),
    (
        "retry 18 digits",
        b"retry: 999999999999999999\ndata: a\n\n",
        [M("a", retry=999999999999999999)],
    ),
    ("retry plus ignored", b"retry: +5\ndata: a\n\n", [M("a")]),
    ("retry minus ignored", b"retry: -5\ndata: a\n\n", [M("a")]),
    ("retry underscore ignored", b"retry: 1_000\ndata: a\n\n", [M("a")]),
    ("retry empty ignored", b"retry:\ndata: a\n\n", [M("a")]),
    ("retry two spaces ignored", b"retry:  5\ndata: a\n\n", [M("a")]),
    ("retry trailing space ignored", b"retry: 5 \ndata: a\n\n", [M("a")]),
    ("retry float ignored", b"retry: 1.5\ndata: a\n\n", [M("a")]),
    ("retry fullwidth digit ignored", "retry: ５\ndata: a\n\n".encode(), [M("a")]),
    ("retry bad keeps previous", b"retry: 5\n\nretry: x\ndata: a\n\n", [M("a", retry=5)]),
    ("retry-only block: no event", b"retry: 5\n\n", []),
    # comments and unknown fields
    ("comment", b": hi\ndata: a\n: there\n\n", [M("a")]),
    ("comment colon only", b":\ndata: a\n\n", [M("a")]),
    ("comment-only block", b": x\n\n", []),
    ("unknown field", b"foo: bar\ndata: a\n\n", [M("a")]),
    ("field names are case-sensitive", b"Data: a\nEVENT: x\nID: 1\nRetry: 5\n\n", []),
    ("space before colon", b"data : a\n\n", []),
    ("leading space in name", b" data: a\n\n", []),
    ("name is whole line without colon", b"datax\n\n", []),
    # no dispatch of an incomplete event at the end of the stream
    ("incomplete event", b"data: a\n\ndata: b\n", [M("a")]),
    ("unterminated line", b"data: a\n\ndata: b", [M("a")]),
    ("unterminated blank", b"data: a\n", []),
    # UTF-8 decoding
    ("non-ascii data", "data: héllo wörld ✓ 日本 😀\n\n".encode(), [M("héllo wörld ✓ 日本 😀")]),
    ("invalid utf-8 replaced", b"data: a\xffb\xe2\x9cc\n\n", [M("a\ufffdb\ufffdc")]),
    ("truncated utf-8 before eol", b"data: a\xe2\x9c\n\n", [M("a\ufffd")]),
    ("NULL in data kept", b"data: a\x00b\n\n", [M("a\x00b")]),
    (
        "only CR LF split lines",
        "data: a\u2028b\u0085c\x0bd\x0ce\x1cf\n\n".encode(),
        [M("a\u2028b\u0085c\x0bd\x0ce\x1cf")],
    ),
    # byte order mark: stripped once, at the very start only
    ("bom stripped", b"\xef\xbb\xbfdata: a\n\n", [M("a")]),
    (
        "second bom kept (field ignored)",
        b"\xef\xbb\xbf\xef\xbb\xbfdata: a\n\ndata: b\n\n",
        [M("b")],
    ),
    ("bom later is data", b"data: a\n\ndata: \xef\xbb\xbfb\n\n", [M("a"), M("\ufeffb")]),
    ("partial bom is not a bom", b"\xef\xbbdata: a\n\ndata: b\n\n", [M("b")]),
    ("bom then eol", b"\xef\xbb\xbf\ndata: a\n\n", [M("a")]),
    ("bom alone", b"\xef\xbb\xbf", []),
    ("empty stream", b"", []),
]


@pytest.mark.parametrize("name,stream,expected", EDGE_CASES, ids=[c[0] for c in EDGE_CASES])
def test_edge_cases(parser_cls, name, stream, expected):
    assert parse(parser_cls, stream) == expected


@pytest.mark.parametrize("name,stream,expected", EDGE_CASES, ids=[c[0] for c in EDGE_CASES])
def test_edge_cases_every_split(parser_cls, name, stream, expected):
    """Chunk boundaries at every byte position: two chunks, three chunks, one byte per chunk."""
    n = len(stream)
    for i in range(n + 1):
        assert as_tuples(parse_chunks(parser_cls, [stream[:i], stream[i:]])) == expected, i
    if n <= 24:
        for i in range(n + 1):
            for j in range(i, n + 1):
                chunks = [stream[:i], stream[i:j], stream[j:]]
                assert as_tuples(parse_chunks(parser_cls, chunks)) == expected, (i, j)
    assert as_tuples(parse_chunks(parser_cls, [stream[k : k + 1] for k in range(n)])) == expected


@pytest.mark.parametrize("name,stream,expected", EDGE_CASES, ids=[c[0] for c in EDGE_CASES])
def test_feed_count_matches_feed(parser_cls, name, stream, expected):
    for chunks in ([stream], [stream[k : k + 1] for k in range(len(stream))]):
        a, b = parser_cls(), parser_cls()
        events = [e for c in chunks for e in a.feed(c)]
        count = sum(b.feed_count(c) for c in chunks)
        assert count == len(events) == len(expected)
        assert (b.last_event_id, b.retry, b.events_dispatched) == (
            a.last_event_id,
            a.retry,
            a.events_dispatched,
        )


def test_cr_at_chunk_end_then_lf(parser_cls):
    p = parser_cls()
    assert p.feed(b"data: a\r") == []
    assert p.feed(b"\ndata: b\r") == []
    assert p.feed(b"\n\r") == [Event("message", "a\nb", "", None)]
    # the LF right after that last CR is part of it, not another blank line
    assert p.feed(b"\n") == []
    assert p.feed(b"data: c\r\r") == [Event("message", "c", "", None)]


def test_cr_then_empty_chunk_then_lf(parser_cls):
    p = parser_cls()
    assert p.feed(b"data: a\r") == []
    assert p.feed(b"") == []
    assert p.feed(b"\n") == []
    assert [e.data for e in p.feed(b"\n")] == ["a"]


def test_events_returned_by_the_chunk_that_completes_them(parser_cls):
    p = parser_cls()
    assert p.feed(b'id: 1\nevent: tick\ndata: {"n"') == []
    assert p.last_event_id == "1"  # the buffer, set before dispatch
    assert p.feed(b": 1}\n") == []
    assert p.feed(b"\ndata: x\n\nda") == [
        Event("tick", '{"n": 1}', "1", None),
        Event("message", "x", "1", None),
    ]
    assert p.feed(b"ta: y\n\n") == [Event("message", "y", "1", None)]
    assert p.events_dispatched == 3


def test_utf8_split_inside_a_character(parser_cls):
    raw = "data: 日本😀\n\n".encode()
    for i in range(len(raw) + 1):
        assert [e.data for e in parse_chunks(parser_cls, [raw[:i], raw[i:]])] == ["日本😀"]


def test_bom_split_across_chunks(parser_cls):
    p = parser_cls()
    assert p.feed(b"\xef") == []
    assert p.feed(b"\xbb") == []
    assert p.feed(b"\xbfdata: a\n") == []
    assert p.feed(b"\n") == [Event("message", "a", "", None)]


def test_state_initial(parser_cls):
    p = parser_cls()
    assert p.last_event_id == ""
    assert p.retry is None
    assert p.events_dispatched == 0
    assert p.pending is False


def test_pending_and_close(parser_cls):
    p = parser_cls()
    p.feed(b"id: 3\nretry: 50\ndata: a\n")
    assert p.pending is True
    p.close()  # end of stream: the incomplete event is discarded
    assert p.pending is False
    assert (p.last_event_id, p.retry) == ("3", 50)
    # the next stream starts afresh (its BOM is stripped again)
    assert p.feed(b"\xef\xbb\xbfdata: b\n\n") == [Event("message", "b", "3", 50)]
    p.feed(b"da")
    assert p.pending is True


@pytest.mark.parametrize("kind", [bytearray, memoryview])
def test_feed_accepts_bytes_like(parser_cls, kind):
    p = parser_cls()
    assert p.feed(kind(b"data: a\n\n")) == [Event("message", "a", "", None)]
    assert p.feed_count(kind(b"data: a\n\n")) == 1


@pytest.mark.parametrize("bad", ["data: a\n\n", None, 5, [b"x"]])
def test_feed_rejects_non_bytes(parser_cls, bad):
    p = parser_cls()
    with pytest.raises(TypeError, match="chunk must be bytes"):
        p.feed(bad)
    with pytest.raises(TypeError, match="chunk must be bytes"):
        p.feed_count(bad)


def _event_classes():
    from sse_fast import _parser_c, _parser_py

    return {"cython": _parser_c.Event, "python": _parser_py.Event}


@pytest.mark.parametrize("impl", ["cython", "python"])
def test_event_object(impl):
    cls = _event_classes()[impl]
    e = cls("tick", '{"a": 1}', "3", 100)
    assert (e.event, e.data, e.id, e.retry) == ("tick", '{"a": 1}', "3", 100)
    assert e == cls("tick", '{"a": 1}', "3", 100)
    assert e != cls("tick", '{"a": 1}', "4", 100)
    assert e != ("tick", '{"a": 1}', "3", 100)
    assert e.json() == {"a": 1}
    assert repr(e) == "Event(event='tick', data='{\"a\": 1}', id='3', retry=100)"
    assert cls() == cls("message", "", "", None)
    with pytest.raises(TypeError):
        hash(e)
    assert pickle.loads(pickle.dumps(e)) == e
    e.data = "changed"
    assert e.data == "changed"


def test_event_classes_compare_across_twins():
    c, p = _event_classes()["cython"], _event_classes()["python"]
    assert c("a", "b", "c", 1) == p("a", "b", "c", 1)
    assert p("a", "b", "c", 1) == c("a", "b", "c", 1)
    assert c("a", "b", "c", 1) != p("a", "b", "c", 2)


@pytest.mark.parametrize(
    "bad", [{"retry": "5"}, {"retry": 1.5}, {"retry": True}, {"data": None}, {"event": 5}]
)
def test_compiled_event_checks_types(bad):
    with pytest.raises(TypeError):
        _event_classes()["cython"](**bad)


def test_both_twins_return_the_same_event_class():
    """With the compiled twin chosen, both twins build ``sse_fast._parser.Event``
    (the compiled class); in a pure run (SSE_FAST_NO_EXTENSIONS=1) the pure twin
    builds the pure class, and the events of the two twins still compare equal."""
    (a,) = TWINS["cython"]().feed(b"data: a\n\n")
    (b,) = TWINS["python"]().feed(b"data: a\n\n")
    assert a == b and b == a
    if _parser.IMPLEMENTATION == "cython":
        assert type(a) is type(b) is Event
    else:
        assert type(b) is Event


@pytest.mark.skipif(
    os.environ.get("SSE_FAST_NO_EXTENSIONS", "") not in ("", "0"),
    reason="SSE_FAST_NO_EXTENSIONS is set: the pure-twin run deselects compiled checks",
)
def test_compiled_twin_is_the_default():
    """In a fresh interpreter without SSE_FAST_NO_EXTENSIONS the compiled parser is chosen."""
    env = {k: v for k, v in os.environ.items() if k != "SSE_FAST_NO_EXTENSIONS"}
    code = "from sse_fast import _parser; print(_parser.IMPLEMENTATION, _parser.EventStreamParser.__module__)"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["cython", "sse_fast._parser_c"]
    env["SSE_FAST_NO_EXTENSIONS"] = "1"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["python", "sse_fast._parser_py"]


def test_chooser_names():
    assert _parser.IMPLEMENTATION in ("cython", "python")
    assert _parser.PyEventStreamParser is TWINS["python"]


# --- property tests: random streams, random chunking, both twins agree --------------

_PIECES = [
    b"data", b"id", b"event", b"retry", b"x", b":", b" ", b"\r", b"\n", b"\r\n", b"1", b"0",
    b"\x00", b"\xef\xbb\xbf", b"\xe2\x9c", b"\x93", b"\xff", b"+", b"da", b"ta",
]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    pieces=st.lists(st.sampled_from(_PIECES), max_size=40),
    cuts=st.lists(st.integers(0, 200), max_size=6),
)
def test_twins_agree_on_random_streams(pieces, cuts):
    stream = b"".join(pieces)
    cuts = sorted({c % (len(stream) + 1) for c in cuts})
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    results = []
    for cls in (TWINS["cython"], TWINS["python"]):
        p = cls()
        events = [e for c in chunks for e in p.feed(c)]
        whole = cls()
        results.append(
            (
                as_tuples(events),
                p.last_event_id,
                p.retry,
                as_tuples(whole.feed(stream)),
                whole.last_event_id,
            )
        )
    assert results[0] == results[1]
    assert results[0][0] == results[0][3]


# --- httpx-sse on the same inputs ----------------------------------------------------

# streams any conforming client reads the same way: httpx-sse agrees with us on these
AGREE = [
    b"data: YHOO\ndata: +2\ndata: 10\n\n",
    b"event: add\ndata: 73857293\n\nevent: remove\ndata: 2153\n\n",
    b"data:test\n\ndata: test\n\n",
    b"data\n\ndata\ndata\n\ndata:",
    b": comment\ndata: a\r\ndata: b\r\rdata: c\n\n",
    "id: é\nevent: ✓\ndata: 日本 😀\n\n".encode(),
    b"id: 1\ndata: a\n\nid: 2\x00\ndata: b\n\n",
    b"data: a\n\ndata: b",
    "data: a\u2028b\x85c\n\n".encode(),
]


@pytest.mark.parametrize("stream", AGREE)
def test_httpx_sse_agrees(parser_cls, stream):
    for chunks in ([stream], [stream[k : k + 1] for k in range(len(stream))]):
        ours = as_tuples(parse_chunks(parser_cls, chunks))
        theirs = as_tuples(httpx_sse_events(chunks))
        assert ours == theirs


# streams where httpx-sse 0.4.3 reads something a WHATWG client does not
# (our expectation, httpx-sse's reading)
DIFFER = [
    # an id-only block dispatches nothing in a browser; httpx-sse yields an empty event
    ("id-only block", b"id: 5\n\n", [], [("message", "", "5", None)]),
    # once an id was seen, httpx-sse turns every later comment-only block (a ping) into an event
    (
        "ping after id",
        b"id: 1\ndata: a\n\n: ping\n\n",
        [M("a", "1")],
        [("message", "a", "1", None), ("message", "", "1", None)],
    ),
    # an event field without data dispatches nothing in a browser
    ("event-only block", b"event: x\n\n", [], [("x", "", "", None)]),
    # retry-only: a browser sets the reconnection time and dispatches nothing
    ("retry-only block", b"retry: 5\n\n", [], [("message", "", "", 5)]),
    # retry is ASCII digits only; httpx-sse uses int(), which takes signs, spaces and underscores
    ("retry sign", b"retry: +5\ndata: a\n\n", [M("a")], [("message", "a", "", 5)]),
    ("retry negative", b"retry: -5\ndata: a\n\n", [M("a")], [("message", "a", "", -5)]),
    ("retry underscore", b"retry: 1_000\ndata: a\n\n", [M("a")], [("message", "a", "", 1000)]),
    # the reconnection time persists (it is the stream's, not the event's); httpx-sse
    # reports only a retry field inside the same event
    (
        "retry persists",
        b"retry: 5\ndata: a\n\ndata: b\n\n",
        [M("a", retry=5), M("b", retry=5)],
        [("message", "a", "", 5), ("message", "b", "", None)],
    ),
    # a leading byte order mark is stripped by the UTF-8 decode step; httpx-sse keeps it,
    # so the first field name becomes "\ufeffdata" and is ignored
    ("bom", b"\xef\xbb\xbfdata: a\n\ndata: b\n\n", [M("a"), M("b")], [("message", "b", "", None)]),
]


@pytest.mark.parametrize("name,stream,ours,theirs", DIFFER, ids=[d[0] for d in DIFFER])
def test_httpx_sse_differs(parser_cls, name, stream, ours, theirs):
    assert as_tuples(parse_chunks(parser_cls, [stream])) == ours
    assert as_tuples(httpx_sse_events([stream])) == theirs


def test_json_data_round_trip(parser_cls):
    payload = {"n": 1, "text": "line1\nline2", "u": "ü✓"}
    body = b"data: " + json.dumps(payload, ensure_ascii=False).encode() + b"\n\n"
    (ev,) = parse_chunks(parser_cls, [body])
    assert ev.json() == payload
