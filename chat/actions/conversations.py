"""A user's conversations and replies: ownership checks, the active path of a conversation, the
user's profile and default model, replies in flight, and deleting a conversation."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.contrib.auth.models import User

from chat import errors, events, rows
from chat.errors import Refused
from chat.models import (
    ChatModel,
    Conversation,
    Message,
    Profile,
)


@dataclass(frozen=True)
class InFlight:
    message_id: int
    conversation_id: int
    content: str
    reasoning: str
    seq: int
    status: str
    heartbeat_at: datetime | None


def owned_conversation(user: User, conversation_id: int) -> Conversation:
    """The user's conversation, or Refused(not_found) whether or not it exists."""
    conversation = Conversation.objects.filter(pk=conversation_id, owner=user).first()
    if conversation is None:
        raise Refused(errors.NOT_FOUND, "No such conversation.")
    return conversation


def usable_model(model_id: str | None, request_id: str) -> ChatModel:
    if not model_id:
        raise Refused(errors.MODEL_UNAVAILABLE, "Pick a model first.", request_id)
    model = rows.one_by(ChatModel, "model_id", model_id)
    if model is None or not model.enabled:
        raise Refused(
            errors.MODEL_UNAVAILABLE,
            f"The model '{model_id}' is not available. Pick another model.",
            request_id,
        )
    if not model.priced:
        # Never bill at an unknown rate.
        raise Refused(
            errors.MODEL_UNAVAILABLE,
            f"The model '{model_id}' has no price yet. Pick another model.",
            request_id,
        )
    return model


def active_path(conversation: Conversation) -> list[Message]:
    """The messages the conversation reads as now, oldest first (reasoning not loaded: it is
    never sent back)."""
    messages = conversation.messages.filter(active=True).defer("reasoning").order_by("id")
    if conversation.has_images:
        messages = messages.prefetch_related("attachments")
    return list(messages)


def profile_for(user: User) -> Profile:
    profile, _ = Profile.objects.get_or_create(user=user)
    return profile


def default_model_id(user: User) -> str | None:
    profile = Profile.objects.filter(user=user).select_related("default_model").first()
    if profile is None or profile.default_model is None:
        return None
    return profile.default_model.model_id


def in_flight(user: User, conversation_id: int) -> list[InFlight]:
    """The user's conversation's replies still streaming (as last saved), or not_found."""
    owned_conversation(user, conversation_id)
    return [
        InFlight(m.pk, m.conversation_id, m.content, m.reasoning, m.seq, m.status, m.heartbeat_at)
        for m in Message.objects.filter(
            conversation_id=conversation_id,
            role=Message.Role.ASSISTANT,
            status=Message.Status.STREAMING,
        ).order_by("id")
    ]


def streaming_ids(user: User, conversation_id: int) -> list[int]:
    """The ids of the user's conversation's replies still streaming, or not_found."""
    owned_conversation(user, conversation_id)
    return list(
        Message.objects.filter(
            conversation_id=conversation_id,
            role=Message.Role.ASSISTANT,
            status=Message.Status.STREAMING,
        )
        .order_by("id")
        .values_list("pk", flat=True)
    )


def owned_reply(user: User, message_id: int) -> Message:
    reply = (
        Message.objects.filter(pk=message_id, user=user, role=Message.Role.ASSISTANT)
        .select_related("conversation")
        .first()
    )
    if reply is None or reply.conversation.owner_id != user.pk:
        raise Refused(errors.NOT_FOUND, "No such message.")
    return reply


def delete_conversation(conversation: Conversation) -> None:
    """Delete a conversation; the replies streaming in it are stopped once the deletion is
    committed (their charges settle when they end, the money having been spent)."""
    streaming = list(
        conversation.messages.filter(status=Message.Status.STREAMING).values_list("pk", flat=True)
    )
    conversation.delete()
    for message_id in streaming:
        events.send_on_commit(events.control_group(message_id), events.stop_event(message_id))
