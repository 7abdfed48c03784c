"""The one error of the chat domain: a request refused before anything was changed.

Validation (`chat/protocol.py`), the domain functions (`chat/actions/`,
`chat/billing/budgets.py`) and the JSON API's own checks raise `Refused` with a stable code and a
message written for the user. Each transport says it its own way: the websocket as an `error`
frame, the socket staying open (`chat/realtime/consumer.py`); the JSON API as
`{"error": {"code", "message"}}` with the code's HTTP status (`chat/api/http.py`). Nothing below
this module knows which transport asked.
"""

from __future__ import annotations

from http import HTTPStatus

INVALID_FRAME = "invalid_frame"
NOT_FOUND = "not_found"
MODEL_UNAVAILABLE = "model_unavailable"
CONTENT_TOO_LONG = "content_too_long"
TOO_MANY_GENERATIONS = "too_many_generations"
RATE_LIMITED = "rate_limited"
BUDGET_EXCEEDED = "budget_exceeded"
NOT_CONFIGURED = "not_configured"
CONFLICT = "conflict"
VISION_REQUIRED = "vision_required"

# The HTTP status of each code. A bad value, a model that cannot be used, a question too long
# or images for a model that cannot see them are the request's fault (400); another user's
# conversation is answered as a missing one (404).
HTTP_STATUS: dict[str, HTTPStatus] = {
    INVALID_FRAME: HTTPStatus.BAD_REQUEST,
    NOT_FOUND: HTTPStatus.NOT_FOUND,
    MODEL_UNAVAILABLE: HTTPStatus.BAD_REQUEST,
    CONTENT_TOO_LONG: HTTPStatus.BAD_REQUEST,
    TOO_MANY_GENERATIONS: HTTPStatus.TOO_MANY_REQUESTS,
    RATE_LIMITED: HTTPStatus.TOO_MANY_REQUESTS,
    BUDGET_EXCEEDED: HTTPStatus.PAYMENT_REQUIRED,
    NOT_CONFIGURED: HTTPStatus.SERVICE_UNAVAILABLE,
    CONFLICT: HTTPStatus.CONFLICT,
    VISION_REQUIRED: HTTPStatus.BAD_REQUEST,
}
CODES = frozenset(HTTP_STATUS)


class Refused(Exception):
    """A request refused before anything was changed: a code from `CODES`, a message for the
    user, and the id of the request it answers when there is one."""

    def __init__(self, code: str, message: str, request_id: str | None = None) -> None:
        if code not in HTTP_STATUS:
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id

    @property
    def status(self) -> HTTPStatus:
        return HTTP_STATUS[self.code]
