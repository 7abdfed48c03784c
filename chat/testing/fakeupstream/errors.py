"""Error bodies shaped like the real service that would have sent them: Chutes' `detail`, Lava's
`error` for its own refusals, and the bare error line Chutes writes into a failing stream."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

ERROR_LINE = {"error": "Unhandled exception during response stream: fake failure"}
_CHUTES_DETAILS: dict[int, Any] = {
    400: "Invalid request: refused by the fake upstream",
    401: "Invalid token.",
    402: {
        "message": "Quota exceeded and account balance is $0.0, please pay with fiat or send "
        "tao to 5FakeWalletAddress",
        "quota_reset_timestamp": "2030-01-01T00:00:00Z",
    },
    403: "Forbidden",
    413: "Request entity too large",
    422: [{"loc": ["body", "messages"], "msg": "field required", "type": "value_error.missing"}],
    429: "Infrastructure is at maximum capacity, try again later",
    500: "Internal server error",
    502: "Bad gateway",
    503: "No instances available (yet) for chute_id='00000000-0000-0000-0000-fake'",
}
_LAVA_ERRORS = {
    401: {"error": "Unauthorized: invalid secret key or forward token"},
    402: {"error": "Insufficient wallet balance"},
}


def error_body(status: int, *, via_forward: bool, model: str = "", detail: Any = None) -> Any:
    """An error body shaped like the real service that would have sent it."""
    if detail is not None:
        return {"detail": detail}
    if via_forward and status in _LAVA_ERRORS:
        return _LAVA_ERRORS[status]
    if status == HTTPStatus.NOT_FOUND:
        return {"detail": f"model not found: {model}"}
    return {"detail": _CHUTES_DETAILS.get(status, HTTPStatus(status).phrase)}
