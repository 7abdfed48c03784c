"""Conversations and their messages: the list, one conversation, its changes and deletion."""

from __future__ import annotations

from decimal import Decimal
from http import HTTPStatus
from typing import Any

from django.core.paginator import EmptyPage, Paginator
from django.db.models import Q, Sum
from django.http import HttpResponse, JsonResponse
from django.views.decorators.http import require_http_methods

from chat import attachments, errors, protocol
from chat.actions import conversations as conversations_actions
from chat.actions import versions as versions_actions
from chat.billing import prices
from chat.errors import Refused
from chat.models import Conversation, Message

from .http import AuthenticatedHttpRequest, api_login_required, json_error, refused
from .json import read_json

PAGE_SIZE = 50


MAX_PAGE_SIZE = 200


MAX_TITLE_CHARS = 200


def iso(value: Any) -> str | None:
    return value.isoformat() if value else None


def conversation_summary(conversation: Conversation) -> dict[str, Any]:
    return {
        "id": conversation.pk,
        "title": conversation.title,
        "model": conversation.model.model_id if conversation.model else None,
        "created": iso(conversation.created_at),
        "updated": iso(conversation.updated_at),
    }


def message_json(message: Message, versions: list[int] | None = None) -> dict[str, Any]:
    error = None
    if message.error_code:
        error = {"code": message.error_code, "message": message.error_message}
    return {
        "id": message.pk,
        "role": message.role,
        "content": message.content,
        "reasoning": message.reasoning,
        "status": message.status,
        "model": message.model.model_id if message.model else None,
        "usage": {
            "prompt_tokens": message.prompt_tokens,
            "completion_tokens": message.completion_tokens,
            "estimated": message.usage_estimated,
        }
        if message.role == Message.Role.ASSISTANT
        else None,
        "cost": None if message.cost is None else prices.plain(message.cost),
        "error": error,
        "reasoning_ms": message.reasoning_ms,
        "parent": message.parent_id,
        # Every version at this place (regenerated replies, edited questions), oldest first.
        "versions": versions or [message.pk],
        "images": [attachments.as_json(a) for a in message.attachments.all()],
        "created": iso(message.created_at),
    }


def conversation_detail(conversation: Conversation) -> dict[str, Any]:
    messages = (
        conversation.messages.filter(active=True)
        .select_related("model")
        .prefetch_related("attachments")
        .order_by("id")
    )
    versions = versions_actions.siblings(conversation)
    # Everything this conversation cost, replaced replies and titles included.
    total = conversation.charges.filter(cost__isnull=False).aggregate(total=Sum("cost"))["total"]
    return {
        **conversation_summary(conversation),
        "system_prompt": conversation.system_prompt,
        "params": conversation.params,
        "total_cost": prices.plain(total or Decimal(0)),
        "messages": [message_json(m, versions.get(m.pk)) for m in messages],
    }


def _int(value: str | None, default: int, low: int, high: int) -> int:
    try:
        number = int(value) if value is not None else default
    except ValueError:
        return default
    return max(low, min(high, number))


@require_http_methods(["GET"])
@api_login_required
def conversations(request: AuthenticatedHttpRequest) -> JsonResponse:
    """The user's conversations, most recently updated first, a page at a time; `q` searches
    titles and message text."""
    query = Conversation.objects.filter(owner=request.user).select_related("model")
    search = request.GET.get("q", "").strip()[:200]
    if search:
        query = query.filter(
            Q(title__icontains=search) | Q(messages__content__icontains=search)
        ).distinct()
    size = _int(request.GET.get("page_size"), PAGE_SIZE, 1, MAX_PAGE_SIZE)
    paginator = Paginator(query.order_by("-updated_at", "-id"), size)
    number = _int(request.GET.get("page"), 1, 1, 10**9)
    try:
        page = paginator.page(number)
    except EmptyPage:
        return JsonResponse({"conversations": [], "next_page": None})
    return JsonResponse(
        {
            "conversations": [conversation_summary(c) for c in page],
            "next_page": page.next_page_number() if page.has_next() else None,
        }
    )


def _apply_changes(conversation: Conversation, data: dict[str, Any]) -> list[str]:
    fields: list[str] = []
    unknown = set(data) - {"title", "system_prompt", "params", "model"}
    if unknown:
        raise Refused(errors.INVALID_FRAME, f"Unknown field '{sorted(unknown)[0]}'.")
    if "title" in data:
        title = data["title"]
        if not isinstance(title, str) or not title.strip():
            raise Refused(errors.INVALID_FRAME, "The title must be non-empty text.")
        if len(title) > MAX_TITLE_CHARS:
            raise Refused(
                errors.CONTENT_TOO_LONG, f"Titles are limited to {MAX_TITLE_CHARS} characters."
            )
        conversation.title = title.strip()
        conversation.title_is_custom = True
        fields += ["title", "title_is_custom"]
    if "system_prompt" in data:
        params = protocol.parse_params({"system_prompt": data["system_prompt"]})
        conversation.system_prompt = params.system_prompt or ""
        fields.append("system_prompt")
    if "params" in data:
        params = protocol.parse_params(data["params"])
        if params.system_prompt is not None:
            raise Refused(errors.INVALID_FRAME, "Set 'system_prompt' at the top level.")
        conversation.params = params.as_json()
        fields.append("params")
    if "model" in data:
        model_id = data["model"]
        if not isinstance(model_id, str):
            raise Refused(errors.INVALID_FRAME, "'model' must be a model id.")
        conversation.model = conversations_actions.usable_model(model_id, "")
        fields.append("model")
    return fields


@require_http_methods(["GET", "PATCH", "DELETE"])
@api_login_required
def conversation(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    found = Conversation.objects.filter(pk=pk, owner=request.user).select_related("model").first()
    if found is None:
        # The same answer whether it exists for someone else or not at all.
        return json_error("not_found", "No such conversation.", HTTPStatus.NOT_FOUND)
    if request.method == "GET":
        return JsonResponse(conversation_detail(found))
    if request.method == "DELETE":
        conversations_actions.delete_conversation(found)
        return HttpResponse(status=HTTPStatus.NO_CONTENT)
    try:
        fields = _apply_changes(found, read_json(request))
    except Refused as exc:
        return refused(exc)
    if fields:
        found.save(update_fields=[*fields, "updated_at"])
    return JsonResponse(conversation_detail(found))
