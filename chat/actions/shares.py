"""Read-only share links of a conversation."""

from __future__ import annotations

import secrets
from typing import Any

from chat.billing import prices
from chat.models import (
    Conversation,
    Message,
    ShareLink,
)


def create_share(
    conversation: Conversation,
    *,
    include_reasoning: bool,
    include_costs: bool,
    include_system_prompt: bool,
) -> ShareLink:
    """A read-only snapshot of the conversation as it reads now; later messages are not shown."""
    messages = []
    for message in conversation.messages.filter(active=True).select_related("model").order_by("id"):
        if message.role == Message.Role.ASSISTANT and message.status == Message.Status.STREAMING:
            continue
        item: dict[str, Any] = {"role": message.role, "content": message.content}
        if message.role == Message.Role.ASSISTANT:
            item["model"] = message.model.name if message.model else ""
            if include_reasoning and message.reasoning:
                item["reasoning"] = message.reasoning
            if include_costs and message.cost is not None:
                item["cost"] = prices.plain(message.cost)
        messages.append(item)
    snapshot: dict[str, Any] = {"title": conversation.title, "messages": messages}
    if include_system_prompt and conversation.system_prompt:
        snapshot["system_prompt"] = conversation.system_prompt
    return ShareLink.objects.create(
        token=secrets.token_urlsafe(18),
        conversation=conversation,
        owner=conversation.owner,
        snapshot=snapshot,
        include_reasoning=include_reasoning,
        include_costs=include_costs,
        include_system_prompt=include_system_prompt,
    )


def live_share(token: str) -> ShareLink | None:
    return ShareLink.objects.filter(token=token, revoked_at__isnull=True).first()
