"""Reply versions: showing another version of a reply or question."""

from __future__ import annotations

from django.http import JsonResponse
from django.views.decorators.http import require_POST

from chat.actions import versions as versions_actions
from chat.errors import Refused

from .conversations import conversation_detail
from .http import AuthenticatedHttpRequest, api_login_required, refused


@require_POST
@api_login_required
def show_version(request: AuthenticatedHttpRequest, pk: int) -> JsonResponse:
    try:
        conversation = versions_actions.show_version(request.user, pk)
    except Refused as exc:
        return refused(exc)
    return JsonResponse(conversation_detail(conversation))
