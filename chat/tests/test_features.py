"""Power features at the API level: images for vision models, reply versions, export and
import, share links, presets; each with its refusals."""

from __future__ import annotations

import io
import json
from http import HTTPStatus
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from PIL import Image

from chat.billing import prices
from chat.models import ChatModel, Conversation, Message, Preset, ShareLink
from chat.testing.wsclient import MODEL, counts, open_socket, request_id, send_and_accept, streamed

from .test_api_conversations import make_conversation

VISION = "Qwen/Qwen2.5-VL-32B-Instruct"
streaming = pytest.mark.django_db(transaction=True, serialized_rollback=True)


def png(width: int = 64, height: int = 48, color: str = "red") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, format="PNG")
    return out.getvalue()


def upload(client: Client, data: bytes, name: str = "picture.png") -> Any:
    return client.post("/api/images", {"image": SimpleUploadedFile(name, data)})


# Images ---------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_an_image_upload_is_checked_and_served_only_to_its_owner(
    user_client: Client, make_user
) -> None:
    response = upload(user_client, png(300, 200))
    assert response.status_code == HTTPStatus.CREATED
    image = response.json()
    assert (image["content_type"], image["width"], image["height"]) == ("image/png", 300, 200)
    served = user_client.get(image["url"])
    assert served.status_code == HTTPStatus.OK
    assert served["Content-Type"] == "image/png"
    assert served.content == png(300, 200)
    other = Client()
    other.force_login(make_user("mallory"))
    assert other.get(image["url"]).status_code == HTTPStatus.NOT_FOUND


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"%PDF-1.4 not an image", "not an image we can read"),
        (b"", "not an image we can read"),
    ],
)
def test_a_file_that_is_not_an_image_is_refused(
    user_client: Client, data: bytes, message: str
) -> None:
    response = upload(user_client, data, "file.png")
    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert response.json()["error"]["code"] == "invalid_image"
    assert message in response.json()["error"]["message"]


@pytest.mark.django_db
def test_an_oversized_image_is_refused_with_its_size(user_client: Client, settings) -> None:
    settings.MAX_IMAGE_BYTES = 1024 * 1024
    big = png(64, 64) + b"\0" * (1024 * 1024)
    response = upload(user_client, big)
    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert "limited to 1 MB" in response.json()["error"]["message"]


@pytest.mark.django_db
def test_the_chat_page_states_the_image_limits_it_checks_before_uploading(
    user_client: Client, settings
) -> None:
    settings.MAX_IMAGE_BYTES = 1234567
    settings.MAX_IMAGES_PER_MESSAGE = 3
    response = user_client.get("/")
    assert response.status_code == HTTPStatus.OK
    assert b'data-max-image-bytes="1234567"' in response.content
    assert b'data-max-images="3"' in response.content


@streaming
async def test_an_image_goes_to_a_vision_model_as_a_data_uri_and_is_stored(upstream, alice) -> None:
    @database_sync_to_async
    def uploaded() -> int:
        client = Client()
        client.force_login(alice)
        return upload(client, png(56, 56)).json()["id"]

    image_id = await uploaded()
    upstream.push_script(tokens=3, interval_ms=1)
    socket = await open_socket(alice)
    accepted = await send_and_accept(
        socket, "What colour is this?", model=VISION, images=[image_id]
    )
    done = (await socket.done(accepted["message"]))[-1]
    await socket.close()
    assert done["status"] == "complete"
    content = upstream.log[-1].body["messages"][-1]["content"]
    assert content[0] == {"type": "text", "text": "What colour is this?"}
    assert content[1]["type"] == "image_url"
    assert content[1]["image_url"]["url"].startswith("data:image/png;base64,")
    # Billed with the image's tokens as the provider counted them.
    reply = await database_sync_to_async(Message.objects.get)(pk=accepted["message"])
    assert reply.prompt_tokens == upstream.log[-1].prompt_tokens
    assert reply.cost == prices.cost(
        reply.prompt_tokens, reply.completion_tokens, reply.input_price, reply.output_price
    )

    @database_sync_to_async
    def detail() -> dict[str, Any]:
        client = Client()
        client.force_login(alice)
        return client.get(f"/api/conversations/{accepted['conversation']}").json()

    question = (await detail())["messages"][0]
    assert [i["id"] for i in question["images"]] == [image_id]


@streaming
async def test_images_to_a_model_without_vision_are_refused_before_anything_is_sent(
    upstream, alice
) -> None:
    @database_sync_to_async
    def uploaded() -> int:
        client = Client()
        client.force_login(alice)
        return upload(client, png()).json()["id"]

    image_id = await uploaded()
    before = await counts()
    socket = await open_socket(alice)
    await socket.send(
        {
            "type": "send",
            "request_id": request_id(),
            "conversation": None,
            "model": MODEL,
            "content": "look",
            "images": [image_id],
        }
    )
    answer = await socket.recv()
    await socket.close()
    assert answer["code"] == "vision_required"
    assert "cannot read images" in answer["message"]
    assert upstream.log == []
    assert await counts() == before


@streaming
async def test_another_users_image_cannot_be_sent(upstream, alice, bob) -> None:
    @database_sync_to_async
    def uploaded() -> int:
        client = Client()
        client.force_login(bob)
        return upload(client, png()).json()["id"]

    image_id = await uploaded()
    socket = await open_socket(alice)
    await socket.send(
        {
            "type": "send",
            "request_id": request_id(),
            "conversation": None,
            "model": VISION,
            "content": "whose?",
            "images": [image_id],
        }
    )
    answer = await socket.recv()
    await socket.close()
    assert answer["code"] == "not_found"
    assert upstream.log == []


# Reply versions -------------------------------------------------------------------------------


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


# Export and import ----------------------------------------------------------------------------


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


# Share links --------------------------------------------------------------------------------------


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


# Presets --------------------------------------------------------------------------------------


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


@pytest.mark.django_db
def test_images_count_in_the_prompt_estimate(user) -> None:
    from chat.actions import conversations, prompts
    from chat.attachments import image_tokens
    from chat.models import Attachment
    from chat.protocol import Params

    model = ChatModel.objects.get(model_id=VISION)
    conversation = Conversation.objects.create(owner=user, model=model, has_images=True)
    question = Message.objects.create(
        conversation=conversation, user=user, role="user", content="What is this?"
    )
    text_only = prompts.build_prompt(conversation, [question], model, Params(), "r")[1]
    Attachment.objects.create(
        owner=user, message=question, content_type="image/png", data=png(2048, 1024),
        size=1, width=2048, height=1024,
    )  # fmt: skip
    with_image = prompts.build_prompt(
        conversation, conversations.active_path(conversation), model, Params(), "r"
    )[1]
    # 2048x1024 is seen at 1024x512: 37 x 19 patches of 28 px.
    assert image_tokens(2048, 1024) == 37 * 19
    assert with_image == text_only + 37 * 19
