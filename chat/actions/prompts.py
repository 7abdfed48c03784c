"""The prompt sent upstream for a reply: the conversation's active path as messages, images
included, trimmed to the model's context, and the estimate of its size."""

from __future__ import annotations

from typing import Any

from django.conf import settings

from chat import errors, protocol
from chat.attachments import data_uri, image_tokens
from chat.billing import prices
from chat.errors import Refused
from chat.models import (
    ChatModel,
    Conversation,
    Message,
)
from chat.protocol import Params

# Below this many tokens of room a reply is not worth starting.
MIN_REPLY_TOKENS = 256


# Vision models spend at least this much on even a tiny image.
MIN_IMAGE_TOKENS = 64


def _turn(message: Message, model: ChatModel) -> tuple[dict[str, Any], int]:
    """One message as the upstream reads it, and its estimated tokens (images included)."""
    tokens = prices.estimate_prompt_tokens([{"content": message.content}])
    images = (
        list(message.attachments.all())
        # The conversation is loaded with the message by every caller: no query per message.
        if message.role == Message.Role.USER and message.conversation.has_images
        else []
    )
    if not images:
        return {"role": message.role, "content": message.content}, tokens
    if not model.vision:
        # History from a vision model, continued with one that cannot see.
        note = f"{message.content}\n\n[{len(images)} image(s) attached, not shown to this model]"
        return {"role": message.role, "content": note}, prices.estimate_tokens(note) + 4
    parts: list[dict[str, Any]] = [{"type": "text", "text": message.content}]
    parts += [{"type": "image_url", "image_url": {"url": data_uri(a)}} for a in images]
    tokens += sum(max(image_tokens(a.width, a.height), MIN_IMAGE_TOKENS) for a in images)
    return {"role": message.role, "content": parts}, tokens


def build_prompt(
    conversation: Conversation,
    history: list[Message],
    model: ChatModel,
    params: Params,
    request_id: str,
) -> tuple[dict[str, Any], int]:
    """The upstream body for the next reply and its estimated prompt tokens.

    History is the active path up to and including the question; reasoning is never sent back.
    The oldest turns are dropped to leave room for the reply within the model's context.
    """
    system_prompt = params.system_prompt
    if system_prompt is None:
        system_prompt = conversation.system_prompt
    system = [{"role": "system", "content": system_prompt}] if system_prompt.strip() else []
    turns: list[dict[str, Any]] = []
    sizes: list[int] = []
    for message in history:
        if message.content and (
            message.role == Message.Role.USER or message.status != Message.Status.STREAMING
        ):
            turn, size = _turn(message, model)
            turns.append(turn)
            sizes.append(size)
    # Stored parameters go through the same check as a frame's: a row written before it
    # existed (or by hand) cannot take a negative or textual max_tokens into a reservation.
    stored = protocol.stored_params(conversation.params)
    requested = params.max_tokens or stored.max_tokens
    max_tokens = min(requested or settings.DEFAULT_MAX_TOKENS, model.max_output_tokens)
    fixed = prices.estimate_prompt_tokens(system)
    total = fixed + sum(sizes)
    while len(turns) > 1 and total + max_tokens > model.context_length:
        total -= sizes.pop(0)
        turns.pop(0)
        # A conversation sent upstream starts with a question.
        while len(turns) > 1 and turns[0]["role"] != Message.Role.USER:
            total -= sizes.pop(0)
            turns.pop(0)
    room = model.context_length - total
    if room < min(max_tokens, MIN_REPLY_TOKENS):
        raise Refused(
            errors.CONTENT_TOO_LONG,
            f"The message is too long for {model.name}'s context of "
            f"{model.context_length:,} tokens. Shorten it or pick a model with a longer context.",
            request_id,
        )
    max_tokens = min(max_tokens, room)
    body: dict[str, Any] = {
        "model": model.model_id,
        "messages": system + turns,
        "max_tokens": max_tokens,
    }
    temperature = params.temperature
    if temperature is None:
        temperature = stored.temperature
    if temperature is not None:
        body["temperature"] = temperature
    top_p = params.top_p if params.top_p is not None else stored.top_p
    if top_p is not None:
        body["top_p"] = top_p
    return body, total
