"""The text of a streamed reply is always text that can be sent and stored.

JSON escapes may carry half of a UTF-16 surrogate pair (`"\\ud83d"` in one delta, `"\\ude42"` in
the next), or a lone half. Whatever the upstream sends and however its bytes are split, the
reader joins the halves of a pair into the one character and turns anything else that no
database stores (a lone half, NUL) into U+FFFD, in the answer and in the reasoning alike.
"""

from __future__ import annotations

import itertools
import json
import logging
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from chat.testing.fakeupstream import (
    DONE_EVENT,
    FakeUpstream,
    delta_chunk,
    sse_event,
    usage_numbers,
)
from chat.tests.fixtures_upstream import (
    MODEL,
    REASONING_MODEL,
    chat_body,
    collect,
    read_body,
)
from chat.upstream.client import Finish, ReasoningDelta, TextDelta
from chat.upstream.config import UpstreamConfig
from chat.upstream.http import error_for_status

NEWLINES = "\r\n"
SMILE = "\U0001f642"
HIGH, LOW = "\ud83d", "\ude42"  # the two halves of SMILE


def decoded(units: str) -> str:
    """What a reader must make of text given as UTF-16 code units: pairs joined, lone
    surrogates and NUL as U+FFFD, everything else unchanged."""
    out: list[str] = []
    index = 0
    while index < len(units):
        unit = units[index]
        following = units[index + 1] if index + 1 < len(units) else ""
        if "\ud800" <= unit <= "\udbff" and "\udc00" <= following <= "\udfff":
            out.append(chr(0x10000 + ((ord(unit) - 0xD800) << 10) + (ord(following) - 0xDC00)))
            index += 2
            continue
        out.append("\ufffd" if "\ud800" <= unit <= "\udfff" or unit == "\x00" else unit)
        index += 1
    return "".join(out)


def event(delta: dict[str, Any], *, ascii_only: bool = True) -> bytes:
    """One SSE event carrying `delta`; JSON escapes for everything beyond ASCII, or UTF-8."""
    chunk = delta_chunk(delta)
    if ascii_only:
        return sse_event(chunk)
    return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n".encode()


def texts(result: Any) -> tuple[str, str]:
    return result.text(ReasoningDelta), result.text(TextDelta)


def assert_storable(result: Any) -> None:
    for item in result.events:
        if isinstance(item, TextDelta | ReasoningDelta):
            assert isinstance(item.text, str)
            item.text.encode("utf-8")  # strictly: a lone surrogate raises here
            assert "\x00" not in item.text


FINISHED = sse_event(delta_chunk({}, finish_reason="stop")) + DONE_EVENT


# Examples


@pytest.mark.parametrize("field", ["content", "reasoning_content", "reasoning"])
def test_a_pair_split_across_two_deltas_is_one_character(field: str) -> None:
    body = event({field: f"I am {HIGH}"}) + event({field: f"{LOW} today"}) + FINISHED
    reasoning, answer = texts(result := read_body([body]))
    assert result.error is None
    assert (answer if field == "content" else reasoning) == f"I am {SMILE} today"
    assert_storable(result)


def test_a_pair_split_inside_a_think_block_is_one_character() -> None:
    body = event({"content": f"<think>hm {HIGH}"}) + event({"content": f"{LOW}</think>Yes"})
    result = read_body([body + FINISHED])
    assert texts(result) == (f"hm {SMILE}", "Yes")


def test_a_lone_surrogate_anywhere_becomes_a_replacement_character() -> None:
    body = event({"content": f"a{LOW}b{HIGH}c"}) + event({"reasoning_content": f"{LOW}r"})
    result = read_body([body + FINISHED])
    assert texts(result) == ("\ufffdr", "a\ufffdb\ufffdc")
    assert_storable(result)


def test_a_high_surrogate_at_the_end_of_the_stream_becomes_a_replacement_character() -> None:
    result = read_body([event({"content": f"bye {HIGH}"}) + FINISHED])
    assert texts(result) == ("", "bye \ufffd")
    assert result.events[-1] == Finish("stop")


def test_a_high_surrogate_not_followed_by_its_low_half_is_replaced() -> None:
    body = event({"content": f"a{HIGH}"}) + event({"content": f"{HIGH}{LOW}b"})
    assert texts(read_body([body + FINISHED])) == ("", f"a\ufffd{SMILE}b")


def test_half_a_pair_in_the_answer_waits_for_the_answer_not_the_reasoning() -> None:
    # The low half arriving in the other field is not the answer's: each field is joined alone.
    body = (
        event({"content": f"a{HIGH}"})
        + event({"reasoning_content": f"{LOW}r"})
        + event({"content": f"{LOW}b"})
    )
    result = read_body([body + FINISHED])
    assert texts(result) == ("\ufffdr", f"a{SMILE}b")


def test_half_a_pair_waits_while_a_close_only_reply_is_held() -> None:
    # A reasoning model's text before a lone </think> is held by the splitter; the pair is
    # joined before the splitter sees it, whether the tag comes or not.
    body = event({"content": f"thinking {HIGH}"}) + event({"content": f"{LOW}\n</think>\n\nOk"})
    assert texts(read_body([body + FINISHED], hold=True)) == (f"thinking {SMILE}", "Ok")
    body = event({"content": f"answer {HIGH}"}) + event({"content": f"{LOW}!"})
    assert texts(read_body([body + FINISHED], hold=True)) == ("", f"answer {SMILE}!")


def test_a_pair_split_inside_its_escape_at_every_byte_is_one_character() -> None:
    body = event({"content": f"x{HIGH}"}) + event({"content": f"{LOW}y"}) + FINISHED
    for position in range(len(body) + 1):
        result = read_body([body[:position], body[position:]])
        assert texts(result) == ("", f"x{SMILE}y"), f"split at byte {position}"


def test_a_half_pair_before_an_error_is_kept_as_a_replacement_character() -> None:
    body = event({"content": f"so far {HIGH}"}) + b'{"error": "Unhandled exception"}\n'
    result = read_body([body])
    assert result.error is not None and result.error.code == "upstream_error"
    assert texts(result) == ("", "so far \ufffd")


def test_nul_becomes_a_replacement_character() -> None:
    # PostgreSQL cannot store NUL in text: a reply carrying one could never be saved.
    result = read_body([event({"content": "a\x00b"}) + FINISHED])
    assert texts(result) == ("", "a\ufffdb")


def test_error_details_with_lone_surrogates_are_safe_to_show_and_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = UpstreamConfig("https://lava/v1/forward", "https://c/v1", secret_key="s")
    for status in (400, 404, 429):
        raw = json.dumps({"detail": f"model not found: bad {HIGH} name {LOW}"}).encode()
        error = error_for_status(status, raw, config)
        error.message.encode("utf-8")
        assert error.log_detail is not None
        error.log_detail.encode("utf-8")
    caplog.set_level(logging.WARNING, logger="chat.upstream")
    read_body([b'data: {"error": {"message": "\\ud83d"}}\n\n'])
    for record in caplog.records:
        record.getMessage().encode("utf-8")


# Properties

# Pieces of text as UTF-16 code units: characters of every plane (astral ones whole or as
# their two halves), lone halves of both kinds, NUL and line ends.
LONE = st.sampled_from(["\ud800", HIGH, "\udbff", "\udc00", LOW, "\udfff"])
ASTRAL = st.characters(min_codepoint=0x10000, max_codepoint=0x10FFFF)


def _halves(char: str) -> str:
    """An astral character as its two UTF-16 halves, each a code point of its own."""
    data = char.encode("utf-16-le")
    return "".join(chr(int.from_bytes(data[i : i + 2], "little")) for i in range(0, 4, 2))


SEGMENT = st.one_of(
    st.characters(max_codepoint=0xFFFF),
    ASTRAL,
    ASTRAL.map(_halves),
    LONE,
    st.sampled_from(["\x00", "\n", "\r\n", "é", SMILE, HIGH + LOW]),
)


UNITS = st.lists(SEGMENT, max_size=24).map("".join)
SHORT_UNITS = st.lists(SEGMENT, max_size=8).map("".join)


@st.composite
def cut(draw: st.DrawFn, units: str) -> list[str]:
    """`units` cut at arbitrary positions, between the halves of a pair too."""
    points = sorted(draw(st.sets(st.integers(0, len(units)), max_size=6)))
    bounds = [0, *points, len(units)]
    return [units[a:b] for a, b in itertools.pairwise(bounds) if b > a]


@st.composite
def two_fields(draw: st.DrawFn) -> tuple[str, str, list[tuple[str, str]]]:
    """(answer units, reasoning units, the deltas carrying them interleaved in any order)."""
    answer, reasoning = draw(UNITS), draw(UNITS)
    queues = [
        [("content", piece) for piece in draw(cut(answer))],
        [(draw(st.sampled_from(["reasoning_content", "reasoning"])), piece)
         for piece in draw(cut(reasoning))],
    ]  # fmt: skip
    deltas: list[tuple[str, str]] = []
    while any(queues):
        queue = draw(st.sampled_from([q for q in queues if q]))
        deltas.append(queue.pop(0))
    return answer, reasoning, deltas


def body_of(deltas: list[tuple[str, str]], ascii_flags: list[bool]) -> bytes:
    events = []
    for index, (field, piece) in enumerate(deltas):
        surrogate = any("\ud800" <= unit <= "\udfff" for unit in piece)
        ascii_only = surrogate or ascii_flags[index % len(ascii_flags)]
        events.append(event({field: piece}, ascii_only=ascii_only))
    return b"".join(events) + FINISHED


def split_at(data: bytes, points: list[int]) -> list[bytes]:
    bounds = [0, *sorted(p % (len(data) + 1) for p in points), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@settings(max_examples=150, deadline=None)
@given(
    fields=two_fields(),
    ascii_flags=st.lists(st.booleans(), min_size=1, max_size=4),
    points=st.lists(st.integers(min_value=0), max_size=8),
)
def test_any_text_in_any_deltas_and_chunks_reads_as_its_decoding(
    fields: tuple[str, str, list[tuple[str, str]]], ascii_flags: list[bool], points: list[int]
) -> None:
    answer, reasoning, deltas = fields
    body = body_of(deltas, ascii_flags)
    # Verbatim content: the think-tag splitting has its own tests.
    result = read_body(split_at(body, points), split_think=False)
    assert result.error is None
    assert_storable(result)
    # Reasoning loses its leading line ends, as it always does.
    assert texts(result) == (decoded(reasoning).lstrip(NEWLINES), decoded(answer))
    assert result.events[-1] == Finish("stop")


@settings(max_examples=20, deadline=None)
@given(thought=SHORT_UNITS, answer=SHORT_UNITS, data=st.data())
def test_any_text_in_a_think_block_split_at_every_byte_reads_as_its_decoding(
    thought: str, answer: str, data: st.DataObject
) -> None:
    assume("</think>" not in thought)
    content = f"<think>{thought}</think>{answer}"
    pieces = data.draw(cut(content))
    body = body_of([("content", piece) for piece in pieces], [True])
    whole = (decoded(thought).strip(NEWLINES), decoded(answer).lstrip(NEWLINES))
    for position in range(len(body) + 1):
        result = read_body([body[:position], body[position:]])
        assert texts(result) == whole, f"split at byte {position}"
        assert_storable(result)


# Over loopback, through stream_chat


@pytest.mark.parametrize("chunk_bytes", [0, 1, 3])
async def test_a_pair_split_across_events_arrives_whole_over_http(
    bare_upstream: FakeUpstream, config: UpstreamConfig, chunk_bytes: int
) -> None:
    bare_upstream.push_script(
        raw=[
            event({"role": "assistant", "content": f"Hi {HIGH}"}),
            event({"content": f"{LOW}, and {LOW} alone, and {HIGH}"}),
            event({"content": f"{LOW}{HIGH}"}),
            event({"content": f"{LOW}!"}),
            sse_event(delta_chunk({}, finish_reason="stop")),
            sse_event(delta_chunk(usage=usage_numbers(7, 5))),
            DONE_EVENT,
        ],
        chunk_bytes=chunk_bytes,
    )
    result = await collect(chat_body(model=MODEL), config)
    assert result.error is None
    assert result.text(TextDelta) == f"Hi {SMILE}, and \ufffd alone, and {SMILE}{SMILE}!"
    assert_storable(result)
    assert result.events[-1] == Finish("stop")


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning", "think"])
async def test_a_pair_split_in_the_reasoning_arrives_whole_over_http(
    bare_upstream: FakeUpstream, config: UpstreamConfig, field: str
) -> None:
    def thought(text: str) -> bytes:
        return event({"content": text} if field == "think" else {field: text})

    opening = "<think>" if field == "think" else ""
    closing = "</think>" if field == "think" else ""
    bare_upstream.push_script(
        raw=[
            thought(f"{opening}Hmm {HIGH}"),
            thought(f"{LOW} and a lone {HIGH}"),
            event({"content": f"{closing}Answer {HIGH}"}),
            event({"content": LOW}),
            sse_event(delta_chunk({}, finish_reason="stop")),
            DONE_EVENT,
        ],
        chunk_bytes=2,
    )
    result = await collect(chat_body(model=REASONING_MODEL), config)
    assert result.error is None
    assert result.text(ReasoningDelta) == f"Hmm {SMILE} and a lone \ufffd"
    assert result.text(TextDelta) == f"Answer {SMILE}"
    assert_storable(result)
