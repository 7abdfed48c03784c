"""Images for vision models at the API level: upload, limits, ownership, what is sent
upstream, and how images count in the prompt estimate; each with its refusals."""

from __future__ import annotations

import io
from http import HTTPStatus
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from PIL import Image

from chat.billing import prices
from chat.models import ChatModel, Conversation, Message
from chat.testing.wsclient import MODEL, counts, open_socket, request_id, send_and_accept

VISION = "Qwen/Qwen2.5-VL-32B-Instruct"


streaming = pytest.mark.django_db(transaction=True, serialized_rollback=True)


def png(width: int = 64, height: int = 48, color: str = "red") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, format="PNG")
    return out.getvalue()


def upload(client: Client, data: bytes, name: str = "picture.png") -> Any:
    return client.post("/api/images", {"image": SimpleUploadedFile(name, data)})


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
