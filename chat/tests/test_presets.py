"""Presets at the API level: created, changed and deleted by their owner, published ones
read-only, refusals, and a chat started from one."""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.test import Client

from chat.models import ChatModel, Preset
from chat.testing.wsclient import MODEL, open_socket, request_id, streamed

streaming = pytest.mark.django_db(transaction=True, serialized_rollback=True)


@pytest.mark.django_db
def test_presets_are_created_listed_changed_and_deleted_by_their_owner(
    user_client: Client,
) -> None:
    created = user_client.post(
        "/api/presets",
        json.dumps(
            {
                "name": "French tutor",
                "model": "Qwen/Qwen3-32B",
                "system_prompt": "Answer in French.",
                "params": {"temperature": 0.3},
            }
        ),
        content_type="application/json",
    )
    assert created.status_code == HTTPStatus.CREATED
    preset = created.json()
    assert preset["editable"] and not preset["published"]
    listed = user_client.get("/api/presets").json()["presets"]
    assert [p["name"] for p in listed] == ["French tutor"]
    patched = user_client.patch(
        f"/api/presets/{preset['id']}",
        json.dumps({"name": "French teacher"}),
        content_type="application/json",
    )
    assert patched.json()["name"] == "French teacher"
    assert user_client.delete(f"/api/presets/{preset['id']}").status_code == HTTPStatus.NO_CONTENT
    assert user_client.get("/api/presets").json()["presets"] == []


@pytest.mark.django_db
@pytest.mark.parametrize(
    "body",
    [
        {},
        {"name": ""},
        {"name": "x", "model": "nobody/None"},
        {"name": "x", "params": {"top_p": 5}},
    ],
)
def test_a_bad_preset_is_refused(user_client: Client, body: dict[str, Any]) -> None:
    response = user_client.post("/api/presets", json.dumps(body), content_type="application/json")
    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert Preset.objects.count() == 0


@pytest.mark.django_db
def test_another_users_preset_is_not_found_and_published_ones_are_read_only(
    user_client: Client, make_user
) -> None:
    theirs = Preset.objects.create(owner=make_user("mallory"), name="Mallory's")
    published = Preset.objects.create(owner=None, name="Everyone's")
    assert user_client.get(f"/api/presets/{theirs.pk}").status_code == HTTPStatus.NOT_FOUND
    assert user_client.delete(f"/api/presets/{theirs.pk}").status_code == HTTPStatus.NOT_FOUND
    names = [p["name"] for p in user_client.get("/api/presets").json()["presets"]]
    assert names == ["Everyone's"]
    response = user_client.patch(
        f"/api/presets/{published.pk}", json.dumps({"name": "x"}), content_type="application/json"
    )
    assert response.status_code == HTTPStatus.FORBIDDEN
    assert Preset.objects.get(pk=published.pk).name == "Everyone's"


@pytest.mark.django_db
def test_admins_publish_presets_in_the_admin(admin_client: Client) -> None:
    model = ChatModel.objects.get(model_id=MODEL)
    response = admin_client.post(
        "/admin/chat/preset/add/",
        {
            "name": "House style",
            "owner": "",
            "model": model.pk,
            "system_prompt": "Be concise.",
            "params": "{}",
        },
    )
    assert response.status_code == HTTPStatus.FOUND, response.content.decode()[:1000]
    assert Preset.objects.get(name="House style").published


@streaming
async def test_a_chat_started_from_a_preset_uses_its_model_prompt_and_parameters(
    upstream, alice, bob
) -> None:
    @database_sync_to_async
    def presets() -> tuple[int, int]:
        model = ChatModel.objects.get(model_id="Qwen/Qwen3-32B")
        mine = Preset.objects.create(
            owner=alice,
            name="Tutor",
            model=model,
            system_prompt="Answer in French.",
            params={"temperature": 0.1, "max_tokens": 200},
        )
        theirs = Preset.objects.create(owner=bob, name="Bob's")
        return mine.pk, theirs.pk

    mine, theirs = await presets()
    upstream.push_script(tokens=2, interval_ms=1)
    socket = await open_socket(alice)
    await socket.send(
        {"type": "send", "request_id": request_id(), "conversation": None, "content": "Bonjour",
         "preset": mine}
    )  # fmt: skip
    accepted = await socket.recv()
    await socket.done(accepted["message"])
    body = upstream.log[-1].body
    assert body["model"] == "Qwen/Qwen3-32B"
    assert body["messages"][0] == {"role": "system", "content": "Answer in French."}
    assert (body["temperature"], body["max_tokens"]) == (0.1, 200)
    assert streamed(upstream)

    await socket.send(
        {"type": "send", "request_id": request_id(), "conversation": None, "content": "x",
         "preset": theirs}
    )  # fmt: skip
    answer = await socket.recv()
    await socket.close()
    assert answer["code"] == "not_found"
