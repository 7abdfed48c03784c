"""The JSON API beside the websocket: conversations and their messages (session auth, CSRF on
writes). Documented in docs/protocol.md."""

from __future__ import annotations

import json
from decimal import Decimal
from http import HTTPStatus
from typing import Any

from django.core.paginator import EmptyPage, Paginator
from django.db.models import Q, Sum
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_http_methods

from . import attachments, errors, protocol
from .actions import conversations as conversations_actions
from .actions import versions as versions_actions
from .billing import budgets, prices
from .errors import Refused
from .http import AuthenticatedHttpRequest, api_login_required, json_error, refused
from .models import Conversation, Message

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


def _read_json(request: HttpRequest) -> dict[str, Any]:
    try:
        data = json.loads(request.body or b"{}")
    except (ValueError, RecursionError):
        raise Refused(errors.INVALID_FRAME, "The body is not valid JSON.") from None
    if not isinstance(data, dict):
        raise Refused(errors.INVALID_FRAME, "The body must be a JSON object.")
    # Caught here, for every field at once: such a string fails when it is saved or compared.
    bad = protocol.lone_surrogate_at(data)
    if bad is not None:
        where = f"'{protocol.json_path(bad)}'"
        raise Refused(errors.INVALID_FRAME, protocol.lone_surrogate_message(where))
    return data


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
        fields = _apply_changes(found, _read_json(request))
    except Refused as exc:
        return refused(exc)
    if fields:
        found.save(update_fields=[*fields, "updated_at"])
    return JsonResponse(conversation_detail(found))


@require_http_methods(["GET", "PATCH"])
@api_login_required
def me(request: AuthenticatedHttpRequest) -> JsonResponse:
    """The user's preferences: the model new conversations start with."""
    profile = conversations_actions.profile_for(request.user)
    if request.method == "PATCH":
        try:
            data = _read_json(request)
            unknown = set(data) - {"default_model"}
            if unknown:
                raise Refused(errors.INVALID_FRAME, f"Unknown field '{sorted(unknown)[0]}'.")
            if "default_model" in data:
                model_id = data["default_model"]
                if model_id is None:
                    profile.default_model = None
                elif isinstance(model_id, str):
                    profile.default_model = conversations_actions.usable_model(model_id, "")
                else:
                    raise Refused(errors.INVALID_FRAME, "'default_model' must be a model id.")
        except Refused as exc:
            return refused(exc)
        profile.save(update_fields=["default_model"])
    current = budgets.standing(request.user)
    return JsonResponse(
        {
            "username": request.user.get_username(),
            "default_model": profile.default_model.model_id if profile.default_model else None,
            # This month, as decimal strings in USD; limit and remaining are null without a limit.
            "budget": {
                "limit": None if current.limit is None else prices.plain(current.limit),
                "spent": prices.plain(current.spent),
                "reserved": prices.plain(current.reserved),
                "remaining": None if current.remaining is None else prices.plain(current.remaining),
            },
        }
    )
