"""Images for vision models: checked on upload, stored with the message, sent as data URIs."""

from __future__ import annotations

import base64
import io
import math

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.files.uploadedfile import UploadedFile
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


def store(owner: AbstractBaseUser, upload: UploadedFile) -> Attachment:
    if upload.size is None or upload.size > settings.MAX_IMAGE_BYTES:
        raise ImageRefused(
            f"Images are limited to {settings.MAX_IMAGE_BYTES // (1024 * 1024)} MB; this one "
            f"is {(upload.size or 0) / (1024 * 1024):.1f} MB."
        )
    data = upload.read()
    content_type, width, height = inspect(data)
    return Attachment.objects.create(
        owner=owner,
        content_type=content_type,
        data=data,
        size=len(data),
        width=width,
        height=height,
    )


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
