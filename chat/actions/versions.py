"""Versions of a reply or question (regenerations and edits): listing them and showing one."""

from __future__ import annotations

from django.contrib.auth.models import User
from django.db import transaction

from chat import errors
from chat.errors import Refused
from chat.models import (
    Conversation,
    Message,
)


def siblings(conversation: Conversation) -> dict[int, list[int]]:
    """For every message, the ids of the versions at its place (same parent, same role)."""
    groups: dict[tuple[int | None, str], list[int]] = {}
    for pk, parent, role in conversation.messages.values_list("pk", "parent_id", "role").order_by(
        "id"
    ):
        groups.setdefault((parent, role), []).append(pk)
    return {pk: group for group in groups.values() for pk in group}


def show_version(user: User, message_id: int) -> Conversation:
    """Make `message_id` the version shown at its place; the conversation continues from it.

    The path becomes its ancestors, itself, and below it the most recent version at each step.
    """
    with transaction.atomic():
        target = (
            Message.objects.filter(pk=message_id, user=user).select_related("conversation").first()
        )
        if target is None or target.conversation.owner_id != user.pk:
            raise Refused(errors.NOT_FOUND, "No such message.")
        conversation = target.conversation
        if conversation.messages.filter(status=Message.Status.STREAMING).exists():
            raise Refused(errors.CONFLICT, "A reply is still being written. Wait or stop it first.")
        rows = list(conversation.messages.values_list("pk", "parent_id"))
        parent_of = dict(rows)
        children: dict[int | None, list[int]] = {}
        for pk, parent in rows:
            children.setdefault(parent, []).append(pk)
        path = []
        node: int | None = target.pk
        while node is not None:
            path.append(node)
            node = parent_of.get(node)
        node = target.pk
        while children.get(node):
            node = max(children[node])
            path.append(node)
        conversation.messages.exclude(pk__in=path).update(active=False)
        conversation.messages.filter(pk__in=path).update(active=True)
    return conversation
