"""Security: CSRF, framing, log-in throttling, secrets that never leak, and fuzzed input."""

from __future__ import annotations

import base64
import json
import logging
from http import HTTPStatus
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from django.test import Client
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from chat import errors, protocol
from chat.models import Charge, ChatModel, Conversation, Message
from chat.testing.wsclient import MODEL, counts, open_socket, send_and_accept
from chat.upstream.config import UpstreamConfig
from chat.upstream.sse import SSEDecoder

from .conftest import PASSWORD

SECRET_KEY_VALUE = "aks_test_S3CRET_lava_key_0123456789"
PROVIDER_KEY = "cpk_PROVIDER_secret_9876543210"


# CSRF and framing ---------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("method", "path", "data"),
    [
        ("post", "/accounts/signup/", {"username": "x", "password1": "p", "password2": "p"}),
        ("post", "/accounts/login/", {"username": "alice", "password": PASSWORD}),
        ("post", "/accounts/logout/", {}),
        ("post", "/accounts/password/", {"old_password": PASSWORD}),
        ("patch", "/api/me", {"default_model": MODEL}),
        ("post", "/admin/chat/chatmodel/sync/", {"apply": "1"}),
        ("post", "/admin/chat/profile/", {}),
    ],
)
def test_every_state_changing_view_needs_the_csrf_token(
    user, admin_user, method: str, path: str, data: dict[str, Any]
) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user if path.startswith("/admin/") else user)
    if method == "patch":
        response = client.patch(path, json.dumps(data), content_type="application/json")
    else:
        response = client.post(path, data)
    assert response.status_code == HTTPStatus.FORBIDDEN


@pytest.mark.django_db
def test_pages_refuse_to_be_framed(user_client: Client) -> None:
    for path in ("/", "/usage/", "/accounts/login/", "/api/models"):
        response = user_client.get(path)
        assert response["X-Frame-Options"] == "DENY", path
        assert "frame-ancestors 'none'" in response["Content-Security-Policy"], path


# Log-in throttling --------------------------------------------------------------------------


@pytest.mark.django_db
def test_log_in_is_throttled_after_repeated_failures(client: Client, user, settings) -> None:
    settings.LOGIN_ATTEMPTS = 3
    for _ in range(3):
        response = client.post("/accounts/login/", {"username": "alice", "password": "wrong"})
        assert response.status_code == HTTPStatus.OK
    # Even the right password is refused now, so guessing gains nothing.
    response = client.post("/accounts/login/", {"username": "alice", "password": PASSWORD})
    assert response.status_code == HTTPStatus.TOO_MANY_REQUESTS
    assert "Too many failed attempts" in response.content.decode()
    assert "_auth_user_id" not in client.session


@pytest.mark.django_db
def test_a_successful_log_in_resets_the_accounts_count(client: Client, user, settings) -> None:
    settings.LOGIN_ATTEMPTS = 3
    for _ in range(2):
        client.post("/accounts/login/", {"username": "alice", "password": "wrong"})
    assert client.post(
        "/accounts/login/", {"username": "alice", "password": PASSWORD}
    ).status_code == (HTTPStatus.FOUND)
    client.post("/accounts/logout/")
    # From another address (the first one keeps its two failures for the window).
    elsewhere = Client(REMOTE_ADDR="192.0.2.33")
    for _ in range(2):
        elsewhere.post("/accounts/login/", {"username": "alice", "password": "wrong"})
    assert elsewhere.post(
        "/accounts/login/", {"username": "alice", "password": PASSWORD}
    ).status_code == (HTTPStatus.FOUND)


# Secrets ------------------------------------------------------------------------------------


def forbidden_strings() -> list[str]:
    config = UpstreamConfig(
        forward_url="x", api_base="y", secret_key=SECRET_KEY_VALUE, chutes_api_key=PROVIDER_KEY
    )
    token = config.authorization().removeprefix("Bearer ")
    return [
        SECRET_KEY_VALUE,
        PROVIDER_KEY,
        token,
        base64.b64encode(SECRET_KEY_VALUE.encode()).decode(),
    ]


def test_the_config_and_its_errors_never_show_a_secret() -> None:
    config = UpstreamConfig(
        forward_url="http://lava/v1/forward",
        api_base="http://chutes/v1",
        secret_key=SECRET_KEY_VALUE,
        chutes_api_key=PROVIDER_KEY,
    )
    text = repr(config) + str(config)
    for secret in forbidden_strings():
        assert secret not in text


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
async def test_secrets_never_reach_a_page_a_frame_an_error_or_a_log_line(
    upstream, alice, settings, caplog, make_user
) -> None:
    settings.LAVA_FORWARD_TOKEN = ""
    settings.LAVA_SECRET_KEY = SECRET_KEY_VALUE
    settings.CHUTES_API_KEY = PROVIDER_KEY
    upstream.tokens = (SECRET_KEY_VALUE,)
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []

    # Frames: a reply, an upstream refusal, a failure mid-stream.
    socket = await open_socket(alice)
    upstream.push_script(tokens=4, interval_ms=1)
    accepted = await send_and_accept(socket, "hello")
    await socket.done(accepted["message"])
    for script in (
        {"status": 401},
        {"status": 402},
        {"tokens": 6, "after": 2, "mid": "error_line"},
    ):
        upstream.push_script(**script)
        failing = await send_and_accept(socket, "again", conversation=accepted["conversation"])
        await socket.done(failing["message"])
    await socket.close()
    seen += [json.dumps(frame) for frame in socket.received]
    assert any(f.get("error", {}).get("code") == "auth" for f in socket.received)

    # Pages and API answers, for a user and for an admin.
    admin = await database_sync_to_async(make_user)("boss", is_staff=True, is_superuser=True)

    @database_sync_to_async
    def pages() -> list[str]:
        model = ChatModel.objects.get(model_id=MODEL)
        user_client, admin_client = Client(), Client()
        user_client.force_login(alice)
        admin_client.force_login(admin)
        bodies = [
            user_client.get(path).content.decode()
            for path in (
                "/",
                "/usage/",
                "/usage.csv",
                "/api/models",
                "/api/me",
                f"/api/conversations/{accepted['conversation']}",
                "/healthz",
            )
        ]
        bodies += [
            admin_client.get(path).content.decode()
            for path in (
                "/admin/",
                "/admin/chat/chatmodel/",
                f"/admin/chat/chatmodel/{model.pk}/change/",
                "/admin/chat/chatmodel/sync/",
                "/admin/chat/usagereport/",
                "/admin/chat/profile/",
                "/admin/chat/message/",
                f"/admin/chat/conversation/{accepted['conversation']}/change/",
                "/admin/chat/charge/",
            )
        ]
        return bodies

    seen += await pages()
    seen += [record.getMessage() for record in caplog.records]
    seen += [str(record.args) for record in caplog.records]
    assert len(caplog.records) > 5  # the flows above were logged
    for text in seen:
        for secret in forbidden_strings():
            assert secret not in text


# Fuzzing ------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
frame_keys = st.sampled_from(
    ["type", "request_id", "conversation", "message", "model", "content", "params", "received"]
)
frame_types = st.sampled_from(
    ["send", "regenerate", "edit", "stop", "watch", "unwatch", "ack", "nope", "", None, 7]
)
frames = st.builds(
    lambda kind, extra: {"type": kind, **extra},
    frame_types,
    st.dictionaries(frame_keys, json_values, max_size=6),
)


@given(st.text(max_size=300))
def test_any_text_is_parsed_or_refused_with_a_clear_error(text: str) -> None:
    try:
        protocol.parse_client_frame(text)
    except errors.Refused as exc:
        assert exc.code in errors.CODES
        assert exc.message


@given(frames)
def test_any_json_frame_is_parsed_or_refused_with_a_clear_error(frame: dict[str, Any]) -> None:
    try:
        parsed = protocol.parse_client_frame(json.dumps(frame))
    except errors.Refused as exc:
        assert exc.code in errors.CODES
        assert exc.message
    else:
        assert type(parsed).__name__.lower() == str(frame["type"])


@given(st.binary(max_size=400), st.lists(st.integers(min_value=1, max_value=50), max_size=20))
def test_the_sse_decoder_survives_any_bytes_split_anywhere(data: bytes, cuts: list[int]) -> None:
    whole = SSEDecoder()
    expected = whole.feed(data) + whole.close()
    split = SSEDecoder()
    events: list[Any] = []
    position = 0
    for size in cuts:
        events += split.feed(data[position : position + size])
        position += size
    events += split.feed(data[position:])
    events += split.close()
    assert events == expected


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
@hypothesis_settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batch=st.lists(frames, min_size=1, max_size=8))
def test_fuzzed_frames_over_the_socket_write_nothing_and_keep_it_open(
    user, settings, batch: list[dict[str, Any]]
) -> None:
    # Without credentials every send is refused, so nothing may ever be written.
    settings.LAVA_FORWARD_TOKEN = ""
    settings.LAVA_SECRET_KEY = ""

    async def run() -> None:
        socket = await open_socket(user)
        for frame in batch:
            await socket.send(frame)
        # The socket is still open and answering after whatever came before.
        await socket.send({"type": "unwatch", "conversation": 987_654_321})
        answers = await socket.recv_until(
            lambda f: f == {"type": "unwatched", "conversation": 987_654_321}, timeout=10
        )
        await socket.close()
        assert all(f["type"] in ("error", "unwatched") for f in answers)
        assert await counts() == (0, 0, 0)

    async_to_sync(run)()
    assert Conversation.objects.count() == Message.objects.count() == Charge.objects.count() == 0
