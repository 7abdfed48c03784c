"""Small helpers shared by the JSON API views."""

from __future__ import annotations

import functools
from collections.abc import Callable
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from django.http import HttpRequest, HttpResponse, JsonResponse

from chat.errors import Refused

if TYPE_CHECKING:
    from django.contrib.auth.models import User


class AuthenticatedHttpRequest(HttpRequest):
    """For annotations only: the request of a view behind a log-in check, whose user is an
    account (never AnonymousUser). No request is ever of this class at run time."""

    user: User


def json_error(code: str, message: str, status: int) -> JsonResponse:
    return JsonResponse({"error": {"code": code, "message": message}}, status=status)


def refused(exc: Refused) -> JsonResponse:
    """A refused request as the JSON API answers it: its code and message, with the code's
    HTTP status (chat/errors.py)."""
    return json_error(exc.code, exc.message, exc.status)


def api_login_required(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Like login_required, but an API answers 401 JSON instead of redirecting to a page."""

    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.user.is_authenticated:
            return json_error("unauthenticated", "Log in first.", HTTPStatus.UNAUTHORIZED)
        return view(request, *args, **kwargs)

    return wrapper
