"""The upstream stream's reading rules one boundary at a time (test_sse.py and
test_reasoning.py have the forms; test_hostile_upstream.py the arbitrary input): what ends a
stream, what counts as a bare error line, and how reasoning is told from the answer: rules a
mutation of the code showed unprotected, and their neighbours (docs/reliability.md, "Mutation
testing").
"""

from __future__ import annotations

from typing import Any

import pytest

from chat.upstream.reasoning import Piece, ReasoningSplitter, infer_reasoning_model
from chat.upstream.sse import SSEDecoder, SSEEvent


def _read(*chunks: bytes) -> tuple[list[SSEEvent], SSEDecoder]:
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    for chunk in chunks:
        events += decoder.feed(chunk)
    events += decoder.close()
    return events, decoder


def _texts(pieces: list[Piece]) -> tuple[str, str]:
    reasoning = "".join(p.text for p in pieces if p.kind == "reasoning")
    answer = "".join(p.text for p in pieces if p.kind == "answer")
    return reasoning, answer


# SSE -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("last", [b": keep-alive", b":"])
def test_a_comment_left_unterminated_at_the_end_is_not_an_error(last: bytes) -> None:
    events, decoder = _read(b'data: {"a": 1}\n\n', last)
    assert events == [SSEEvent(data='{"a": 1}')]
    assert decoder.error is None and decoder.truncated


def test_a_bare_line_left_unterminated_at_the_end_is_an_error() -> None:
    events, _ = _read(b'data: {"a": 1}\n\n', b'{"error": "boom"}')
    assert events == [
        SSEEvent(data='{"a": 1}'),
        SSEEvent(data='{"error": "boom"}', event="error", bare=True),
    ]


def test_an_events_id_and_retry_are_read_and_the_id_is_kept_for_later_events() -> None:
    events, _ = _read(b"id: 7\nretry: 3000\ndata: a\n\ndata: b\n\n")
    assert events == [
        SSEEvent(data="a", id="7", retry=3000),
        SSEEvent(data="b", id="7", retry=3000),
    ]


def test_an_id_with_a_nul_and_a_retry_of_more_than_ten_digits_are_ignored() -> None:
    events, _ = _read(b"id: a\0b\nretry: 12345678901\ndata: a\n\nretry: 1234567890\ndata: b\n\n")
    assert events == [SSEEvent(data="a"), SSEEvent(data="b", retry=1234567890)]


def test_an_event_name_applies_to_its_own_event_only() -> None:
    events, _ = _read(b"event: ping\ndata: a\n\ndata: b\n\n")
    assert [event.event for event in events] == ["ping", "message"]


def test_bytes_that_are_not_utf8_are_read_as_replacement_characters() -> None:
    events, decoder = _read(b"data: caf\xe9 \xff\n\n")
    assert events == [SSEEvent(data="caf\ufffd \ufffd")] and decoder.error is None


def test_a_byte_order_mark_is_dropped_from_the_start_of_the_stream_only() -> None:
    events, _ = _read("\ufeffdata: a\n\n\ufeffdata: b\n\n".encode())
    assert events == [
        SSEEvent(data="a"),
        SSEEvent(data="\ufeffdata: b", event="error", bare=True),
    ]


def test_events_exactly_at_the_size_limit_all_arrive() -> None:
    # Each line counts with one line end: 10 + 1, then the blank line's 1.
    decoder = SSEDecoder(max_event_bytes=12)
    events = decoder.feed(b"data: 1234\n\ndata: 5678\n\n") + decoder.close()
    assert events == [SSEEvent(data="1234"), SSEEvent(data="5678")]
    assert decoder.error is None


def test_done_without_a_line_end_exactly_at_the_size_limit_still_ends_the_stream() -> None:
    decoder = SSEDecoder(max_event_bytes=12)
    assert decoder.feed(b"data: [DONE]") == []
    assert decoder.close() == []
    assert decoder.error is None and decoder.done


def test_an_event_ended_by_a_carriage_return_arrives_with_the_read_that_ends_it() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r\rdata: b") == [SSEEvent(data="a")]
    assert decoder.feed(b"\r\r") == []
    # A carriage return at the end of a read may be the first half of CRLF: the next read,
    # whatever it holds, settles it.
    assert decoder.feed(b"x") == [SSEEvent(data="b")]


def test_before_its_end_a_stream_is_neither_done_nor_truncated() -> None:
    decoder = SSEDecoder()
    decoder.feed(b"data: a\n\n")
    assert decoder.done is False and decoder.truncated is False


# Reasoning models ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"enable_thinking": False}, False),
        ({"thinking": False}, False),
        ({"enable_thinking": True}, True),
        ({"thinking": True, "enable_thinking": True}, True),
        ({"other": False}, True),
        ({}, True),
    ],
)
def test_only_thinking_turned_off_by_name_makes_a_reasoning_model_answer_plainly(
    kwargs: dict[str, Any], expected: bool
) -> None:
    body = {"model": "deepseek-ai/DeepSeek-R1-0528", "chat_template_kwargs": kwargs}
    assert infer_reasoning_model(body) is expected


# Telling reasoning from the answer ----------------------------------------------------------


def test_the_first_closing_tag_ends_the_reasoning_and_later_ones_are_answer_text() -> None:
    splitter = ReasoningSplitter()
    pieces = splitter.feed_content("<think>a</think>b</think>c") + splitter.finish()
    assert _texts(pieces) == ("a", "b</think>c")


def test_spaces_before_the_closing_tag_stay_in_the_reasoning_and_line_ends_go() -> None:
    splitter = ReasoningSplitter()
    pieces = splitter.feed_content("<think>thought  \n\n</think>answer") + splitter.finish()
    assert _texts(pieces) == ("thought  ", "answer")


def test_reasoning_ending_in_spaces_streams_them_at_once() -> None:
    splitter = ReasoningSplitter()
    assert splitter.feed_content("<think>word ") == [Piece("reasoning", "word ")]
    # Line ends might be the ones before </think>, which are dropped: they wait.
    assert splitter.feed_content("more\n") == [Piece("reasoning", "more")]
    assert splitter.feed_content("\nnext") == [Piece("reasoning", "\n\nnext")]


def test_a_held_reply_released_by_field_reasoning_ends_with_nothing_added() -> None:
    splitter = ReasoningSplitter(hold_for_close=True)
    pieces = splitter.feed_content("Hi")
    pieces += splitter.feed_reasoning("thought")
    pieces += splitter.feed_content(" there")
    pieces += splitter.finish()
    assert _texts(pieces) == ("thought", "Hi there")


def test_a_held_reply_ends_its_reasoning_at_the_first_closing_tag() -> None:
    splitter = ReasoningSplitter(hold_for_close=True)
    pieces = splitter.feed_content("a</think>b</think>c") + splitter.finish()
    assert _texts(pieces) == ("a", "b</think>c")


def test_a_held_reply_keeps_the_spaces_around_its_reasoning_and_drops_line_ends() -> None:
    splitter = ReasoningSplitter(hold_for_close=True)
    pieces = splitter.feed_content("thought  \n</think>answer") + splitter.finish()
    assert _texts(pieces) == ("thought  ", "answer")


def test_reasoning_keeps_its_leading_spaces_and_drops_its_leading_line_ends() -> None:
    splitter = ReasoningSplitter()
    assert splitter.feed_reasoning("\n  indented step") == [Piece("reasoning", "  indented step")]


def test_the_answer_keeps_its_leading_spaces_and_drops_its_leading_line_ends() -> None:
    splitter = ReasoningSplitter()
    pieces = splitter.feed_content("<think>r</think>\n\n  Answer") + splitter.finish()
    assert _texts(pieces) == ("r", "  Answer")


def test_two_texts_of_one_kind_from_one_delta_come_as_one_piece() -> None:
    splitter = ReasoningSplitter()
    # Reasoning in its own field and inside <think> in the content of the same delta.
    pieces = splitter.feed_delta({"reasoning_content": "first, ", "content": "<think>second"})
    assert pieces == [Piece("reasoning", "first, second")]


def test_a_reasoning_field_that_is_not_text_gives_way_to_the_other_name() -> None:
    splitter = ReasoningSplitter()
    assert splitter.feed_delta({"reasoning_content": 5, "reasoning": "thought"}) == [
        Piece("reasoning", "thought")
    ]


def test_line_ends_before_the_opening_tag_wait_for_it() -> None:
    splitter = ReasoningSplitter()
    assert splitter.feed_content("\n") == []
    pieces = splitter.feed_content("<think>x</think>y") + splitter.finish()
    assert _texts(pieces) == ("x", "y")


def test_a_reply_ending_inside_its_reasoning_keeps_a_partial_closing_tag_as_reasoning() -> None:
    splitter = ReasoningSplitter()
    pieces = splitter.feed_content("<think>abc\n</th") + splitter.finish()
    assert _texts(pieces) == ("abc\n</th", "")
