"""The reasoning splitter's edges a mutation of the code showed unprotected (docs/reliability.md,
"Mutation testing"): line ends inside the answer are trimmed only where the answer begins, and a
finished splitter stays finished: the stream reader finishes it again when a malformed stream
ends the reply and the body is then closed (chat/upstream/client.py, `_end_text`), and that second
finish must release nothing.
"""

from __future__ import annotations

from typing import Any

import pytest

from chat.upstream.reasoning import Piece, ReasoningSplitter

# Each form reasoning comes in, fed up to the first text of the answer, and that text.
_FORMS: list[tuple[dict[str, Any], list[dict[str, Any]]]] = [
    ({}, [{"content": "Answer."}]),
    ({}, [{"reasoning_content": "thought"}, {"content": "Answer."}]),
    ({}, [{"content": "<think>thought</think>Answer."}]),
    ({"hold_for_close": True}, [{"content": "thought</think>Answer."}]),
]


@pytest.mark.parametrize(("options", "deltas"), _FORMS, ids=["plain", "field", "inline", "held"])
def test_line_ends_opening_a_later_chunk_of_the_answer_are_kept(
    options: dict[str, Any], deltas: list[dict[str, Any]]
) -> None:
    splitter = ReasoningSplitter(**options)
    pieces = [piece for delta in deltas for piece in splitter.feed_delta(delta)]
    assert pieces[-1] == Piece("answer", "Answer.")
    assert splitter.feed_content("\n\nNext paragraph.") == [Piece("answer", "\n\nNext paragraph.")]
    assert splitter.feed_content("\r\n- item") == [Piece("answer", "\r\n- item")]
    assert splitter.finish() == []


@pytest.mark.parametrize(
    ("options", "chunks", "first"),
    [
        ({}, ["Answer."], []),
        ({}, ["<think>thought\n"], []),
        ({}, ["<th"], [Piece("answer", "<th")]),
        ({"hold_for_close": True}, ["held answer"], [Piece("answer", "held answer")]),
        ({"hold_for_close": True}, ["thought</think>Answer."], []),
    ],
    ids=["answer", "reasoning", "partial-tag", "held", "held-closed"],
)
def test_a_second_finish_releases_nothing(
    options: dict[str, Any], chunks: list[str], first: list[Piece]
) -> None:
    splitter = ReasoningSplitter(**options)
    for chunk in chunks:
        splitter.feed_content(chunk)
    assert splitter.finish() == first
    assert splitter.finish() == []
