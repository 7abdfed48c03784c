"""The stream reader against an upstream that sends anything at all.

The stand-in writes what the team thought of; these tests write what nobody did: arbitrary
bytes, invalid UTF-8, every line end, fields without their space, comments, `event:`, `id:` and
`retry:` lines, bare JSON, JSON of every wrong shape, and think tags cut anywhere. Whatever
arrives, the reader raises nothing but `UpstreamError` (it records it; `stream_chat` raises it),
yields only text that can be sent and stored, and never loses text it had been given before
an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chat.testing.fakeupstream import DONE_EVENT, FakeUpstream, delta_chunk, sse_event
from chat.tests.fixtures_upstream import (
    MODEL,
    chat_body,
    collect,
    config_for,
    read_body,
)
from chat.upstream import http as upstream_http
from chat.upstream.catalogue import fetch_models, parse_catalogue
from chat.upstream.client import Finish, ReasoningDelta, RequestIds, TextDelta, Usage
from chat.upstream.config import UpstreamConfig
from chat.upstream.errors import UpstreamError
from chat.upstream.http import aclose_clients, error_for_status
from chat.upstream.lava import fetch_request_cost
from chat.upstream.reasoning import Piece, ReasoningSplitter
from chat.upstream.sse import MAX_EVENT_BYTES, SSEDecoder, SSEEvent

PROPERTY = settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)  # fmt: skip
FINISHED = sse_event(delta_chunk({}, finish_reason="stop")) + DONE_EVENT


def split_at(data: bytes, points: list[int]) -> list[bytes]:
    bounds = [0, *sorted(p % (len(data) + 1) for p in points), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def texts(result: Any) -> tuple[str, str]:
    return result.text(ReasoningDelta), result.text(TextDelta)


def assert_well_formed(result: Any) -> None:
    """Only known events, with text that UTF-8 writes and PostgreSQL stores."""
    assert result.error is None or isinstance(result.error, UpstreamError)
    for item in result.events:
        assert isinstance(item, TextDelta | ReasoningDelta | Usage | Finish | RequestIds)
        if isinstance(item, TextDelta | ReasoningDelta):
            assert type(item.text) is str and item.text
            item.text.encode("utf-8")
            assert "\x00" not in item.text
        elif isinstance(item, Usage):
            for number in (item.prompt_tokens, item.completion_tokens, item.cached_tokens):
                assert type(number) is int and 0 <= number < 2**31
        elif isinstance(item, Finish):
            assert item.reason is None or (type(item.reason) is str and len(item.reason) <= 64)
            if item.reason is not None:
                item.reason.encode("utf-8")
    assert [type(e) for e in result.events].count(Finish) <= 1


# What a hostile upstream writes

# Text as JSON carries it: any code point, lone surrogates, and the tags reasoning models use.
TEXT = st.lists(
    st.one_of(
        st.characters(exclude_categories=[]),
        st.characters(categories=["Cs"]),
        st.sampled_from(["<think>", "</think>", "<th", "</", "\n", "\r\n", "\x00", "\ud83d"]),
    ),
    max_size=12,
).map("".join)
# Any JSON value, with the numbers JSON itself cannot write (Python writes Infinity and NaN).
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=8,
)
NOT_TEXT = st.none() | st.booleans() | st.integers() | st.floats() | st.lists(JSON, max_size=3)
NUMBERISH = (
    st.integers()
    | st.integers(min_value=2**31 - 2, max_value=2**70)
    | st.floats()
    | st.booleans()
    | st.none()
    | st.text(max_size=12)
)
DELTA = st.fixed_dictionaries(
    {}, optional={"role": JSON, "content": JSON, "reasoning_content": JSON, "reasoning": JSON}
)
CHOICE = st.fixed_dictionaries(
    {}, optional={"index": JSON, "delta": DELTA | JSON, "finish_reason": JSON}
)
USAGE = st.fixed_dictionaries(
    {},
    optional={
        "prompt_tokens": NUMBERISH,
        "completion_tokens": NUMBERISH,
        "prompt_tokens_details": st.fixed_dictionaries({}, optional={"cached_tokens": NUMBERISH})
        | JSON,
    },
)
CHUNK = st.fixed_dictionaries(
    {},
    optional={
        "choices": st.lists(CHOICE | JSON, max_size=3) | JSON,
        "usage": USAGE | JSON,
        "error": JSON,
    },
)
PAYLOAD = st.one_of(
    CHUNK.map(json.dumps),
    JSON.map(json.dumps),
    st.sampled_from(["[DONE]", " [DONE]", "{", "[" * 5000, '{"a": ' * 3000, "1e999", "-"]),
    st.text(max_size=30),
)
FIELD_VALUE = st.text(max_size=12) | st.sampled_from(["٣", "²", "9" * 5000, "12", "error"])
LINE = st.one_of(
    PAYLOAD.map(lambda p: f"data: {p}"),
    PAYLOAD.map(lambda p: f"data:{p}"),
    PAYLOAD,
    st.sampled_from(["", "", ": ping", ":", "data", "data:", "event", "id"]),
    FIELD_VALUE.map(lambda v: f"event: {v}"),
    FIELD_VALUE.map(lambda v: f"id: {v}"),
    FIELD_VALUE.map(lambda v: f"retry: {v}"),
    FIELD_VALUE.map(lambda v: f"retry:{v}"),
    st.text(max_size=20),
)
EOL = st.sampled_from([b"\n", b"\r", b"\r\n", b"\n\n", b"\r\r", b"\r\n\r\n"])
PART = st.one_of(
    st.tuples(LINE, EOL).map(lambda pair: pair[0].encode() + pair[1]),
    st.binary(max_size=12),
    st.sampled_from([b"\xef\xbb\xbf", b"\xf0\x9f", b"\x99\x82", b"\xed\xa0\xbd", b"\xff", b"\r"]),
)
STREAM = st.lists(PART, max_size=14).map(b"".join)
POINTS = st.lists(st.integers(min_value=0), max_size=10)


# Properties


@PROPERTY
@given(
    body=STREAM,
    points=POINTS,
    split_think=st.booleans(),
    hold=st.booleans(),
    finish=st.booleans(),
)
def test_whatever_arrives_the_reader_raises_nothing_and_yields_only_storable_text(
    body: bytes, points: list[int], split_think: bool, hold: bool, finish: bool
) -> None:
    data = body + (FINISHED if finish else b"")
    result = read_body(split_at(data, points), split_think=split_think, hold=hold)
    assert_well_formed(result)
    if result.error is None:
        assert isinstance(result.events[-1], Finish)


@PROPERTY
@given(body=STREAM, points=POINTS, limit=st.integers(8, 400) | st.just(MAX_EVENT_BYTES))
def test_the_sse_decoder_reads_any_bytes_the_same_however_they_are_split(
    body: bytes, points: list[int], limit: int
) -> None:
    def decode(parts: list[bytes]) -> tuple[list[SSEEvent], bool, bool]:
        decoder = SSEDecoder(max_event_bytes=limit)
        events = [event for part in parts for event in decoder.feed(part)]
        return events + decoder.close(), decoder.done, decoder.error is None

    whole = decode([body])
    assert decode(split_at(body, points)) == whole
    assert all(type(event.data) is str for event in whole[0])


# Valid deltas, as a server that escapes everything beyond ASCII writes them.
VALID_DELTA = st.fixed_dictionaries(
    {}, optional={"content": TEXT, "reasoning_content": TEXT, "reasoning": TEXT}
)


def valid_events(deltas: list[dict[str, Any]]) -> bytes:
    return b"".join(sse_event(delta_chunk(delta)) for delta in deltas)


POISON = st.sampled_from(
    [
        b'{"error": "Unhandled exception during response stream: boom"}\n',
        b'{"error": "cut short',
        b"data: {not json\n\n",
        b'data: {"error": {"message": "overloaded"}}\n\n',
        b'event: error\ndata: {"message": "x"}\n\n',
        b"data: [1, 2]\n\n",
        b"data: 1e999\n\n",
        b"data: " + b"[" * 100_000 + b"\n\n",
        b'data: {"choices": ' + b"[" * 50_000 + b"\n\n",
        b"not an sse line at all\n",
    ]
)


@PROPERTY
@given(
    deltas=st.lists(VALID_DELTA, max_size=8),
    poison=POISON,
    junk=st.binary(max_size=64),
    points=POINTS,
    hold=st.booleans(),
)
def test_text_delivered_before_an_error_is_never_lost(
    deltas: list[dict[str, Any]], poison: bytes, junk: bytes, points: list[int], hold: bool
) -> None:
    valid = valid_events(deltas)
    broken = read_body(split_at(valid + poison + junk, points), hold=hold)
    assert isinstance(broken.error, UpstreamError)
    assert_well_formed(broken)
    # The same text as the valid events alone, ending there (cut off: held text released).
    assert texts(broken) == texts(read_body([valid], hold=hold))


WRONG_DELTA = st.fixed_dictionaries(
    {}, optional={"content": NOT_TEXT, "reasoning_content": NOT_TEXT, "reasoning": NOT_TEXT}
)
WRONG_CHUNK = st.one_of(
    st.fixed_dictionaries({"choices": NOT_TEXT | st.dictionaries(TEXT, JSON, max_size=3)}),
    st.fixed_dictionaries({"choices": st.lists(NOT_TEXT, max_size=3)}),
    st.fixed_dictionaries({"choices": st.lists(st.fixed_dictionaries({"delta": NOT_TEXT}))}),
    st.fixed_dictionaries({"choices": st.lists(st.fixed_dictionaries({"delta": WRONG_DELTA}))}),
    st.fixed_dictionaries(
        {"choices": st.lists(st.fixed_dictionaries({"index": JSON, "delta": VALID_DELTA}))}
    ).filter(lambda c: all(choice["index"] not in (0, None) for choice in c["choices"])),
    st.fixed_dictionaries({"choices": st.just([]), "usage": USAGE | JSON}),
    st.fixed_dictionaries({"error": st.sampled_from([None, False, 0, "", [], {}])}),
)


@PROPERTY
@given(
    deltas=st.lists(VALID_DELTA, max_size=6),
    wrong=st.lists(WRONG_CHUNK, max_size=6),
    data=st.data(),
    hold=st.booleans(),
)
def test_json_of_the_wrong_shape_carries_no_text_and_stops_nothing(
    deltas: list[dict[str, Any]],
    wrong: list[dict[str, Any]],
    data: st.DataObject,
    hold: bool,
) -> None:
    mixed = [sse_event(delta_chunk(delta)) for delta in deltas]
    for chunk in wrong:
        mixed.insert(data.draw(st.integers(0, len(mixed))), sse_event(chunk))
    points = data.draw(POINTS)
    result = read_body(split_at(b"".join(mixed) + FINISHED, points), hold=hold)
    assert_well_formed(result)
    assert result.error is None
    assert texts(result) == texts(read_body([valid_events(deltas) + FINISHED], hold=hold))
    assert result.events[-1] == Finish("stop")


# Think tags cut anywhere

FRAGMENT = st.sampled_from(
    ["<think>", "</think>", "<", "</", "<th", "</th", "ink>", "\n", "\r\n", " ", "a", "b c", "é"]
)


def split_text(
    pieces: list[str], *, split_think: bool, hold: bool, reasoning_first: str
) -> tuple[str, str]:
    splitter = ReasoningSplitter(split_think=split_think, hold_for_close=hold)
    out: list[Piece] = []
    if reasoning_first:
        out += splitter.feed_reasoning(reasoning_first)
    for piece in pieces:
        out += splitter.feed_content(piece)
    out += splitter.finish()
    for part in out:
        assert type(part.text) is str and part.text
    return (
        "".join(p.text for p in out if p.kind == "reasoning"),
        "".join(p.text for p in out if p.kind == "answer"),
    )


@settings(max_examples=300, deadline=None)
@given(
    content=st.lists(FRAGMENT, max_size=14).map("".join),
    data=st.data(),
    split_think=st.booleans(),
    hold=st.booleans(),
    reasoning_first=st.sampled_from(["", "thought"]),
)
def test_think_tags_cut_anywhere_give_the_same_reasoning_and_answer(
    content: str, data: st.DataObject, split_think: bool, hold: bool, reasoning_first: str
) -> None:
    options: dict[str, Any] = {
        "split_think": split_think,
        "hold": hold,
        "reasoning_first": reasoning_first,
    }
    whole = split_text([content], **options)
    for position in range(len(content) + 1):
        assert split_text([content[:position], content[position:]], **options) == whole
    assert split_text(list(content), **options) == whole
    points = sorted(data.draw(st.sets(st.integers(0, len(content)), max_size=6)))
    bounds = [0, *points, len(content)]
    assert split_text([content[a:b] for a, b in itertools.pairwise(bounds)], **options) == whole
    # Nothing is invented: every character of the output was in the input.
    assert set("".join(whole)) <= set(content) | set(reasoning_first)


# What these found, one by one


def test_json_nested_deeper_than_the_decoder_goes_is_a_protocol_error_keeping_the_text() -> None:
    body = sse_event(delta_chunk({"content": "kept"})) + b"data: " + b"[" * 100_000 + b"\n\n"
    result = read_body([body])
    assert result.error is not None and result.error.code == "protocol"
    assert texts(result) == ("", "kept")


def test_a_line_without_end_is_a_protocol_error_once_it_outgrows_any_event() -> None:
    pieces = [sse_event(delta_chunk({"content": "kept"})) + b"data: {"]
    pieces += [b"x" * (1 << 20)] * ((MAX_EVENT_BYTES >> 20) + 1)
    result = read_body(pieces)
    assert result.error is not None and result.error.code == "protocol"
    assert texts(result) == ("", "kept")


USAGE_CHUNK = b'data: {"choices": [], "usage": {"prompt_tokens": %b, "completion_tokens": 5}}\n\n'


@pytest.mark.parametrize(
    ("prompt_tokens", "expected"),
    [
        (b"Infinity", None),
        (b"NaN", None),
        (b"1e400", None),
        (b"2147483648", None),
        (b"-3", None),
        (b"true", None),
        (b"null", None),
        (b"2.5", None),
        (b'"12"', 12),
        (b"12.0", 12),
        (b"12", 12),
    ],
)
def test_token_counts_that_are_not_counts_leave_the_usage_unknown(
    prompt_tokens: bytes, expected: int | None
) -> None:
    # Unknown usage is billed from an estimate and flagged; a made-up count would be billed
    # as if exact (or could not be stored at all).
    body = sse_event(delta_chunk({"content": "a"})) + USAGE_CHUNK % prompt_tokens + FINISHED
    result = read_body([body])
    assert result.error is None
    usage = [Usage(prompt_tokens=expected, completion_tokens=5)] if expected is not None else []
    assert result.of(Usage) == usage
    assert result.events[-1] == Finish("stop")


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("length", "length"),
        ("", None),
        ("  ", None),
        (None, None),
        (1, None),
        (True, None),
        ({"type": "stop"}, None),
        ("stop\ud83d\n\x00", "stop\ufffd \ufffd"),
        ("x" * 10_000, "x" * 64),
    ],
)
def test_only_a_text_finish_reason_finishes_and_it_arrives_short_and_clean(
    reason: Any, expected: str | None
) -> None:
    body = sse_event(delta_chunk({"content": "a"}, finish_reason=reason))
    result = read_body([body])  # no [DONE]: only a real finish_reason makes the reply whole
    if expected is None:
        assert result.error is not None and result.error.code == "upstream_error"
        assert not result.of(Finish)
    else:
        assert result.error is None
        assert result.events[-1] == Finish(expected)
    assert texts(result) == ("", "a")


def test_an_error_body_nested_deeper_than_the_decoder_goes_is_still_an_error() -> None:
    config = UpstreamConfig("https://lava/v1/forward", "https://c/v1", secret_key="s")
    error = error_for_status(400, b"[" * 100_000, config)
    assert (error.code, error.message) == ("bad_request", "The model service refused the request.")


@contextlib.asynccontextmanager
async def answering(status: int, body: bytes) -> AsyncIterator[UpstreamConfig]:
    """The shared client of this loop, answering every request with `body`."""
    transport = httpx.MockTransport(lambda request: httpx.Response(status, content=body))
    upstream_http._clients[asyncio.get_running_loop()] = httpx.AsyncClient(transport=transport)
    try:
        yield UpstreamConfig("http://mock/v1/forward", "http://mock/v1", secret_key="s")
    finally:
        await aclose_clients()


async def test_a_catalogue_nested_deeper_than_the_decoder_goes_is_a_protocol_error() -> None:
    async with answering(200, b"[" * 100_000) as config:
        with pytest.raises(UpstreamError) as caught:
            await fetch_models(config=config)
    assert caught.value.code == "protocol"


async def test_a_billing_record_with_counts_that_are_not_numbers_is_still_read() -> None:
    record = b'{"total_request_cost": "0.5", "model_usage": {"input_tokens": Infinity}}'
    async with answering(200, record) as config:
        cost = await fetch_request_cost("req_1", config=config)
    assert (cost.input_tokens, cost.total_cost) == (0, Decimal("0.5"))


def test_catalogue_lengths_that_are_not_lengths_are_left_unknown() -> None:
    models = parse_catalogue(
        [
            {"id": "a", "context_length": float("inf"), "max_output_length": "1e400"},
            {"id": "b", "context_length": float("nan"), "max_model_len": "sNaN"},
            {"id": "c", "context_length": "131072", "max_output_length": 8192.0},
        ]
    )
    lengths = [(m.id, m.context_length, m.max_output_length) for m in models]
    assert lengths == [("a", None, None), ("b", None, None), ("c", 131072, 8192)]


# Over loopback


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=STREAM, points=POINTS)
async def test_whatever_the_stand_in_sends_stream_chat_raises_only_upstream_error(
    bare_upstream: FakeUpstream, body: bytes, points: list[int]
) -> None:
    bare_upstream.push_script(raw=split_at(body, points))
    result = await collect(chat_body(model=MODEL), config_for(bare_upstream, max_retries=0))
    assert_well_formed(result)
    assert isinstance(result.events[0], RequestIds)
