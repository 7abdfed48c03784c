from __future__ import annotations

import json
from decimal import Decimal
from http import HTTPStatus
from typing import Any

import pytest
from django.test import Client

from chat.models import Charge, ChatModel, Conversation, Message

pytestmark = pytest.mark.django_db

MODEL = "deepseek-ai/DeepSeek-V3-0324"


def make_conversation(owner: Any, title: str = "Chat", **messages: Any) -> Conversation:
    model = ChatModel.objects.get(model_id=MODEL)
    conversation = Conversation.objects.create(owner=owner, title=title, model=model)
    question = Message.objects.create(
        conversation=conversation, user=owner, role="user", content=f"question in {title}"
    )
    Message.objects.create(
        conversation=conversation,
        user=owner,
        role="assistant",
        content=f"answer in {title}",
        reasoning="thoughts",
        parent=question,
        model=model,
        prompt_tokens=10,
        completion_tokens=20,
        cost=Decimal("0.0000081648"),
    )
    return conversation


def patch(client: Client, url: str, data: Any) -> Any:
    return client.patch(url, json.dumps(data), content_type="application/json")


def test_the_list_is_the_users_own_most_recent_first(user_client: Client, user, make_user) -> None:
    older = make_conversation(user, "older")
    newer = make_conversation(user, "newer")
    make_conversation(make_user("mallory"), "not yours")
    Conversation.objects.filter(pk=older.pk).update(updated_at="2020-01-01T00:00:00Z")
    data = user_client.get("/api/conversations").json()
    assert [c["id"] for c in data["conversations"]] == [newer.pk, older.pk]
    assert data["conversations"][0] == {
        "id": newer.pk,
        "title": "newer",
        "model": MODEL,
        "created": newer.created_at.isoformat(),
        "updated": Conversation.objects.get(pk=newer.pk).updated_at.isoformat(),
    }
    assert data["next_page"] is None


def test_the_list_is_paginated(user_client: Client, user) -> None:
    for i in range(5):
        make_conversation(user, f"chat {i}")
    first = user_client.get("/api/conversations", {"page_size": 2}).json()
    assert len(first["conversations"]) == 2
    assert first["next_page"] == 2
    third = user_client.get("/api/conversations", {"page_size": 2, "page": 3}).json()
    assert len(third["conversations"]) == 1
    assert third["next_page"] is None
    beyond = user_client.get("/api/conversations", {"page_size": 2, "page": 9}).json()
    assert beyond["conversations"] == []


def test_search_finds_titles_and_message_text(user_client: Client, user) -> None:
    make_conversation(user, "Holiday plans")
    make_conversation(user, "Code review")
    titles = lambda q: [  # noqa: E731
        c["title"] for c in user_client.get("/api/conversations", {"q": q}).json()["conversations"]
    ]
    assert titles("holiday") == ["Holiday plans"]
    assert titles("answer in Code") == ["Code review"]
    assert titles("nothing like this") == []


def test_detail_has_messages_in_order(user_client: Client, user) -> None:
    conversation = make_conversation(user, "detail")
    data = user_client.get(f"/api/conversations/{conversation.pk}").json()
    assert data["title"] == "detail"
    assert data["system_prompt"] == ""
    assert data["params"] == {}
    assert [m["role"] for m in data["messages"]] == ["user", "assistant"]
    reply = data["messages"][1]
    assert reply["content"] == "answer in detail"
    assert reply["reasoning"] == "thoughts"
    assert reply["model"] == MODEL
    assert reply["usage"] == {"prompt_tokens": 10, "completion_tokens": 20, "estimated": False}
    assert reply["cost"] == "0.000008164800"
    assert reply["status"] == "complete"
    assert reply["error"] is None


def test_another_users_conversation_is_404_for_every_method(user_client: Client, make_user) -> None:
    theirs = make_conversation(make_user("mallory"), "secret")
    url = f"/api/conversations/{theirs.pk}"
    missing = "/api/conversations/999999"
    for response in (
        user_client.get(url),
        patch(user_client, url, {"title": "mine now"}),
        user_client.delete(url),
    ):
        assert response.status_code == HTTPStatus.NOT_FOUND
        assert response.json() == user_client.get(missing).json()
    assert Conversation.objects.get(pk=theirs.pk).title == "secret"


def test_rename_and_settings(user_client: Client, user) -> None:
    conversation = make_conversation(user)
    url = f"/api/conversations/{conversation.pk}"
    response = patch(
        user_client,
        url,
        {
            "title": "  Renamed  ",
            "system_prompt": "Be brief.",
            "params": {"temperature": 0.2, "max_tokens": 500},
            "model": "Qwen/Qwen3-32B",
        },
    )
    assert response.status_code == HTTPStatus.OK
    conversation.refresh_from_db()
    assert conversation.title == "Renamed"
    assert conversation.title_is_custom
    assert conversation.system_prompt == "Be brief."
    assert conversation.params == {"temperature": 0.2, "max_tokens": 500}
    assert conversation.model.model_id == "Qwen/Qwen3-32B"


@pytest.mark.parametrize(
    "body",
    [
        {"title": ""},
        {"title": 5},
        {"title": "x" * 201},
        {"params": {"temperature": 3}},
        {"params": "hot"},
        {"model": "nobody/Nothing"},
        {"colour": "blue"},
    ],
)
def test_bad_changes_are_refused_and_change_nothing(user_client: Client, user, body) -> None:
    conversation = make_conversation(user, "Keep me")
    response = patch(user_client, f"/api/conversations/{conversation.pk}", body)
    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert response.json()["error"]["message"]
    conversation.refresh_from_db()
    assert conversation.title == "Keep me"
    assert conversation.params == {}


def test_a_body_that_is_not_json_is_refused(user_client: Client, user) -> None:
    conversation = make_conversation(user)
    response = user_client.patch(
        f"/api/conversations/{conversation.pk}", "{not json", content_type="application/json"
    )
    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert response.json()["error"]["code"] == "invalid_frame"


def test_delete_removes_the_conversation_but_keeps_the_charges(user_client: Client, user) -> None:
    conversation = make_conversation(user)
    reply = conversation.messages.get(role="assistant")
    Charge.objects.create(
        user=user, message=reply, model_id=MODEL, state="settled", cost=Decimal("0.01")
    )
    response = user_client.delete(f"/api/conversations/{conversation.pk}")
    assert response.status_code == HTTPStatus.NO_CONTENT
    assert not Conversation.objects.filter(pk=conversation.pk).exists()
    charge = Charge.objects.get(user=user)
    assert charge.message is None
    assert charge.cost == Decimal("0.01")


def test_writes_need_the_csrf_token(user) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    conversation = make_conversation(user)
    url = f"/api/conversations/{conversation.pk}"
    assert patch(client, url, {"title": "x"}).status_code == HTTPStatus.FORBIDDEN
    assert client.delete(url).status_code == HTTPStatus.FORBIDDEN
    assert client.get(url).status_code == HTTPStatus.OK


def test_anonymous_api_calls_are_401(client: Client, user) -> None:
    conversation = make_conversation(user)
    assert client.get("/api/conversations").status_code == HTTPStatus.UNAUTHORIZED
    assert (
        client.get(f"/api/conversations/{conversation.pk}").status_code == HTTPStatus.UNAUTHORIZED
    )


def test_a_body_nested_deeper_than_the_parser_allows_is_refused(user_client: Client, user) -> None:
    conversation = make_conversation(user)
    deep = '{"title": ' + "[" * 200_000 + "]" * 200_000 + "}"
    response = user_client.patch(
        f"/api/conversations/{conversation.pk}", deep, content_type="application/json"
    )
    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert response.json()["error"]["code"] == "invalid_frame"
    presets = user_client.post("/api/presets", deep, content_type="application/json")
    assert presets.status_code == HTTPStatus.BAD_REQUEST
