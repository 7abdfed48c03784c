"""Reply versions at the API level: regenerated replies kept as versions, the chat going on
from the one shown; another user's message is not found."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.test import Client

from chat.models import Message
from chat.testing.wsclient import open_socket, request_id, send_and_accept

from .test_api_conversations import make_conversation

streaming = pytest.mark.django_db(transaction=True, serialized_rollback=True)


@streaming
async def test_regenerated_replies_are_versions_and_the_chat_continues_from_the_shown_one(
    upstream, alice
) -> None:
    upstream.set_default_script(tokens=3, interval_ms=1)
    socket = await open_socket(alice)
    first = await send_and_accept(socket, "Pick a number")
    await socket.done(first["message"])
    replies = [first["message"]]
    for _ in range(2):
        await socket.send(
            {"type": "regenerate", "request_id": request_id(), "message": replies[-1]}
        )
        accepted = await socket.recv()
        await socket.done(accepted["message"])
        replies.append(accepted["message"])

    @database_sync_to_async
    def detail() -> dict[str, Any]:
        client = Client()
        client.force_login(alice)
        return client.get(f"/api/conversations/{first['conversation']}").json()

    @database_sync_to_async
    def show(message_id: int) -> Any:
        client = Client()
        client.force_login(alice)
        return client.post(f"/api/messages/{message_id}/show")

    shown = (await detail())["messages"][-1]
    assert shown["id"] == replies[-1]
    assert shown["versions"] == replies  # "3/3"

    response = await show(replies[0])
    assert response.status_code == HTTPStatus.OK
    assert [m["id"] for m in response.json()["messages"]] == [first["user_message"], replies[0]]
    first_text = (await database_sync_to_async(Message.objects.get)(pk=replies[0])).content

    follow = await send_and_accept(socket, "Why that one?", conversation=first["conversation"])
    await socket.done(follow["message"])
    await socket.close()
    sent = upstream.log[-1].body["messages"]
    assert sent[-2] == {"role": "assistant", "content": first_text}
    assert sent[-1] == {"role": "user", "content": "Why that one?"}


@pytest.mark.django_db
def test_showing_another_users_message_is_not_found(user_client: Client, make_user) -> None:
    theirs = make_conversation(make_user("mallory"))
    reply = theirs.messages.get(role="assistant")
    assert user_client.post(f"/api/messages/{reply.pk}/show").status_code == HTTPStatus.NOT_FOUND
