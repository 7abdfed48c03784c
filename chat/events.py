"""Channel-layer groups, and events that synchronous code sends once its change is committed.

Every socket watching a conversation is in the conversation's group; the process running a reply
listens on the reply's control group, from any process (through Redis when there are several).
A synchronous action that must tell them something (deleting a conversation stops its streaming
replies) sends the event with `send_on_commit`: it leaves only if the change that caused it is
committed, and only after, so whoever reacts reads the committed rows. Outside a transaction it
leaves at once.
"""

from __future__ import annotations

import functools
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction


def conversation_group(conversation_id: int) -> str:
    return f"conv.{conversation_id}"


def control_group(message_id: int) -> str:
    return f"gen.{message_id}"


# Every process listens here (with several processes) for the conversations the others' sockets
# watch: a reply's deltas cross to other processes only for those.
WATCHERS_GROUP = "chat.watchers"


def watchers_event(origin: str, conversation_ids: list[int]) -> dict[str, Any]:
    """The conversations a process's sockets watch (sent to WATCHERS_GROUP)."""
    return {"type": "gen.watchers", "origin": origin, "conversations": conversation_ids}


def watchers_question(origin: str) -> dict[str, Any]:
    """A process that just started asks the others to announce their watched conversations."""
    return {"type": "gen.watchers.ask", "origin": origin}


def stop_event(message_id: int) -> dict[str, Any]:
    """Stop the reply `message_id` (sent to its control group)."""
    return {"type": "gen.stop", "message": message_id}


def send_on_commit(group: str, event: dict[str, Any]) -> None:
    """Send `event` to `group` once the current transaction commits (at once outside one)."""
    transaction.on_commit(functools.partial(_send, group, event))


def _send(group: str, event: dict[str, Any]) -> None:
    layer = get_channel_layer()
    if layer is not None:
        async_to_sync(layer.group_send)(group, event)
