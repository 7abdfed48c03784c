"""The upstream stream's reading rules one boundary at a time (test_sse.py and
test_reasoning.py have the forms; test_hostile_upstream.py the arbitrary input): what ends a
stream, what counts as a bare error line, and how reasoning is told from the answer: rules a
mutation of the code showed unprotected, and their neighbours (docs/reliability.md, "Mutation
testing").
"""

from __future__ import annotations

from typing import Any

import pytest

from chat.reasoning import Piece, ReasoningSplitter, infer_reasoning_model
from chat.sse import SSEDecoder, SSEEvent


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
