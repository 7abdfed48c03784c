"""Images for vision models: checked on upload, stored with the message, sent as data URIs."""

from __future__ import annotations

import base64
import io
import math
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.core.files.uploadedfile import UploadedFile
from django.db import connection, transaction
from django.db.models import Sum
from django.utils import timezone
from PIL import Image, UnidentifiedImageError

from .models import Attachment

# What browsers paste and drop, and what Chutes' vision models read.
FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif"}
# Chutes downscales images over 1024 px on their longest side; the model sees 28 px patches.
MAX_SIDE_SEEN = 1024
PATCH = 28
MAX_PIXELS = 40_000_000


class ImageRefused(ValueError):
    """An upload that is not an acceptable image; the message says why, for the user."""


class StorageFull(ImageRefused):
    """Images that would take the user past MAX_IMAGE_STORAGE_BYTES."""


def _mb(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MB"


def used_storage(owner: User) -> int:
    """Bytes the user's images take, sent or not."""
    return Attachment.objects.filter(owner=owner).aggregate(used=Sum("size"))["used"] or 0


def reserve_storage(owner: User, adding: int, what: str) -> None:
    """Refuse `adding` bytes of images that would not fit in the user's storage.

    Call inside the transaction that stores them: the user's row is locked (SQLite's
    IMMEDIATE transactions serialise writers already), so two uploads at once cannot both fit
    in the room left for one."""
    if connection.vendor != "sqlite":
        get_user_model().objects.select_for_update().filter(pk=owner.pk).first()
    used = used_storage(owner)
    limit = settings.MAX_IMAGE_STORAGE_BYTES
    if used + adding > limit:
        raise StorageFull(
            f"Your images already take {_mb(used)} of your {_mb(limit)}; {what} "
            f"({_mb(adding)}) would not fit. Delete conversations with images you no longer "
            "need to make room."
        )


def inspect(data: bytes) -> tuple[str, int, int]:
    """(content type, width, height) of an acceptable image; ImageRefused otherwise."""
    if len(data) > settings.MAX_IMAGE_BYTES:
        raise ImageRefused(
            f"Images are limited to {settings.MAX_IMAGE_BYTES // (1024 * 1024)} MB; this one "
            f"is {len(data) / (1024 * 1024):.1f} MB."
        )
    try:
        with Image.open(io.BytesIO(data)) as image:
            kind = image.format
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise ImageRefused("This image has too many pixels.")
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError):
        raise ImageRefused(
            "This file is not an image we can read. Use PNG, JPEG, WebP or GIF."
        ) from None
    if kind not in FORMATS:
        raise ImageRefused(
            f"{kind or 'This'} images are not supported. Use PNG, JPEG, WebP or GIF."
        )
    return FORMATS[kind], width, height


def store(owner: User, upload: UploadedFile) -> Attachment:
    if upload.size is None or upload.size > settings.MAX_IMAGE_BYTES:
        raise ImageRefused(
            f"Images are limited to {settings.MAX_IMAGE_BYTES // (1024 * 1024)} MB; this one "
            f"is {(upload.size or 0) / (1024 * 1024):.1f} MB."
        )
    data = upload.read()
    content_type, width, height = inspect(data)
    with transaction.atomic():
        reserve_storage(owner, len(data), "this image")
        return Attachment.objects.create(
            owner=owner,
            content_type=content_type,
            data=data,
            size=len(data),
            width=width,
            height=height,
        )


def unattached_cutoff(now: datetime | None = None) -> datetime:
    """Images uploaded before this and still not sent are removed."""
    return (now or timezone.now()) - timedelta(seconds=settings.UNATTACHED_IMAGE_SECONDS)


def remove_unattached(older_than: datetime) -> int:
    """Remove images uploaded before `older_than` that were never sent with a question (a
    closed tab, a removed image); returns how many. Sent images go with their conversation."""
    removed, _ = Attachment.objects.filter(message__isnull=True, created_at__lt=older_than).delete()
    return removed


def data_uri(attachment: Attachment) -> str:
    encoded = base64.b64encode(bytes(attachment.data)).decode("ascii")
    return f"data:{attachment.content_type};base64,{encoded}"


def image_tokens(width: int, height: int) -> int:
    """The tokens a vision model spends on an image, after Chutes' downscaling."""
    scale = min(1.0, MAX_SIDE_SEEN / max(width, height, 1))
    return math.ceil(width * scale / PATCH) * math.ceil(height * scale / PATCH)


def as_json(attachment: Attachment) -> dict[str, object]:
    return {
        "id": attachment.pk,
        "content_type": attachment.content_type,
        "size": attachment.size,
        "width": attachment.width,
        "height": attachment.height,
        "url": f"/api/images/{attachment.pk}",
    }
