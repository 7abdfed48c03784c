"""The user's preferences and this month's budget."""

from __future__ import annotations

from django.http import JsonResponse
from django.views.decorators.http import require_http_methods

from chat import errors
from chat.actions import conversations as conversations_actions
from chat.billing import budgets, prices
from chat.errors import Refused

from .http import AuthenticatedHttpRequest, api_login_required, refused
from .json import read_json


@require_http_methods(["GET", "PATCH"])
@api_login_required
def me(request: AuthenticatedHttpRequest) -> JsonResponse:
    """The user's preferences: the model new conversations start with."""
    profile = conversations_actions.profile_for(request.user)
    if request.method == "PATCH":
        try:
            data = read_json(request)
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
