"""The domain's one error type: each code has one HTTP status, and the documentation lists
every code the server can refuse with."""

import re
from http import HTTPStatus
from pathlib import Path

import pytest

from chat import errors
from chat.errors import Refused

DOCS = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


def test_each_code_carries_its_http_status():
    assert Refused(errors.INVALID_FRAME, "x").status == HTTPStatus.BAD_REQUEST
    assert Refused(errors.NOT_FOUND, "x").status == HTTPStatus.NOT_FOUND
    assert Refused(errors.CONFLICT, "x").status == HTTPStatus.CONFLICT
    assert Refused(errors.MODEL_UNAVAILABLE, "x").status == HTTPStatus.BAD_REQUEST
    assert Refused(errors.CONTENT_TOO_LONG, "x").status == HTTPStatus.BAD_REQUEST
    assert Refused(errors.RATE_LIMITED, "x").status == HTTPStatus.TOO_MANY_REQUESTS
    assert Refused(errors.BUDGET_EXCEEDED, "x").status == HTTPStatus.PAYMENT_REQUIRED
    assert Refused(errors.NOT_CONFIGURED, "x").status == HTTPStatus.SERVICE_UNAVAILABLE


def test_a_code_outside_the_list_is_a_programming_error():
    with pytest.raises(ValueError, match="unknown error code"):
        Refused("teapot", "x")


def test_the_protocol_documentation_lists_exactly_the_codes_and_their_statuses():
    text = DOCS.read_text()
    section = text.split("### Error codes of refused frames", 1)[1].split("###", 1)[0]
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", section, re.M))
    assert documented == errors.CODES
    for code, status in errors.HTTP_STATUS.items():
        assert re.search(rf"{status.value} for\s[^;.]*`{code}`", section), (code, status.value)


def test_the_json_api_answers_a_refusal_with_its_code_message_and_status():
    from chat.api.http import refused

    response = refused(Refused(errors.CONFLICT, "Stop it first.", "r1"))
    assert response.status_code == 409
    assert response.content == b'{"error": {"code": "conflict", "message": "Stop it first."}}'
