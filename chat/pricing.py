"""Money: costs in Decimal from token counts and per-million prices, and token estimates."""

from __future__ import annotations

import math
from decimal import ROUND_HALF_EVEN, Decimal

MILLION = Decimal(1_000_000)
# Costs are kept to twelve decimals (a single token at $0.01/1M is 1e-8 USD).
COST_QUANTUM = Decimal("0.000000000001")
# Every chat message costs a few tokens of template around its text.
MESSAGE_OVERHEAD_TOKENS = 4


def cost(
    prompt_tokens: int,
    completion_tokens: int,
    input_price: Decimal,
    output_price: Decimal,
) -> Decimal:
    """USD for a call: tokens times the per-million prices, exact to twelve decimals."""
    total = (
        Decimal(prompt_tokens) * input_price + Decimal(completion_tokens) * output_price
    ) / MILLION
    return total.quantize(COST_QUANTUM, rounding=ROUND_HALF_EVEN)


def estimate_tokens(text: str) -> int:
    """A deliberately generous token estimate for text without a tokenizer.

    About four bytes of UTF-8 per token holds for English and code; it over-counts a little for
    most other scripts, which is the safe side for budgets.
    """
    if not text:
        return 0
    return math.ceil(len(text.encode("utf-8")) / 4)


def estimate_prompt_tokens(messages: list[dict[str, object]]) -> int:
    total = 0
    for message in messages:
        content = message.get("content", "")
        if isinstance(content, list):
            content = " ".join(
                str(part.get("text", "")) for part in content if isinstance(part, dict)
            )
        total += estimate_tokens(str(content)) + MESSAGE_OVERHEAD_TOKENS
    return total


def upper_prompt_tokens(estimate: int) -> int:
    """A bound on the prompt's tokens for budget reservations from our estimate (four bytes a
    token): two bytes a token is more than real tokenizers produce for text, so a reservation is
    never smaller than the real cost."""
    return 2 * estimate


def plain(amount: Decimal) -> str:
    """An amount as a plain decimal string with twelve places (never scientific notation)."""
    return format(amount.quantize(COST_QUANTUM), "f")


def readable(amount: Decimal) -> str:
    """An amount for people: trailing zeros dropped, but at least cents ("0.50", "0.000408")."""
    text = plain(amount).rstrip("0")
    whole, _, fraction = text.partition(".")
    return f"{whole}.{fraction.ljust(2, '0')}"


def usd(amount: Decimal) -> str:
    """USD for people, exact: "$0.50", "$0.000408", "$1,234.56"."""
    whole, _, fraction = readable(amount).partition(".")
    return f"${int(whole):,}.{fraction}"
