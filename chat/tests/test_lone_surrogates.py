"""A lone surrogate ("\\ud83d" without its pair) sent anywhere a user can send text is refused
with a clear error: `invalid_frame` on the websocket, 400 from the JSON API and imports. Never a
1011 close or a 500. A pair written as two escapes is an ordinary character and is accepted."""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from chat import errors, protocol
from chat.actions import transfer
from chat.models import Conversation, Message, Preset
from chat.testing.wsclient import MODEL, counts, open_socket, send_frame

from .test_api_conversations import make_conversation, patch

LONE = "\ud83d"
# What the browser writes for U+1F642 when it escapes it: two escapes that json.loads pairs up.
PAIR_ESCAPED = "\\ud83d\\ude42"
SMILE = "\U0001f642"


@pytest.fixture(autouse=True)
def quick_password_hashing(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def wire(value: Any) -> str:
    """JSON as a client sends it: json.dumps escapes a lone surrogate as \\udXXX."""
    return json.dumps(value)


# Websocket frames -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "field"),
    [
        (send_frame(f"hello {LONE}", model=MODEL, request_id="r1"), "'content'"),
        (send_frame("hello", model=f"deepseek-ai/{LONE}", request_id="r1"), "'model'"),
        (
            send_frame("hello", model=MODEL, request_id="r1", params={"system_prompt": LONE}),
            "'params.system_prompt'",
        ),
        (
            send_frame("hello", model=MODEL, request_id="r1", params={f"x{LONE}": 1}),
            "'params.x\\ud83d'",
        ),
        ({"type": "edit", "request_id": "r1", "message": 3, "content": LONE}, "'content'"),
        ({"type": "regenerate", "request_id": "r1", "message": 3, "model": LONE}, "'model'"),
        ({"type": f"send{LONE}", "request_id": "r1"}, "'type'"),
    ],
)
def test_a_frame_with_a_lone_surrogate_is_an_invalid_frame_naming_the_field(
    frame: dict[str, Any], field: str
) -> None:
    with pytest.raises(errors.Refused) as refused:
        protocol.parse_client_frame(wire(frame))
    assert refused.value.code == errors.INVALID_FRAME
    assert refused.value.request_id == "r1"
    assert field in refused.value.message
    assert "surrogate" in refused.value.message
    # The message itself can be sent: it holds no surrogate.
    refused.value.message.encode()


def test_a_surrogate_pair_written_as_two_escapes_is_an_ordinary_character() -> None:
    text = wire(send_frame("placeholder", model=MODEL, params={"system_prompt": "placeholder"}))
    text = text.replace("placeholder", f"smile {PAIR_ESCAPED}")
    parsed = protocol.parse_client_frame(text)
    assert isinstance(parsed, protocol.Send)
    assert parsed.content == f"smile {SMILE}"
    assert parsed.params.system_prompt == f"smile {SMILE}"


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
async def test_a_lone_surrogate_over_the_socket_is_answered_and_the_socket_stays_open(
    upstream, alice
) -> None:
    socket = await open_socket(alice)
    for frame in (
        send_frame(f"hi {LONE}", model=MODEL, request_id="lone-content"),
        send_frame("hi", model=LONE, request_id="lone-model"),
        send_frame("hi", model=MODEL, request_id="lone-prompt", params={"system_prompt": LONE}),
    ):
        await socket.send(frame)
        answer = await socket.recv()
        assert answer["type"] == "error", answer
        assert answer["code"] == errors.INVALID_FRAME
        assert answer["request_id"] == frame["request_id"]
    # Still open and answering, and nothing was written.
    await socket.send({"type": "unwatch", "conversation": 987_654_321})
    assert (await socket.recv()) == {"type": "unwatched", "conversation": 987_654_321}
    assert await counts() == (0, 0, 0)
    await socket.close()


# The JSON API ---------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"title": f"title {LONE}"}, "'title'"),
        ({"system_prompt": f"be {LONE}"}, "'system_prompt'"),
        ({"params": {"system_prompt": LONE}}, "'params.system_prompt'"),
        ({"params": {LONE: 1}}, "'params.\\ud83d'"),
        ({"model": LONE}, "'model'"),
    ],
)
def test_a_conversation_change_with_a_lone_surrogate_is_a_400_naming_the_field(
    user_client: Client, user, body: dict[str, Any], field: str
) -> None:
    conversation = make_conversation(user, "Keep me")
    response = patch(user_client, f"/api/conversations/{conversation.pk}", body)
    assert response.status_code == HTTPStatus.BAD_REQUEST
    error = response.json()["error"]
    assert error["code"] == errors.INVALID_FRAME
    assert field in error["message"] and "surrogate" in error["message"]
    conversation.refresh_from_db()
    assert (conversation.title, conversation.system_prompt) == ("Keep me", "")


@pytest.mark.django_db
def test_a_title_with_a_surrogate_pair_is_saved_as_its_character(user_client: Client, user) -> None:
    conversation = make_conversation(user)
    body = '{"title": "smile PAIR"}'.replace("PAIR", PAIR_ESCAPED)
    response = user_client.patch(
        f"/api/conversations/{conversation.pk}", body, content_type="application/json"
    )
    assert response.status_code == HTTPStatus.OK
    conversation.refresh_from_db()
    assert conversation.title == f"smile {SMILE}"


@pytest.mark.django_db
def test_a_default_model_with_a_lone_surrogate_is_a_400(user_client: Client) -> None:
    response = patch(user_client, "/api/me", {"default_model": LONE})
    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert "'default_model'" in response.json()["error"]["message"]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": f"preset {LONE}"}, "'name'"),
        ({"name": "preset", "system_prompt": LONE}, "'system_prompt'"),
        ({"name": "preset", "model": LONE}, "'model'"),
        ({"name": "preset", "params": {"system_prompt": [LONE]}}, "'params.system_prompt[0]'"),
    ],
)
def test_a_preset_with_a_lone_surrogate_is_a_400_naming_the_field(
    user_client: Client, body: dict[str, Any], field: str
) -> None:
    response = user_client.post("/api/presets", wire(body), content_type="application/json")
    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert field in response.json()["error"]["message"]
    assert not Preset.objects.exists()


# Imports --------------------------------------------------------------------------------------


def export_file(**message: Any) -> dict[str, Any]:
    return {
        "format": "chutes-chat/1",
        "conversations": [
            {"title": "fine", "messages": [{"role": "user", "content": "hi", "id": 1}]},
            {
                "title": "second",
                "messages": [
                    {"role": "user", "content": "hello", "id": 1},
                    {"role": "assistant", "content": "hi", "id": 2, "parent": 1, **message},
                ],
            },
        ],
    }


def import_raw(client: Client, raw: bytes) -> Any:
    return client.post("/api/import", {"file": SimpleUploadedFile("chats.json", raw)})


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("message", "place"),
    [
        ({"content": f"text {LONE}"}, "conversation 2, message 2 content"),
        ({"reasoning": LONE}, "conversation 2, message 2 reasoning"),
        ({"error": LONE}, "conversation 2, message 2 error"),
        ({"model": LONE}, "conversation 2, message 2 model"),
        ({"images": [{"data": "", "content_type": LONE}]}, "message 2 images[0].content_type"),
        ({"extra": {"deep": [{LONE: 1}]}}, "conversation 2, message 2 extra.deep[0].\\ud83d"),
    ],
)
def test_an_import_with_a_lone_surrogate_anywhere_is_refused_naming_the_place(
    user_client: Client, user, message: dict[str, Any], place: str
) -> None:
    response = import_raw(user_client, wire(export_file(**message)).encode())
    assert response.status_code == HTTPStatus.BAD_REQUEST
    error = response.json()["error"]
    assert error["code"] == "invalid_import"
    assert place in error["message"] and "surrogate" in error["message"]
    assert not Conversation.objects.filter(owner=user).exists()


@pytest.mark.django_db
def test_an_import_with_a_surrogate_pair_keeps_its_character(user_client: Client, user) -> None:
    raw = wire(export_file(content="placeholder")).replace("placeholder", PAIR_ESCAPED)
    response = import_raw(user_client, raw.encode())
    assert response.status_code == HTTPStatus.CREATED, response.content
    assert Message.objects.get(conversation__owner=user, role="assistant", content=SMILE)


# Any JSON, a lone surrogate injected in any string ---------------------------------------------

clean_text = st.text(max_size=12)  # Hypothesis leaves surrogates out of text by default
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | clean_text,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(clean_text, children, max_size=4)
    ),
    max_leaves=15,
)
documents = st.dictionaries(clean_text, json_values, min_size=1, max_size=5)


def string_slots(value: Any, path: tuple[str | int, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place a string can be replaced: (path to the value, key or None)."""
    slots: list[tuple[Any, ...]] = []
    if isinstance(value, str):
        slots.append((path, None))
    elif isinstance(value, dict):
        for key, child in value.items():
            slots.append((path, key))
            slots += string_slots(child, (*path, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            slots += string_slots(child, (*path, index))
    return slots


@st.composite
def with_lone_surrogate(draw: st.DrawFn, base: st.SearchStrategy[Any]) -> tuple[Any, tuple]:
    """A JSON value with one lone surrogate put into one of its strings or keys; returns the
    value and the path to where it is."""
    document = draw(base)
    path, key = draw(st.sampled_from(string_slots(document)))
    surrogate = draw(st.characters(categories=["Cs"]))
    parent = document
    for part in path[:-1] if key is None else path:
        parent = parent[part]
    if key is None:
        text = parent[path[-1]]
        at = draw(st.integers(min_value=0, max_value=len(text)))
        parent[path[-1]] = text[:at] + surrogate + text[at:]
        return document, path
    at = draw(st.integers(min_value=0, max_value=len(key)))
    bad_key = key[:at] + surrogate + key[at:]
    # The key takes the old one's place, order kept, so the first bad string found is this one.
    items = [(bad_key if k == key else k, v) for k, v in parent.items()]
    parent.clear()
    parent.update(items)
    return document, (*path, bad_key)


@given(with_lone_surrogate(documents))
def test_any_frame_with_a_lone_surrogate_anywhere_is_an_invalid_frame(
    injected: tuple[dict[str, Any], tuple[Any, ...]],
) -> None:
    document, path = injected
    with pytest.raises(errors.Refused) as refused:
        protocol.parse_client_frame(wire(document))
    assert refused.value.code == errors.INVALID_FRAME
    assert f"'{protocol.json_path(path)}'" in refused.value.message
    refused.value.message.encode()


@pytest.mark.django_db
@hypothesis_settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(injected=with_lone_surrogate(documents))
def test_any_api_body_with_a_lone_surrogate_anywhere_is_a_400(
    user_client: Client, user, injected: tuple[dict[str, Any], tuple[Any, ...]]
) -> None:
    document, path = injected
    conversation = make_conversation(user, "Keep me")
    for response in (
        patch(user_client, f"/api/conversations/{conversation.pk}", document),
        patch(user_client, "/api/me", document),
        user_client.post("/api/presets", wire(document), content_type="application/json"),
    ):
        assert response.status_code == HTTPStatus.BAD_REQUEST
        assert f"'{protocol.json_path(path)}'" in response.json()["error"]["message"]
    conversation.refresh_from_db()
    assert conversation.title == "Keep me"
    assert not Preset.objects.exists()


message_records = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant"]), "content": clean_text},
    optional={"reasoning": clean_text, "error": clean_text, "model": clean_text, "x": json_values},
)
conversation_records = st.fixed_dictionaries(
    {"title": clean_text, "messages": st.lists(message_records, max_size=3)},
    optional={"system_prompt": clean_text, "model": clean_text, "x": json_values},
)
export_files = st.fixed_dictionaries(
    {
        "format": st.just("chutes-chat/1"),
        "conversations": st.lists(conversation_records, min_size=1, max_size=3),
    },
    optional={"exported": clean_text},
)


@pytest.mark.django_db
@hypothesis_settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(injected=with_lone_surrogate(export_files))
def test_any_import_with_a_lone_surrogate_anywhere_is_refused_naming_the_place(
    user_client: Client, user, injected: tuple[dict[str, Any], tuple[Any, ...]]
) -> None:
    document, path = injected
    response = import_raw(user_client, wire(document).encode())
    assert response.status_code == HTTPStatus.BAD_REQUEST
    message = response.json()["error"]["message"]
    assert transfer._place(path) in message and "surrogate" in message
    message.encode()
    assert not Conversation.objects.filter(owner=user).exists()
