"""Generation parameters go through one check wherever they enter the database: the send frame,
the conversation and preset API, and imports. An imported conversation cannot hold a value that
would make the next reply reserve a negative or unbounded worst case."""

from __future__ import annotations

import itertools
import json
from decimal import Decimal
from http import HTTPStatus
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from hypothesis import HealthCheck, event, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from chat import errors, protocol
from chat.actions import replies
from chat.billing import budgets
from chat.models import Conversation, Preset
from chat.testing.wsclient import MODEL, send_frame

from .test_api_conversations import make_conversation, patch

pytestmark = pytest.mark.django_db

LIMIT = Decimal("5")


@pytest.fixture(autouse=True)
def quick_password_hashing(settings: Any) -> None:
    """Most tests here make users; the real hasher's deliberate slowness is not under test."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


# Values the one check refuses, each with the field its message must name.
BAD_PARAMS = [
    ({"max_tokens": -1_000_000_000}, "params.max_tokens"),
    ({"max_tokens": 0}, "params.max_tokens"),
    ({"max_tokens": "4096"}, "params.max_tokens"),
    ({"max_tokens": 12.5}, "params.max_tokens"),
    ({"max_tokens": True}, "params.max_tokens"),
    ({"max_tokens": 2**31}, "params.max_tokens"),
    ({"temperature": float("nan")}, "params.temperature"),
    ({"temperature": float("inf")}, "params.temperature"),
    ({"temperature": -0.5}, "params.temperature"),
    ({"temperature": False}, "params.temperature"),
    ({"top_p": float("-inf")}, "params.top_p"),
    ({"top_p": 1.5}, "params.top_p"),
    ({"top_p": "high"}, "params.top_p"),
    ({"stop": ["x"]}, "params.stop"),
]


def export_file(params: Any, **conversation: Any) -> dict[str, Any]:
    return {
        "format": "chutes-chat/1",
        "conversations": [
            {"title": "fine", "messages": [{"role": "user", "content": "hi", "id": 1}]},
            {
                "title": "imported",
                "model": MODEL,
                "params": params,
                "messages": [{"role": "user", "content": "hello", "id": 1}],
                **conversation,
            },
        ],
    }


def import_file(client: Client, payload: Any) -> Any:
    # json.dumps writes NaN and Infinity as JSON's non-standard literals, which json.loads reads.
    raw = json.dumps(payload).encode()
    return client.post("/api/import", {"file": SimpleUploadedFile("chats.json", raw)})


@pytest.mark.parametrize(("params", "field"), BAD_PARAMS)
def test_an_import_with_invalid_params_is_refused_whole_naming_the_place(
    user_client: Client, user, params: dict[str, Any], field: str
) -> None:
    response = import_file(user_client, export_file(params))
    assert response.status_code == HTTPStatus.BAD_REQUEST
    error = response.json()["error"]
    assert error["code"] == "invalid_import"
    assert error["message"].startswith("Nothing was imported. conversation 2 params: ")
    assert field in error["message"]
    assert not Conversation.objects.filter(owner=user).exists()


def test_valid_imported_params_are_kept(user_client: Client, user) -> None:
    params = {"temperature": 1, "top_p": 0.5, "max_tokens": 300}
    response = import_file(user_client, export_file(params))
    assert response.status_code == HTTPStatus.CREATED, response.content
    conversation = Conversation.objects.get(owner=user, title="imported")
    assert protocol.parse_params(conversation.params) == protocol.Params(
        temperature=1.0, top_p=0.5, max_tokens=300
    )


_request_ids = itertools.count(1)


def send_to(user: Any, conversation: Conversation) -> replies.GenerationPlan:
    frame = send_frame(
        "next question",
        model=MODEL,
        conversation=conversation.pk,
        request_id=f"budget-{next(_request_ids)}",
    )
    parsed: Any = protocol.parse_client_frame(json.dumps(frame))  # a "send" frame
    return replies.accept(user, parsed)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=6,
)
# Valid objects (so that the send after an import is exercised often), objects with the known
# keys and values around their ranges, and anything at all.
valid_params = st.fixed_dictionaries(
    {},
    optional={
        "temperature": st.floats(min_value=0, max_value=2),
        "top_p": st.floats(min_value=0, max_value=1),
        "max_tokens": st.integers(min_value=1, max_value=2**31 - 1),
    },
)
params_values = (
    valid_params
    | json_values
    | st.fixed_dictionaries(
        {},
        optional={
            "temperature": st.floats(min_value=-1, max_value=3) | json_values,
            "top_p": st.floats(min_value=-1, max_value=2) | json_values,
            "max_tokens": st.integers(min_value=-(2**40), max_value=2**40) | json_values,
            "system_prompt": json_values,
            "stop": json_values,
        },
    )
)


@hypothesis_settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(params=params_values)
def test_an_imported_conversation_cannot_grow_the_budget(make_user, settings, params: Any) -> None:
    settings.LAVA_FORWARD_TOKEN = "configured"
    settings.MONTHLY_BUDGET_USD = LIMIT
    user = make_user()
    client = Client()
    client.force_login(user)
    response = import_file(client, export_file(params))
    if response.status_code == HTTPStatus.BAD_REQUEST:
        assert "conversation 2 params" in response.json()["error"]["message"]
        return
    event("imported")
    assert response.status_code == HTTPStatus.CREATED, response.content
    plan = send_to(user, Conversation.objects.get(owner=user, title="imported"))
    # The worst case held against the limit is a real amount that fits in it, and what is left
    # never exceeds the limit.
    assert Decimal(0) < plan.reserved <= LIMIT
    standing = budgets.standing(user)
    assert standing.reserved == plan.reserved
    assert standing.remaining is not None and standing.remaining < LIMIT


def test_the_import_that_once_grew_the_budget_reserves_a_real_worst_case(
    user_client: Client, user, settings
) -> None:
    settings.LAVA_FORWARD_TOKEN = "configured"
    settings.MONTHLY_BUDGET_USD = LIMIT
    refused = import_file(user_client, export_file({"max_tokens": -1_000_000_000}))
    assert refused.status_code == HTTPStatus.BAD_REQUEST
    assert import_file(user_client, export_file({"max_tokens": 200})).status_code == 201
    plan = send_to(user, Conversation.objects.get(owner=user, title="imported"))
    assert plan.body["max_tokens"] == 200
    assert Decimal(0) < plan.reserved <= LIMIT
    assert budgets.standing(user).remaining == LIMIT - plan.reserved


@pytest.mark.parametrize(("params", "field"), BAD_PARAMS)
def test_conversation_params_are_refused_naming_the_field(
    user_client: Client, user, params: dict[str, Any], field: str
) -> None:
    conversation = make_conversation(user)
    response = patch(user_client, f"/api/conversations/{conversation.pk}", {"params": params})
    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert field in response.json()["error"]["message"]
    conversation.refresh_from_db()
    assert conversation.params == {}


@pytest.mark.parametrize(("params", "field"), BAD_PARAMS)
def test_preset_params_are_refused_naming_the_field(
    user_client: Client, params: dict[str, Any], field: str
) -> None:
    body = json.dumps({"name": "preset", "params": params})
    response = user_client.post("/api/presets", body, content_type="application/json")
    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert field in response.json()["error"]["message"]
    assert not Preset.objects.exists()


@pytest.mark.parametrize(("params", "field"), BAD_PARAMS)
def test_send_frame_params_are_refused_naming_the_field(params: dict[str, Any], field: str) -> None:
    frame = send_frame("hi", model=MODEL, params=params, request_id="r1")
    with pytest.raises(errors.Refused) as refused:
        protocol.parse_client_frame(json.dumps(frame))
    assert refused.value.code == errors.INVALID_FRAME
    assert refused.value.request_id == "r1"
    assert field in refused.value.message
