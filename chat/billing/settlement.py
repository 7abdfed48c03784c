"""Settling a reply's charge: its usage priced, bounded by what was reserved for it, and the
charge's fields once settled. The reply's end is written by `chat.actions.progress`, which calls
these."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.utils import timezone

from chat.models import Charge, Message

from . import prices


def price_reply(message: Message) -> Decimal | None:
    """Price the reply's usage, estimating the completion when the provider did not report it.
    Mutates `message`; the caller saves it. Returns the usage's own cost (before any bound)."""
    if message.usage_estimated:
        message.completion_tokens = prices.estimate_tokens(message.content + message.reasoning)
    if message.input_price is None or message.output_price is None:
        message.cost = None
    else:
        message.cost = prices.cost(
            message.prompt_tokens,
            message.completion_tokens,
            message.input_price,
            message.output_price,
        )
    return message.cost


def bounded(cost: Decimal | None, reserved: Decimal | None) -> Decimal | None:
    """What the user is billed for usage that cost `cost`: never more than the worst case that
    was reserved against their limit when the call was accepted, so no reply can take a user
    past their limit. Usage beyond it (a provider that ignored max_tokens, a prompt beyond its
    estimate's bound) stays recorded on the charge (`usage_cost`)."""
    if cost is None or reserved is None or reserved <= 0:
        return cost
    return min(cost, reserved)


def settled_fields(message: Message, usage_cost: Decimal | None) -> dict[str, Any]:
    """A reserved charge's fields once its reply has ended and been priced."""
    return {
        "state": Charge.State.SETTLED.value,
        "prompt_tokens": message.prompt_tokens,
        "completion_tokens": message.completion_tokens,
        "cached_tokens": message.cached_tokens,
        "estimated": message.usage_estimated,
        "cost": message.cost,
        "usage_cost": usage_cost,
        "lava_request_id": message.lava_request_id,
        "settled_at": timezone.now(),
    }
