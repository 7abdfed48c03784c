"""A conversation's title, asked of a model after its first exchange and billed to the user."""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from chat import errors
from chat.billing import budgets, prices, settlement
from chat.errors import Refused
from chat.models import (
    Charge,
    Conversation,
    Message,
)

from .conversations import active_path, owned_conversation
from .replies import _lock_user

TITLE_INSTRUCTION = (
    "Write a title of at most six words for the conversation below. Answer with the title "
    "only: no quotes, no trailing punctuation."
)


TITLE_EXCERPT_CHARS = 1500


MAX_TITLE_CHARS = 80


# Quotes (straight and curly) and markdown marks models put around a title.
TITLE_DECORATION = " \t#*_`\"'\u201c\u201d\u2018\u2019"


@dataclass(frozen=True)
class TitlePlan:
    conversation_id: int
    charge_id: int
    reserved: Decimal
    body: dict[str, Any]
    model_id: str
    reasoning_model: bool
    prompt_estimate: int


def plan_title(message_id: int, *, again: bool = False) -> TitlePlan | None:
    """Reserve and describe the call that titles a conversation from its first exchange, or
    None when it should not happen (renamed meanwhile, model gone, budget too tight).

    A conversation is titled once: regenerating or editing its first exchange does not pay for
    another title. `again` is the user asking for a new one (which also ends a renamed title).
    """
    with transaction.atomic():
        reply = (
            Message.objects.filter(pk=message_id, status=Message.Status.COMPLETE)
            .select_related("conversation", "model", "parent", "user")
            .first()
        )
        if reply is None or reply.parent is None:
            return None
        if reply.conversation.title_is_custom and not again:
            return None
        model = reply.model
        if model is None or not model.enabled or not model.priced:
            return None
        _lock_user(reply.user)
        titled = Charge.objects.filter(
            conversation_id=reply.conversation_id, kind=Charge.Kind.TITLE
        ).exists()
        if titled and not again:
            return None
        if again:
            Conversation.objects.filter(pk=reply.conversation_id).update(title_is_custom=False)
        excerpt = (
            f"Question: {reply.parent.content[:TITLE_EXCERPT_CHARS]}\n\n"
            f"Answer: {reply.content[:TITLE_EXCERPT_CHARS]}"
        )
        messages = [
            {"role": "system", "content": TITLE_INSTRUCTION},
            {"role": "user", "content": excerpt},
        ]
        body: dict[str, Any] = {
            "model": model.model_id,
            "messages": messages,
            # A reasoning model thinks before it answers, even for a title.
            "max_tokens": 1024 if model.reasoning else 32,
            "temperature": 0.3,
        }
        if model.reasoning and "qwen3" in model.model_id.lower():
            body["chat_template_kwargs"] = {"enable_thinking": False}
        prompt_estimate = prices.estimate_prompt_tokens(messages)
        assert model.input_price is not None and model.output_price is not None
        worst_case = prices.cost(
            prices.upper_prompt_tokens(prompt_estimate),
            body["max_tokens"],
            model.input_price,
            model.output_price,
        )
        try:
            budgets.check_budget(reply.user, worst_case, "")
        except Refused:
            return None  # the first line of the question stays the title
        charge = Charge.objects.create(
            user=reply.user,
            conversation=reply.conversation,
            chat_model=model,
            model_id=model.model_id,
            kind=Charge.Kind.TITLE,
            input_price=model.input_price,
            output_price=model.output_price,
            reserved=worst_case,
            prompt_tokens=prompt_estimate,
            estimated=True,
        )
        return TitlePlan(
            conversation_id=reply.conversation_id,
            charge_id=charge.pk,
            reserved=worst_case,
            body=body,
            model_id=model.model_id,
            reasoning_model=model.reasoning,
            prompt_estimate=prompt_estimate,
        )


def first_exchange_reply(user: User, conversation_id: int) -> int:
    """The finished reply of the conversation's first question as it reads now: what a new
    title is written from. Refused when there is none yet."""
    conversation = owned_conversation(user, conversation_id)
    path = [m for m in active_path(conversation)]
    question = next((m for m in path if m.role == Message.Role.USER), None)
    reply = next(
        (
            m
            for m in path
            if question is not None
            and m.parent_id == question.pk
            and m.role == Message.Role.ASSISTANT
            and m.status == Message.Status.COMPLETE
        ),
        None,
    )
    if reply is None:
        raise Refused(errors.CONFLICT, "A title is written once the first reply is complete.")
    return reply.pk


def clean_title(text: str) -> str:
    """The first line of a model's answer, without decoration, at most 80 characters."""
    line = next((part.strip() for part in text.splitlines() if part.strip()), "")
    line = re.sub(r"^(title\s*:\s*)", "", line, flags=re.IGNORECASE)
    line = line.strip(TITLE_DECORATION).rstrip(".!:;,")
    line = re.sub(r"\s+", " ", line)
    if len(line) > MAX_TITLE_CHARS:
        line = line[: MAX_TITLE_CHARS - 1].rstrip() + "…"
    return line


def finish_title(
    plan: TitlePlan,
    text: str,
    reasoning: str,
    prompt_tokens: int | None,
    completion_tokens: int | None,
    lava_request_id: str,
) -> str | None:
    """Settle the title's charge and apply the title unless the user renamed meanwhile."""
    with transaction.atomic():
        charge = Charge.objects.select_for_update().get(pk=plan.charge_id)
        if prompt_tokens is None or completion_tokens is None:
            charge.prompt_tokens = plan.prompt_estimate
            charge.completion_tokens = prices.estimate_tokens(text + reasoning)
            charge.estimated = True
        else:
            charge.prompt_tokens = prompt_tokens
            charge.completion_tokens = completion_tokens
            charge.estimated = False
        assert charge.input_price is not None and charge.output_price is not None
        charge.usage_cost = prices.cost(
            charge.prompt_tokens, charge.completion_tokens, charge.input_price, charge.output_price
        )
        charge.cost = settlement.bounded(charge.usage_cost, plan.reserved)
        charge.state = Charge.State.SETTLED
        charge.lava_request_id = lava_request_id[:100]
        charge.settled_at = timezone.now()
        charge.save()
        title = clean_title(text)
        if not title:
            return None
        updated = Conversation.objects.filter(
            pk=plan.conversation_id, title_is_custom=False
        ).update(title=title)
        return title if updated else None
