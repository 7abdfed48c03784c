"""Export and import at the API level: Markdown and JSON exports, an export imported back,
malformed imports refused whole."""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from chat.models import Conversation
from chat.testing.wsclient import MODEL

from .test_api_conversations import make_conversation


@pytest.mark.django_db
def test_a_conversation_exports_as_markdown_and_json(user_client: Client, user) -> None:
    conversation = make_conversation(user, "Export me")
    markdown = user_client.get(f"/api/conversations/{conversation.pk}/export.md")
    assert markdown.status_code == HTTPStatus.OK
    assert markdown["Content-Disposition"].startswith("attachment;")
    text = markdown.content.decode()
    assert text.startswith("# Export me")
    assert "question in Export me" in text and "answer in Export me" in text
    assert "$0.0000081648" in text
    data = user_client.get(f"/api/conversations/{conversation.pk}/export.json").json()
    assert data["format"] == "chutes-chat/1"
    record = data["conversations"][0]
    assert record["title"] == "Export me"
    reply = record["messages"][1]
    assert (reply["model"], reply["cost"], reply["prompt_tokens"]) == (
        MODEL,
        "0.000008164800",
        10,
    )
    assert reply["created"]


@pytest.mark.django_db
def test_export_all_and_import_it_back(user_client: Client, user, make_user) -> None:
    make_conversation(user, "One")
    make_conversation(user, "Two")
    exported = user_client.get("/api/export").content
    other = Client()
    newcomer = make_user("newcomer")
    other.force_login(newcomer)
    response = other.post(
        "/api/import", {"file": SimpleUploadedFile("chats.json", exported, "application/json")}
    )
    assert response.status_code == HTTPStatus.CREATED, response.content
    assert response.json()["imported"] == 2
    titles = sorted(Conversation.objects.filter(owner=newcomer).values_list("title", flat=True))
    assert titles == ["One", "Two"]
    copy = Conversation.objects.get(owner=newcomer, title="One")
    assert list(copy.messages.order_by("id").values_list("role", "content")) == [
        ("user", "question in One"),
        ("assistant", "answer in One"),
    ]
    # History is kept for reading; nothing is billed again.
    assert newcomer.charges.count() == 0


def _import(client: Client, payload: Any) -> Any:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return client.post("/api/import", {"file": SimpleUploadedFile("x.json", raw)})


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"{not json", "This file is not JSON"),
        ({"format": "other"}, "format"),
        ({"format": "chutes-chat/1", "conversations": "no"}, "list of conversations"),
        (
            {
                "format": "chutes-chat/1",
                "conversations": [
                    {"title": "fine", "messages": [{"role": "user", "content": "ok", "id": 1}]},
                    {"title": "broken", "messages": [{"role": "wizard", "content": "x"}]},
                ],
            },
            "conversation 2, message 1 role",
        ),
        (
            {
                "format": "chutes-chat/1",
                "conversations": [
                    {"messages": [{"role": "user", "content": "x", "id": 1, "parent": 99}]}
                ],
            },
            "must be an earlier message",
        ),
        (
            {
                "format": "chutes-chat/1",
                "conversations": [
                    {"messages": [{"role": "assistant", "content": "x", "cost": "lots"}]}
                ],
            },
            "cost: must be a decimal string",
        ),
        (
            {
                "format": "chutes-chat/1",
                "conversations": [
                    {
                        "messages": [
                            {
                                "role": "user",
                                "content": "x",
                                "images": [{"data": "bm90IGFuIGltYWdl"}],
                            }
                        ]
                    }
                ],
            },
            "not an image",
        ),
    ],
)
def test_a_malformed_import_is_refused_whole_with_a_clear_error(
    user_client: Client, user, payload: Any, message: str
) -> None:
    response = _import(user_client, payload)
    assert response.status_code == HTTPStatus.BAD_REQUEST
    error = response.json()["error"]
    assert error["code"] == "invalid_import"
    assert message in error["message"]
    assert Conversation.objects.filter(owner=user).count() == 0


@pytest.mark.django_db
def test_exporting_another_users_conversation_is_not_found(user_client: Client, make_user) -> None:
    theirs = make_conversation(make_user("mallory"))
    for fmt in ("md", "json"):
        response = user_client.get(f"/api/conversations/{theirs.pk}/export.{fmt}")
        assert response.status_code == HTTPStatus.NOT_FOUND
