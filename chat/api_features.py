"""JSON API for images, reply versions, export and import, share links and presets (session
auth, CSRF on writes). Documented in docs/protocol.md."""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from django.conf import settings
from django.db.models import Q
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from . import attachments, errors, exports, protocol
from .actions import conversations as conversations_actions
from .actions import shares as shares_actions
from .actions import versions
from .api import conversation_detail
from .errors import Refused
from .http import AuthenticatedHttpRequest, api_login_required, json_error, refused
from .models import Attachment, Conversation, Preset, ShareLink


def _not_found(what: str = "conversation") -> JsonResponse:
    return json_error("not_found", f"No such {what}.", HTTPStatus.NOT_FOUND)


def _body(request: HttpRequest) -> dict[str, Any]:
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


# Images ------------------------------------------------------------------------------------


@require_POST
@api_login_required
def upload_image(request: AuthenticatedHttpRequest) -> JsonResponse:
    upload = request.FILES.get("image")
    if upload is None:
        return json_error("invalid_frame", "Send the image as the 'image' field.", 400)
    try:
        image = attachments.store(request.user, upload)
    except attachments.StorageFull as exc:
        return json_error("storage_full", str(exc), HTTPStatus.BAD_REQUEST)
    except attachments.ImageRefused as exc:
        return json_error("invalid_image", str(exc), HTTPStatus.BAD_REQUEST)
    return JsonResponse(attachments.as_json(image), status=HTTPStatus.CREATED)


@require_GET
@api_login_required
def image(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    found = Attachment.objects.filter(pk=pk, owner=request.user).first()
    if found is None:
        return _not_found("image")
    response = HttpResponse(bytes(found.data), content_type=found.content_type)
    response["Cache-Control"] = "private, max-age=86400"
    response["X-Content-Type-Options"] = "nosniff"
    return response


# Reply versions ------------------------------------------------------------------------------


@require_POST
@api_login_required
def show_version(request: AuthenticatedHttpRequest, pk: int) -> JsonResponse:
    try:
        conversation = versions.show_version(request.user, pk)
    except Refused as exc:
        return refused(exc)
    return JsonResponse(conversation_detail(conversation))


# Export and import ----------------------------------------------------------------------------


def _attachment(response: HttpResponse, filename: str) -> HttpResponse:
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


@require_GET
@api_login_required
def export_conversation(request: AuthenticatedHttpRequest, pk: int, fmt: str) -> HttpResponse:
    conversation = Conversation.objects.filter(pk=pk, owner=request.user).first()
    if conversation is None or fmt not in ("md", "json"):
        return _not_found()
    if fmt == "md":
        text = exports.export_markdown(conversation)
        return _attachment(
            HttpResponse(text, content_type="text/markdown; charset=utf-8"),
            f"conversation-{pk}.md",
        )
    data = exports.export_json([conversation])
    return _attachment(
        JsonResponse(data, json_dumps_params={"ensure_ascii": False}), f"conversation-{pk}.json"
    )


@require_GET
@api_login_required
def export_all(request: AuthenticatedHttpRequest) -> HttpResponse:
    conversations = list(Conversation.objects.filter(owner=request.user).order_by("id"))
    day = timezone.localdate().isoformat()
    return _attachment(
        JsonResponse(exports.export_json(conversations), json_dumps_params={"ensure_ascii": False}),
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
        created = exports.import_payload(request.user, payload)
    except exports.ImportRefused as exc:
        return json_error("invalid_import", f"Nothing was imported. {exc}.", HTTPStatus.BAD_REQUEST)
    return JsonResponse({"imported": len(created), "conversations": created}, status=201)


# Share links ----------------------------------------------------------------------------------


def share_json(share: ShareLink, request: HttpRequest) -> dict[str, Any]:
    return {
        "token": share.token,
        "url": request.build_absolute_uri(f"/s/{share.token}"),
        "include_reasoning": share.include_reasoning,
        "include_costs": share.include_costs,
        "include_system_prompt": share.include_system_prompt,
        "created": share.created_at.isoformat(),
    }


@require_http_methods(["GET", "POST"])
@api_login_required
def shares(request: AuthenticatedHttpRequest, pk: int) -> JsonResponse:
    conversation = Conversation.objects.filter(pk=pk, owner=request.user).first()
    if conversation is None:
        return _not_found()
    if request.method == "POST":
        try:
            data = _body(request)
            flags = {}
            for name in ("include_reasoning", "include_costs", "include_system_prompt"):
                value = data.get(name, False)
                if not isinstance(value, bool):
                    raise Refused(errors.INVALID_FRAME, f"'{name}' must be true or false.")
                flags[name] = value
        except Refused as exc:
            return refused(exc)
        share = shares_actions.create_share(conversation, **flags)
        return JsonResponse(share_json(share, request), status=HTTPStatus.CREATED)
    live = conversation.shares.filter(revoked_at__isnull=True)
    return JsonResponse({"shares": [share_json(s, request) for s in live]})


@require_http_methods(["DELETE"])
@api_login_required
def revoke_share(request: AuthenticatedHttpRequest, token: str) -> HttpResponse:
    updated = ShareLink.objects.filter(
        token=token, owner=request.user, revoked_at__isnull=True
    ).update(revoked_at=timezone.now())
    if not updated:
        return _not_found("share link")
    return HttpResponse(status=HTTPStatus.NO_CONTENT)


@require_GET
def shared_page(request: HttpRequest, token: str) -> HttpResponse:
    """The public, read-only page of a share link; a revoked or unknown link is a 404."""
    share = shares_actions.live_share(token)
    if share is None:
        raise Http404("This link was revoked or never existed.")
    response = render(request, "share/shared.html", {"share": share, "data": share.snapshot})
    response["X-Robots-Tag"] = "noindex"
    return response


# Presets --------------------------------------------------------------------------------------


def preset_json(preset: Preset, request: HttpRequest) -> dict[str, Any]:
    return {
        "id": preset.pk,
        "name": preset.name,
        "model": preset.model.model_id if preset.model else None,
        "system_prompt": preset.system_prompt,
        "params": preset.params,
        "published": preset.published,
        "editable": preset.owner_id == request.user.pk,
    }


def _apply_preset(preset: Preset, data: dict[str, Any]) -> None:
    unknown = set(data) - {"name", "model", "system_prompt", "params"}
    if unknown:
        raise Refused(errors.INVALID_FRAME, f"Unknown field '{sorted(unknown)[0]}'.")
    if "name" in data or preset.pk is None:
        name = data.get("name")
        if not isinstance(name, str) or not name.strip() or len(name) > 80:
            raise Refused(errors.INVALID_FRAME, "The name must be 1 to 80 characters.")
        preset.name = name.strip()
    if "model" in data:
        model_id = data["model"]
        if model_id is not None and not isinstance(model_id, str):
            raise Refused(errors.INVALID_FRAME, "'model' must be a model id.")
        preset.model = (
            None if model_id is None else conversations_actions.usable_model(model_id, "")
        )
    if "system_prompt" in data:
        preset.system_prompt = (
            protocol.parse_params({"system_prompt": data["system_prompt"]}).system_prompt or ""
        )
    if "params" in data:
        params = protocol.parse_params(data["params"])
        if params.system_prompt is not None:
            raise Refused(errors.INVALID_FRAME, "Set 'system_prompt' at the top level.")
        preset.params = params.as_json()


def _visible_presets(request: AuthenticatedHttpRequest) -> Any:
    return Preset.objects.filter(Q(owner=request.user) | Q(owner__isnull=True)).select_related(
        "model"
    )


@require_http_methods(["GET", "POST"])
@api_login_required
def presets(request: AuthenticatedHttpRequest) -> JsonResponse:
    if request.method == "POST":
        preset = Preset(owner=request.user)
        try:
            _apply_preset(preset, _body(request))
        except Refused as exc:
            return refused(exc)
        preset.save()
        return JsonResponse(preset_json(preset, request), status=HTTPStatus.CREATED)
    return JsonResponse({"presets": [preset_json(p, request) for p in _visible_presets(request)]})


@require_http_methods(["GET", "PATCH", "DELETE"])
@api_login_required
def preset(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    found = _visible_presets(request).filter(pk=pk).first()
    if found is None:
        return _not_found("preset")
    if request.method == "GET":
        return JsonResponse(preset_json(found, request))
    if found.owner_id != request.user.pk:
        # Published presets are changed by admins, in the admin.
        return json_error("forbidden", "Only an admin can change a published preset.", 403)
    if request.method == "DELETE":
        found.delete()
        return HttpResponse(status=HTTPStatus.NO_CONTENT)
    try:
        _apply_preset(found, _body(request))
    except Refused as exc:
        return refused(exc)
    found.save()
    return JsonResponse(preset_json(found, request))
