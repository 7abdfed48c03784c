"""Export conversations as Markdown and JSON, and import the JSON back, all or nothing."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from chat import errors, protocol
from chat.attachments import ImageRefused, StorageFull, inspect, reserve_storage
from chat.billing import prices
from chat.models import Attachment, ChatModel, Conversation, Message

FORMAT = "chutes-chat/1"
STATUSES = {choice for choice, _ in Message.Status.choices} - {Message.Status.STREAMING}
ROLES = {choice for choice, _ in Message.Role.choices}
MAX_CONVERSATIONS = 5000
MAX_MESSAGES = 20000


class ImportRefused(ValueError):
    """A file that cannot be imported; the message says where and why."""


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def message_record(message: Message) -> dict[str, Any]:
    return {
        "id": message.pk,
        "parent": message.parent_id,
        "role": message.role,
        "active": message.active,
        "status": message.status,
        "content": message.content,
        "reasoning": message.reasoning,
        "model": message.model.model_id if message.model else None,
        "prompt_tokens": message.prompt_tokens,
        "completion_tokens": message.completion_tokens,
        "usage_estimated": message.usage_estimated,
        "cost": None if message.cost is None else prices.plain(message.cost),
        "error": message.error_code or None,
        "created": _iso(message.created_at),
        "images": [
            {
                "content_type": image.content_type,
                "data": base64.b64encode(bytes(image.data)).decode("ascii"),
            }
            for image in message.attachments.all()
        ],
    }


def conversation_record(conversation: Conversation) -> dict[str, Any]:
    messages = conversation.messages.select_related("model").prefetch_related("attachments")
    return {
        "title": conversation.title,
        "model": conversation.model.model_id if conversation.model else None,
        "system_prompt": conversation.system_prompt,
        "params": conversation.params,
        "created": _iso(conversation.created_at),
        "updated": _iso(conversation.updated_at),
        "messages": [message_record(m) for m in messages.order_by("id")],
    }


def export_json(conversations: list[Conversation]) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "exported": timezone.now().isoformat(),
        "conversations": [conversation_record(c) for c in conversations],
    }


def export_markdown(conversation: Conversation) -> str:
    """The conversation as it reads now (the active path), for people."""
    lines = [f"# {conversation.title or 'Conversation'}", ""]
    if conversation.model:
        lines.append(f"Model: {conversation.model.name} (`{conversation.model.model_id}`)  ")
    lines.append(f"Started: {timezone.localtime(conversation.created_at):%Y-%m-%d %H:%M %Z}  ")
    total = Decimal(0)
    if conversation.system_prompt:
        lines += ["", "**System prompt:**", "", _quote(conversation.system_prompt)]
    messages = conversation.messages.filter(active=True).select_related("model").order_by("id")
    for message in messages:
        when = timezone.localtime(message.created_at).strftime("%Y-%m-%d %H:%M")
        if message.role == Message.Role.USER:
            lines += ["", f"## You ({when})", "", message.content]
            continue
        model = message.model.model_id if message.model else "unknown model"
        lines += ["", f"## {model} ({when})", "", message.content or "*(no text)*"]
        details = [f"{message.prompt_tokens} + {message.completion_tokens} tokens"]
        if message.cost is not None:
            total += message.cost
            details.append(f"{prices.usd(message.cost)}")
        if message.usage_estimated:
            details.append("estimated")
        if message.status != Message.Status.COMPLETE:
            details.append(message.status)
        lines += ["", f"*{', '.join(details)}*"]
    lines += ["", "---", f"Total: {prices.usd(total)}", ""]
    return "\n".join(lines)


def _quote(text: str) -> str:
    return "\n".join(f"> {line}" for line in text.splitlines())


# Import ---------------------------------------------------------------------------------------


def _require(condition: bool, where: str, what: str) -> None:
    if not condition:
        raise ImportRefused(f"{where}: {what}")


def _text(value: Any, where: str, limit: int, *, required: bool = False) -> str:
    if value is None and not required:
        return ""
    _require(isinstance(value, str), where, "must be text")
    _require(len(value) <= limit, where, f"is longer than {limit:,} characters")
    return value


def _when(value: Any, where: str) -> datetime | None:
    if value is None:
        return None
    parsed = parse_datetime(value) if isinstance(value, str) else None
    _require(parsed is not None, where, "must be an ISO 8601 date and time")
    assert parsed is not None
    return parsed if timezone.is_aware(parsed) else timezone.make_aware(parsed)


def _count(value: Any, where: str) -> int:
    if value is None:
        return 0
    _require(
        isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**31,
        where,
        "must be a whole number",
    )
    return value


def _place(path: tuple[str | int, ...]) -> str:
    """A place in the file as its other messages name it: "conversation 2, message 5 content"."""
    parts = list(path)
    where = "file"
    if parts[:1] == ["conversations"] and len(parts) > 1 and isinstance(parts[1], int):
        where = f"conversation {parts[1] + 1}"
        parts = parts[2:]
        if parts[:1] == ["messages"] and len(parts) > 1 and isinstance(parts[1], int):
            where += f", message {parts[1] + 1}"
            parts = parts[2:]
    rest = protocol.json_path(tuple(parts))
    return f"{where} {rest}" if rest else where


def _params(value: Any, where: str) -> dict[str, Any]:
    """The conversation's parameters, through the same check as every other way in."""
    try:
        params = protocol.parse_params(value if value is not None else {})
    except errors.Refused as exc:
        raise ImportRefused(f"{where}: {exc.message.rstrip('.')}") from None
    _require(params.system_prompt is None, where, "must not hold system_prompt")
    return params.as_json()


def _validate(payload: Any) -> list[dict[str, Any]]:
    """Check the whole file before anything is written; returns the conversations."""
    _require(isinstance(payload, dict), "file", "must be a JSON object")
    # Any string the database would refuse to encode, wherever it is, refuses the file.
    bad = protocol.lone_surrogate_at(payload)
    if bad is not None:
        message = protocol.lone_surrogate_message("").strip().rstrip(".")
        raise ImportRefused(f"{_place(bad)}: {message}")
    _require(payload.get("format") == FORMAT, "file", f'must have "format": "{FORMAT}"')
    conversations = payload.get("conversations")
    _require(isinstance(conversations, list), "file", "must have a list of conversations")
    _require(len(conversations) <= MAX_CONVERSATIONS, "file", "has too many conversations")
    total = 0
    for c_index, conversation in enumerate(conversations):
        where = f"conversation {c_index + 1}"
        _require(isinstance(conversation, dict), where, "must be an object")
        _text(conversation.get("title"), f"{where} title", 200)
        _text(conversation.get("system_prompt"), f"{where} system_prompt", 20_000)
        conversation["_params"] = _params(conversation.get("params"), f"{where} params")
        _when(conversation.get("created"), f"{where} created")
        messages = conversation.get("messages")
        _require(isinstance(messages, list), where, "must have a list of messages")
        total += len(messages)
        _require(total <= MAX_MESSAGES, "file", "has too many messages")
        seen: set[Any] = set()
        for m_index, message in enumerate(messages):
            at = f"{where}, message {m_index + 1}"
            _require(isinstance(message, dict), at, "must be an object")
            _require(message.get("role") in ROLES, f"{at} role", "must be user or assistant")
            _text(message.get("content"), f"{at} content", settings.MAX_MESSAGE_CHARS * 2)
            _text(message.get("reasoning"), f"{at} reasoning", settings.MAX_MESSAGE_CHARS * 10)
            status = message.get("status", "complete")
            _require(status in STATUSES, f"{at} status", f"must be one of {sorted(STATUSES)}")
            parent = message.get("parent")
            _require(parent is None or parent in seen, f"{at} parent", "must be an earlier message")
            _require(message.get("id") not in seen, f"{at} id", "is used twice")
            seen.add(message.get("id"))
            _count(message.get("prompt_tokens"), f"{at} prompt_tokens")
            _count(message.get("completion_tokens"), f"{at} completion_tokens")
            cost = message.get("cost")
            if cost is not None:
                try:
                    amount = Decimal(cost) if isinstance(cost, str) else None
                except InvalidOperation:
                    amount = None
                _require(
                    amount is not None and amount.is_finite() and amount >= 0,
                    f"{at} cost",
                    "must be a decimal string",
                )
            _when(message.get("created"), f"{at} created")
            images = message.get("images", [])
            _require(isinstance(images, list), f"{at} images", "must be a list")
            for image in images:
                _require(
                    isinstance(image, dict) and isinstance(image.get("data"), str),
                    f"{at} images",
                    "must have base64 data",
                )
                try:
                    data = base64.b64decode(image["data"], validate=True)
                    image["_checked"] = inspect(data)
                    image["_size"] = len(data)
                except (binascii.Error, ValueError) as exc:
                    reason = str(exc) if isinstance(exc, ImageRefused) else "not base64"
                    raise ImportRefused(f"{at} images: {reason}") from None
    return conversations


def _error_code(value: Any) -> str:
    return value[:40] if isinstance(value, str) else ""


def import_payload(user: User, payload: Any) -> list[int]:
    """Import conversations for `user`: all of them, or none when anything is wrong.

    Imported replies keep their historical costs for reading, but are not billed again.
    """
    conversations = _validate(payload)
    models = {m.model_id: m for m in ChatModel.objects.all()}
    created: list[int] = []
    image_bytes = sum(
        image["_size"]
        for record in conversations
        for item in record["messages"]
        for image in item.get("images", [])
    )
    with transaction.atomic():
        if image_bytes:
            try:
                reserve_storage(user, image_bytes, "the images in this file")
            except StorageFull as exc:
                raise ImportRefused(str(exc).rstrip(".")) from None
        for record in conversations:
            conversation = Conversation.objects.create(
                owner=user,
                title=(record.get("title") or "Imported chat")[:200],
                model=models.get(record.get("model") or ""),
                system_prompt=record.get("system_prompt") or "",
                params=record["_params"],
            )
            ids: dict[Any, Message] = {}
            for item in record["messages"]:
                message = Message.objects.create(
                    conversation=conversation,
                    user=user,
                    role=item["role"],
                    content=item.get("content") or "",
                    reasoning=item.get("reasoning") or "",
                    status=item.get("status", "complete"),
                    active=bool(item.get("active", True)),
                    parent=ids.get(item.get("parent")),
                    model=models.get(item.get("model") or ""),
                    prompt_tokens=_count(item.get("prompt_tokens"), ""),
                    completion_tokens=_count(item.get("completion_tokens"), ""),
                    usage_estimated=bool(item.get("usage_estimated", False)),
                    cost=None if item.get("cost") is None else Decimal(item["cost"]),
                    error_code=_error_code(item.get("error")),
                )
                when = _when(item.get("created"), "")
                if when:
                    Message.objects.filter(pk=message.pk).update(created_at=when)
                if item.get("images") and not conversation.has_images:
                    conversation.has_images = True
                    conversation.save(update_fields=["has_images"])
                for image in item.get("images", []):
                    data = base64.b64decode(image["data"])
                    content_type, width, height = image["_checked"]
                    Attachment.objects.create(
                        owner=user,
                        message=message,
                        content_type=content_type,
                        data=data,
                        size=len(data),
                        width=width,
                        height=height,
                    )
                ids[item.get("id")] = message
            when = _when(record.get("created"), "")
            if when:
                Conversation.objects.filter(pk=conversation.pk).update(created_at=when)
            created.append(conversation.pk)
    return created
