"""The encoder twins: exact bytes, sse-starlette 3.7 equivalence, bad input."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sse_starlette.event import ServerSentEvent as RefEvent
from sse_starlette.event import ensure_bytes as ref_ensure_bytes

from sse_fast import ServerSentEvent

SEPS = ["\r\n", "\r", "\n"]


@pytest.mark.parametrize(
    "fields, expected",
    [
        ({}, b"\r\n"),
        ({"data": ""}, b"data: \r\n\r\n"),
        ({"data": "a"}, b"data: a\r\n\r\n"),
        ({"data": 5}, b"data: 5\r\n\r\n"),
        ({"data": "a\r\nb\rc\nd"}, b"data: a\r\ndata: b\r\ndata: c\r\ndata: d\r\n\r\n"),
        ({"data": "a\r\r\nb\n\n"}, b"data: a\r\ndata: \r\ndata: b\r\ndata: \r\ndata: \r\n\r\n"),
        ({"data": "\u00e9\u2028\x85"}, "data: \u00e9\u2028\x85\r\n\r\n".encode()),
        ({"id": "x\ny\r", "event": "e\r\nv"}, b"id: xy\r\nevent: ev\r\n\r\n"),
        ({"id": "", "event": ""}, b"id: \r\nevent: \r\n\r\n"),
        ({"retry": 0}, b"retry: 0\r\n\r\n"),
        (
            {"data": "d", "event": "e", "id": "1", "retry": 30, "comment": "c1\nc2"},
            b": c1\r\n: c2\r\nid: 1\r\nevent: e\r\ndata: d\r\nretry: 30\r\n\r\n",
        ),
        ({"comment": ""}, b": \r\n\r\n"),
    ],
)
def test_exact_bytes(impl, fields, expected):
    assert impl.encode_fields(**fields, sep="\r\n") == expected
    assert ServerSentEvent(**fields).encode() == expected


@pytest.mark.parametrize("sep", SEPS)
def test_separators(impl, sep):
    s = sep.encode()
    assert impl.encode_fields("a\nb", id="1", sep=sep) == b"id: 1" + s + b"data: a" + s + b"data: b" + s + s


def test_item_kinds(impl):
    assert impl.encode_item(b"raw", "\n") == b"raw"
    assert impl.encode_item(bytearray(b"ba"), "\n") == b"ba"
    assert impl.encode_item(memoryview(b"mv"), "\n") == b"mv"
    assert impl.encode_item("s", "\n") == b"data: s\n\n"
    assert impl.encode_item(3.5, "\r") == b"data: 3.5\r\r"
    assert impl.encode_item({"data": "x", "event": "e"}, "\n") == b"event: e\ndata: x\n\n"
    # an event keeps its own separator
    assert impl.encode_item(ServerSentEvent("x", sep="\n"), "\r\n") == b"data: x\n\n"


def test_dict_not_mutated(impl):
    d = {"data": "x\ny", "id": "1"}
    impl.encode_item(d, "\n")
    assert d == {"data": "x\ny", "id": "1"}


def test_subclass_encode_is_honoured(impl):
    class Custom(ServerSentEvent):
        __slots__ = ()

        def encode(self) -> bytes:
            return b"custom\n\n"

    assert impl.encode_item(Custom("x"), "\n") == b"custom\n\n"
    buf = impl.EventBuffer("\n")
    buf.append(Custom("x"))
    assert buf.take() == b"custom\n\n"


@pytest.mark.parametrize(
    "kwargs, exc, words",
    [
        ({"retry": "5"}, TypeError, "retry"),
        ({"retry": 1.5}, TypeError, "retry"),
        ({"retry": True}, TypeError, "retry"),
        ({"retry": -1}, ValueError, "retry"),
        ({"id": 5}, TypeError, "id"),
        ({"event": b"e"}, TypeError, "event"),
    ],
)
def test_bad_fields(impl, kwargs, exc, words):
    with pytest.raises(exc, match=words):
        impl.encode_fields(sep="\n", **kwargs)
    with pytest.raises(exc, match=words):
        impl.encode_item(dict(kwargs), "\n")
    with pytest.raises(exc, match=words):
        ServerSentEvent(**kwargs)


def test_bad_dict_key(impl):
    with pytest.raises(TypeError, match="'colour'"):
        impl.encode_item({"data": 1, "colour": "red"}, "\n")


def test_bad_sep(impl):
    for bad in ("", " ", "\n\n", "zz", "\r\n\r\n"):
        with pytest.raises(ValueError, match="sep"):
            impl.EventBuffer(bad)
        with pytest.raises(ValueError, match="sep"):
            impl.check_sep(bad)


def test_lone_surrogate_leaves_no_partial_event(impl):
    buf = impl.EventBuffer("\n")
    buf.append("ok")
    with pytest.raises(UnicodeEncodeError):
        buf.append({"data": "a", "comment": "\ud800"})
    assert buf.take() == b"data: ok\n\n"


def test_buffer_appends_and_take(impl):
    buf = impl.EventBuffer("\n")
    assert len(buf) == 0 and buf.take() == b""
    buf.append_str("a")
    buf.append_dict({"id": "1"})
    buf.append_bytes(b": c\n\n")
    buf.append_event(ServerSentEvent("e", sep="\r"))
    buf.append_fields("f", event="t")
    expected = b"data: a\n\nid: 1\n\n: c\n\ndata: e\r\revent: t\ndata: f\n\n"
    assert len(buf) == len(expected)
    assert buf.count == 5
    assert buf.take() == expected
    assert len(buf) == 0 and buf.count == 0


def test_buffer_large(impl):
    buf = impl.EventBuffer("\n")
    big = "y" * (3 << 20)
    buf.append(big)
    buf.append("z")
    out = buf.take()
    assert out == b"data: " + big.encode() + b"\n\ndata: z\n\n"
    buf.append("after")
    assert buf.take() == b"data: after\n\n"


def test_produce_batches_until_the_producer_suspends(impl):
    """Items ready together are one batch; the writer is woken once, when the producer suspends."""

    async def producer():
        for i in range(3):
            yield {"data": i}
        await asyncio.sleep(0.001)
        yield "late"

    async def main():
        loop = asyncio.get_running_loop()
        sb = impl.StreamBuffer("\n", 1 << 20, loop)
        batches = []

        async def writer():
            while True:
                if len(sb):
                    batches.append(sb.take())
                    continue
                if sb.closing:
                    return
                sb.wake = loop.create_future()
                await sb.wake

        w = loop.create_task(writer())
        await asyncio.sleep(0)  # the writer waits
        await impl.produce(producer(), sb)
        sb.closing = True
        sb.notify()
        await w
        assert batches == [b"data: 0\n\ndata: 1\n\ndata: 2\n\n", b"data: late\n\n"]

    asyncio.run(main())


def test_produce_awaits_room_at_the_bound(impl):
    """At ``high`` bytes (buffered plus in flight) the producer waits for ``room_made()``."""

    async def producer():
        for _ in range(10):
            yield "x"  # 9 bytes each with sep "\n"

    async def main():
        loop = asyncio.get_running_loop()
        sb = impl.StreamBuffer("\n", 20, loop)
        sb.inflight = 5
        task = loop.create_task(impl.produce(producer(), sb))
        await asyncio.sleep(0.01)
        assert len(sb) == 18 and sb.room is not None and not task.done()  # 18 + 5 >= 20
        sb.take()
        sb.inflight = 0
        sb.room_made()
        await asyncio.sleep(0.01)
        assert len(sb) == 27 and not task.done()  # 9 + 9 < 20, then 27 >= 20
        seen = 2  # the 3 buffered now are counted by the first take below
        while not task.done():
            seen += len(sb.take()) // 9
            sb.room_made()
            await asyncio.sleep(0)
        seen += len(sb.take()) // 9
        assert seen == 10

    asyncio.run(main())


def test_produce_propagates_errors(impl):
    async def producer():
        yield "a"
        raise KeyError("k")

    async def main():
        sb = impl.StreamBuffer("\n", 1 << 20, asyncio.get_running_loop())
        with pytest.raises(KeyError):
            await impl.produce(producer(), sb)
        assert sb.take() == b"data: a\n\n"

    asyncio.run(main())


def test_stream_buffer_refuses_a_bad_sep(impl):
    with pytest.raises(ValueError, match="sep"):
        impl.StreamBuffer("x", 10, None)


@pytest.mark.parametrize("sep", SEPS)
def test_ensure_bytes_dict_sep_key_is_overridden(impl, sep):
    """sse-starlette 3.7 builds ``ServerSentEvent(**{**item, "sep": sep})``: the argument wins."""
    item = {"data": "foo", "sep": "\r\n"}
    assert impl.ensure_bytes(item, sep) == f"data: foo{sep}{sep}".encode()
    assert impl.ensure_bytes(item, sep) == ref_ensure_bytes(dict(item), sep)
    assert item == {"data": "foo", "sep": "\r\n"}
    with pytest.raises(ValueError, match="sep"):
        impl.ensure_bytes("x", "\t")


# -- equivalence with sse-starlette 3.7, property based ----------------------

_line_ends = st.sampled_from(["\r\n", "\r", "\n", "\r\r\n", "\n\r", "\r\n\r\n"])
_text = st.lists(st.one_of(st.text(max_size=8), _line_ends), max_size=6).map("".join)
_opt_text = st.none() | _text
_data = st.none() | _text | st.integers() | st.floats(allow_nan=False) | st.lists(st.integers(), max_size=3)


@settings(max_examples=300, deadline=None)
@given(data=_data, event=_opt_text, id=_opt_text, retry=st.none() | st.integers(0, 10**12),
       comment=_opt_text, sep=st.sampled_from(SEPS))
def test_same_bytes_as_sse_starlette(data, event, id, retry, comment, sep):
    from sse_fast import _encoder_py

    from .conftest import load_twin

    expected = RefEvent(data, event=event, id=id, retry=retry, comment=comment, sep=sep).encode()
    item = {k: v for k, v in dict(data=data, event=event, id=id, retry=retry, comment=comment).items() if v is not None}
    for twin in (_encoder_py, load_twin("cython")):
        assert twin.encode_fields(data, event, id, retry, comment, sep) == expected
        assert twin.encode_item(dict(item), sep) == ref_ensure_bytes(dict(item), sep)
        if data is not None and not isinstance(data, (dict, bytes)):
            assert twin.encode_item(data, sep) == ref_ensure_bytes(data, sep)
        buf = twin.EventBuffer(sep)
        buf.append(dict(item))
        buf.append(ServerSentEvent(data, event=event, id=id, retry=retry, comment=comment, sep=sep))
        assert buf.take() == expected * 2
