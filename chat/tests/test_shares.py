"""Share links at the API level: a read-only snapshot without private parts unless the owner
opts in, revocation, and who may share."""

from __future__ import annotations

import json
from http import HTTPStatus

import pytest
from django.test import Client

from chat.models import Conversation, Message, ShareLink

from .test_api_conversations import make_conversation


@pytest.mark.django_db
def test_a_share_link_shows_a_read_only_snapshot_without_private_parts(
    user_client: Client, user
) -> None:
    conversation = make_conversation(user, "Shared chat")
    Conversation.objects.filter(pk=conversation.pk).update(system_prompt="SECRET SYSTEM")
    response = user_client.post(
        f"/api/conversations/{conversation.pk}/shares", "{}", content_type="application/json"
    )
    assert response.status_code == HTTPStatus.CREATED
    share = response.json()
    anonymous = Client()
    page = anonymous.get(f"/s/{share['token']}")
    assert page.status_code == HTTPStatus.OK
    html = page.content.decode()
    assert "Shared chat" in html and "answer in Shared chat" in html
    assert "thoughts" not in html  # reasoning
    assert "SECRET SYSTEM" not in html
    assert "Cost:" not in html
    # A later message is not in the snapshot.
    Message.objects.create(conversation=conversation, user=user, role="user", content="added later")
    assert "added later" not in anonymous.get(f"/s/{share['token']}").content.decode()


@pytest.mark.django_db
def test_the_owner_can_opt_in_to_reasoning_costs_and_system_prompt(
    user_client: Client, user
) -> None:
    conversation = make_conversation(user, "Open book")
    Conversation.objects.filter(pk=conversation.pk).update(system_prompt="Be kind.")
    share = user_client.post(
        f"/api/conversations/{conversation.pk}/shares",
        json.dumps(
            {"include_reasoning": True, "include_costs": True, "include_system_prompt": True}
        ),
        content_type="application/json",
    ).json()
    html = Client().get(f"/s/{share['token']}").content.decode()
    assert "thoughts" in html and "Be kind." in html and "$0.0000081648" in html


@pytest.mark.django_db
def test_a_revoked_link_is_404_and_only_the_owner_can_share_or_revoke(
    user_client: Client, user, make_user
) -> None:
    conversation = make_conversation(user)
    share = user_client.post(
        f"/api/conversations/{conversation.pk}/shares", "{}", content_type="application/json"
    ).json()
    mallory = Client()
    mallory.force_login(make_user("mallory"))
    assert mallory.delete(f"/api/shares/{share['token']}").status_code == HTTPStatus.NOT_FOUND
    assert (
        mallory.post(
            f"/api/conversations/{conversation.pk}/shares", "{}", content_type="application/json"
        ).status_code
        == HTTPStatus.NOT_FOUND
    )
    assert Client().get(f"/s/{share['token']}").status_code == HTTPStatus.OK
    assert user_client.delete(f"/api/shares/{share['token']}").status_code == (
        HTTPStatus.NO_CONTENT
    )
    assert Client().get(f"/s/{share['token']}").status_code == HTTPStatus.NOT_FOUND
    assert Client().get("/s/never-existed").status_code == HTTPStatus.NOT_FOUND
    assert ShareLink.objects.get(token=share["token"]).revoked_at is not None
