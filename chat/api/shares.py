"""Share links of a conversation, and the read-only page a link shows."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods

from chat import errors
from chat.actions import shares as shares_actions
from chat.errors import Refused
from chat.models import Conversation, ShareLink

from .http import AuthenticatedHttpRequest, api_login_required, refused
from .json import not_found, read_json


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
        return not_found()
    if request.method == "POST":
        try:
            data = read_json(request)
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
        return not_found("share link")
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
