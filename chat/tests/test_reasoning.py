from __future__ import annotations

from typing import Any

import pytest

from chat.upstream.reasoning import Piece, ReasoningSplitter, infer_reasoning_model


def run(deltas: list[dict[str, Any]], **options: Any) -> tuple[str, str, list[list[Piece]]]:
    """(reasoning, answer, pieces per feed) after feeding `deltas` and finishing."""
    splitter = ReasoningSplitter(**options)
    batches = [splitter.feed_delta(delta) for delta in deltas]
    batches.append(splitter.finish())
    pieces = [piece for batch in batches for piece in batch]
    reasoning = "".join(p.text for p in pieces if p.kind == "reasoning")
    answer = "".join(p.text for p in pieces if p.kind == "answer")
    return reasoning, answer, batches


def contents(*texts: str) -> list[dict[str, Any]]:
    return [{"content": text} for text in texts]


def test_reasoning_content_field_is_reasoning() -> None:
    deltas = [{"reasoning_content": "Let me"}, {"reasoning_content": " think."}]
    deltas += contents("\n\nThe answer", " is 4.")
    assert run(deltas)[:2] == ("Let me think.", "The answer is 4.")


def test_reasoning_field_is_reasoning() -> None:
    deltas = [{"reasoning": "Hmm."}, {"content": "Yes."}]
    assert run(deltas)[:2] == ("Hmm.", "Yes.")


def test_both_reasoning_fields_in_one_delta_are_not_doubled() -> None:
    deltas = [{"reasoning_content": "Hmm.", "reasoning": "Hmm."}, {"content": "Yes."}]
    assert run(deltas)[:2] == ("Hmm.", "Yes.")


def test_inline_think_tags_are_split() -> None:
    assert run(contents("<think>\nPondering.\n</think>\n\nDone."))[:2] == ("Pondering.", "Done.")


def test_whitespace_before_the_opening_tag_is_ignored() -> None:
    assert run(contents("\n <think>a</think>b"))[:2] == ("a", "b")


def test_close_only_is_reasoning_for_a_reasoning_model() -> None:
    result = run(contents("Pondering.\n</think>\n\nDone."), hold_for_close=True)
    assert result[:2] == ("Pondering.", "Done.")


def test_close_only_without_the_closing_tag_ends_as_the_answer() -> None:
    # A reasoning model asked not to think writes a plain answer: it must not be lost.
    assert run(contents("Just ", "an answer."), hold_for_close=True)[:2] == ("", "Just an answer.")


def test_text_is_the_answer_at_once_for_other_models() -> None:
    reasoning, answer, batches = run(contents("Hello", " world"))
    assert (reasoning, answer) == ("", "Hello world")
    assert batches[0] == [Piece("answer", "Hello")]


def test_a_lone_leading_closing_tag_is_dropped() -> None:
    assert run(contents("</think>\n\nAnswer."))[:2] == ("", "Answer.")


def test_content_after_field_reasoning_is_never_held() -> None:
    _reasoning, _answer, batches = run(
        [{"reasoning_content": "Hmm."}, {"content": "Answer"}], hold_for_close=True
    )
    assert batches[1] == [Piece("answer", "Answer")]


def test_a_tag_lookalike_is_plain_answer() -> None:
    assert run(contents("<b>bold</b> <thinking"))[:2] == ("", "<b>bold</b> <thinking")


def test_a_partial_tag_at_the_end_is_released_as_answer() -> None:
    assert run(contents("<thi"))[:2] == ("", "<thi")


def test_an_unclosed_think_block_is_all_reasoning() -> None:
    assert run(contents("<think>still going"))[:2] == ("still going", "")


def test_tags_inside_the_answer_are_text() -> None:
    assert run(contents("Use <think> tags.", " </think> ok"))[:2] == (
        "",
        "Use <think> tags. </think> ok",
    )


def test_without_split_think_content_is_verbatim() -> None:
    text = "<think>a</think>b"
    assert run(contents(text), split_think=False)[:2] == ("", text)


@pytest.mark.parametrize(
    ("text", "options", "expected"),
    [
        ("<think>\nStep one. Step two.\n</think>\n\nThe answer.", {}, "inline"),
        ("Step one. Step two.\n</think>\n\nThe answer.", {"hold_for_close": True}, "close"),
    ],
)
def test_tags_split_at_every_position_give_the_same_result(
    text: str, options: dict[str, Any], expected: str
) -> None:
    whole = run(contents(text), **options)[:2]
    assert whole == ("Step one. Step two.", "The answer.")
    for position in range(len(text) + 1):
        pieces = contents(text[:position], text[position:])
        assert run(pieces, **options)[:2] == whole, f"split at {position}"
    assert run(contents(*text), **options)[:2] == whole


def test_reasoning_streams_as_soon_as_it_is_unambiguous() -> None:
    splitter = ReasoningSplitter()
    assert splitter.feed_content("<th") == []
    assert splitter.feed_content("ink>\nabc") == [Piece("reasoning", "abc")]
    # "</th" might begin the closing tag: only that much waits.
    assert splitter.feed_content(" def</th") == [Piece("reasoning", " def")]
    assert splitter.feed_content("ink>\n\nAns") == [Piece("answer", "Ans")]
    assert splitter.feed_content("wer") == [Piece("answer", "wer")]
    assert splitter.finish() == []


def test_a_held_close_only_reply_is_released_when_field_reasoning_appears() -> None:
    splitter = ReasoningSplitter(hold_for_close=True)
    assert splitter.feed_content("Hi") == []
    assert splitter.feed_reasoning("thought") == [
        Piece("answer", "Hi"),
        Piece("reasoning", "thought"),
    ]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"model": "deepseek-ai/DeepSeek-R1-0528"}, True),
        ({"model": "tngtech/DeepSeek-TNG-R1T2-Chimera"}, True),
        ({"model": "deepseek-ai/DeepSeek-R1-Distill-Llama-70B"}, True),
        ({"model": "deepseek-ai/DeepSeek-V3-0324"}, False),
        ({"model": "Qwen/Qwen3-32B"}, False),
        ({"model": "unsloth/Mistral-Nemo-Instruct-2407"}, False),
        (
            {"model": "deepseek-ai/DeepSeek-R1-0528", "chat_template_kwargs": {"thinking": False}},
            False,
        ),
        ({}, False),
    ],
)
def test_reasoning_models_are_recognised_from_the_request(
    body: dict[str, Any], expected: bool
) -> None:
    assert infer_reasoning_model(body) is expected
