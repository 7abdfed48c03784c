"""Each user's images fit in MAX_IMAGE_STORAGE_BYTES, whether uploaded or imported, and images
uploaded but never sent are removed after UNATTACHED_IMAGE_SECONDS."""

from __future__ import annotations

import base64
import json
from datetime import timedelta
from http import HTTPStatus
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.utils import timezone

from chat import attachments
from chat.models import Attachment, Conversation, Message

from .test_api_conversations import make_conversation
from .test_images import png, upload

pytestmark = pytest.mark.django_db

MB = 1024 * 1024


@pytest.fixture(autouse=True)
def quick_password_hashing(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def image_of(size: int) -> bytes:
    """A readable PNG of exactly `size` bytes (the bytes after its end are ignored by readers)."""
    picture = png(32, 32)
    return picture + b"\0" * (size - len(picture))


def test_an_upload_that_does_not_fit_is_refused_saying_how_much_is_used(
    user_client: Client, user, settings
) -> None:
    settings.MAX_IMAGE_STORAGE_BYTES = 2 * MB
    assert upload(user_client, image_of(MB + MB // 2)).status_code == HTTPStatus.CREATED
    response = upload(user_client, image_of(MB))
    assert response.status_code == HTTPStatus.BAD_REQUEST
    error = response.json()["error"]
    assert error["code"] == "storage_full"
    assert error["message"].startswith(
        "Your images already take 1.5 MB of your 2.0 MB; this image (1.0 MB) would not fit."
    )
    assert Attachment.objects.filter(owner=user).count() == 1
    # What is left still takes a smaller one.
    assert upload(user_client, image_of(MB // 4)).status_code == HTTPStatus.CREATED


def test_the_storage_is_each_users_own(user_client: Client, make_user, settings) -> None:
    settings.MAX_IMAGE_STORAGE_BYTES = 2 * MB
    other = Client()
    other.force_login(make_user("bob"))
    assert upload(other, image_of(MB + MB // 2)).status_code == HTTPStatus.CREATED
    assert upload(user_client, image_of(MB + MB // 2)).status_code == HTTPStatus.CREATED


def export_with_images(*sizes: int) -> bytes:
    images = [
        {"content_type": "image/png", "data": base64.b64encode(image_of(size)).decode()}
        for size in sizes
    ]
    return json.dumps(
        {
            "format": "chutes-chat/1",
            "conversations": [
                {"title": "pictures", "messages": [{"role": "user", "content": "look", "id": 1}]},
                {
                    "title": "more pictures",
                    "messages": [{"role": "user", "content": "see", "id": 1, "images": images}],
                },
            ],
        }
    ).encode()


def import_file(client: Client, raw: bytes) -> Any:
    return client.post("/api/import", {"file": SimpleUploadedFile("chats.json", raw)})


def test_an_import_whose_images_do_not_fit_is_refused_whole(
    user_client: Client, user, settings
) -> None:
    settings.MAX_IMAGE_STORAGE_BYTES = 2 * MB
    assert upload(user_client, image_of(MB)).status_code == HTTPStatus.CREATED
    # Each image fits alone; together with what is stored they do not.
    response = import_file(user_client, export_with_images(MB // 2, MB // 2 + 1))
    assert response.status_code == HTTPStatus.BAD_REQUEST
    error = response.json()["error"]
    assert error["code"] == "invalid_import"
    assert error["message"] == (
        "Nothing was imported. Your images already take 1.0 MB of your 2.0 MB; the images in "
        "this file (1.0 MB) would not fit. Delete conversations with images you no longer need "
        "to make room."
    )
    assert not Conversation.objects.filter(owner=user).exists()
    assert Attachment.objects.filter(owner=user).count() == 1


def test_an_import_whose_images_fit_is_stored(user_client: Client, user, settings) -> None:
    settings.MAX_IMAGE_STORAGE_BYTES = 2 * MB
    response = import_file(user_client, export_with_images(MB // 2, MB // 2))
    assert response.status_code == HTTPStatus.CREATED, response.content
    assert attachments.used_storage(user) == MB


def stored(owner: Any, message: Message | None = None, age: timedelta = timedelta(0)) -> int:
    image = Attachment.objects.create(
        owner=owner,
        message=message,
        content_type="image/png",
        data=image_of(1000),
        size=1000,
        width=32,
        height=32,
    )
    Attachment.objects.filter(pk=image.pk).update(created_at=timezone.now() - age)
    return image.pk


def test_images_never_sent_are_removed_after_a_while(user, make_user, settings) -> None:
    settings.UNATTACHED_IMAGE_SECONDS = 3600
    question = make_conversation(user).messages.get(role="user")
    old_unsent = stored(user, age=timedelta(hours=2))
    someone_elses = stored(make_user("bob"), age=timedelta(days=3))
    recent_unsent = stored(user, age=timedelta(minutes=30))
    old_sent = stored(user, message=question, age=timedelta(days=3))

    now = timezone.now()
    cutoff = attachments.unattached_cutoff(now)
    assert cutoff == now - timedelta(hours=1)
    assert attachments.remove_unattached(cutoff) == 2

    remaining = set(Attachment.objects.values_list("pk", flat=True))
    assert remaining == {recent_unsent, old_sent}
    assert old_unsent not in remaining and someone_elses not in remaining
    assert attachments.remove_unattached(cutoff) == 0


def test_removing_unsent_images_makes_room(user_client: Client, user, settings) -> None:
    settings.MAX_IMAGE_STORAGE_BYTES = 2 * MB
    assert upload(user_client, image_of(MB + MB // 2)).status_code == HTTPStatus.CREATED
    assert upload(user_client, image_of(MB)).status_code == HTTPStatus.BAD_REQUEST
    attachments.remove_unattached(timezone.now() + timedelta(seconds=1))
    assert upload(user_client, image_of(MB)).status_code == HTTPStatus.CREATED
