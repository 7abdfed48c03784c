"""The JSON API's one input helper, `read_json` (the body as a JSON object, with no lone
surrogate anywhere in it), and its "no such thing" answer."""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from django.http import HttpRequest, JsonResponse

from chat import errors, protocol
from chat.errors import Refused

from .http import json_error


def read_json(request: HttpRequest) -> dict[str, Any]:
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


def not_found(what: str = "conversation") -> JsonResponse:
    return json_error("not_found", f"No such {what}.", HTTPStatus.NOT_FOUND)
