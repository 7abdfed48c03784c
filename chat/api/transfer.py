"""Export (one conversation or all, as JSON or Markdown) and import."""

from __future__ import annotations

import json
from http import HTTPStatus

from django.conf import settings
from django.http import HttpResponse, JsonResponse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from chat.actions import transfer
from chat.models import Conversation

from .http import AuthenticatedHttpRequest, api_login_required, json_error
from .json import not_found


def _attachment(response: HttpResponse, filename: str) -> HttpResponse:
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


@require_GET
@api_login_required
def export_conversation(request: AuthenticatedHttpRequest, pk: int, fmt: str) -> HttpResponse:
    conversation = Conversation.objects.filter(pk=pk, owner=request.user).first()
    if conversation is None or fmt not in ("md", "json"):
        return not_found()
    if fmt == "md":
        text = transfer.export_markdown(conversation)
        return _attachment(
            HttpResponse(text, content_type="text/markdown; charset=utf-8"),
            f"conversation-{pk}.md",
        )
    data = transfer.export_json([conversation])
    return _attachment(
        JsonResponse(data, json_dumps_params={"ensure_ascii": False}), f"conversation-{pk}.json"
    )


@require_GET
@api_login_required
def export_all(request: AuthenticatedHttpRequest) -> HttpResponse:
    conversations = list(Conversation.objects.filter(owner=request.user).order_by("id"))
    day = timezone.localdate().isoformat()
    return _attachment(
        JsonResponse(
            transfer.export_json(conversations), json_dumps_params={"ensure_ascii": False}
        ),
        f"chutes-chat-{day}.json",
    )


@require_POST
@api_login_required
def import_conversations(request: AuthenticatedHttpRequest) -> JsonResponse:
    upload = request.FILES.get("file")
    if upload is None:
        return json_error("invalid_import", "Send the exported file as the 'file' field.", 400)
    if upload.size is None or upload.size > settings.MAX_IMPORT_BYTES:
        return json_error(
            "invalid_import",
            f"The file is larger than {settings.MAX_IMPORT_BYTES // (1024 * 1024)} MB.",
            HTTPStatus.BAD_REQUEST,
        )
    try:
        payload = json.loads(upload.read())
    except (ValueError, RecursionError):
        return json_error(
            "invalid_import", "This file is not JSON. Import a file exported from here.", 400
        )
    try:
        created = transfer.import_payload(request.user, payload)
    except transfer.ImportRefused as exc:
        return json_error("invalid_import", f"Nothing was imported. {exc}.", HTTPStatus.BAD_REQUEST)
    return JsonResponse({"imported": len(created), "conversations": created}, status=201)
