"""Presets: the user's own and the published ones; create, change, delete."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from django.db.models import Q
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_http_methods

from chat import errors, protocol
from chat.actions import conversations as conversations_actions
from chat.errors import Refused
from chat.models import Preset

from .http import AuthenticatedHttpRequest, api_login_required, json_error, refused
from .json import not_found, read_json


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
            _apply_preset(preset, read_json(request))
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
        return not_found("preset")
    if request.method == "GET":
        return JsonResponse(preset_json(found, request))
    if found.owner_id != request.user.pk:
        # Published presets are changed by admins, in the admin.
        return json_error("forbidden", "Only an admin can change a published preset.", 403)
    if request.method == "DELETE":
        found.delete()
        return HttpResponse(status=HTTPStatus.NO_CONTENT)
    try:
        _apply_preset(found, read_json(request))
    except Refused as exc:
        return refused(exc)
    found.save()
    return JsonResponse(preset_json(found, request))
