"""The upstream client's configuration (chat/upstream/config.py, settings.py): the forward
token, what is missing, the chat URL, the settings read, no secret in its repr."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from chat.tests.fixtures_upstream import chat_body
from chat.upstream.client import stream_chat
from chat.upstream.config import UpstreamConfig
from chat.upstream.errors import UpstreamError
from chat.upstream.settings import config_from_settings


def test_a_given_forward_token_is_used_as_is() -> None:
    config = UpstreamConfig("https://lava/v1/forward", "https://chutes/v1", forward_token="fwd")
    assert config.authorization() == "Bearer fwd"


def test_a_forward_token_is_built_from_the_secret_key_and_options() -> None:
    config = UpstreamConfig(
        "https://lava/v1/forward",
        "https://chutes/v1",
        secret_key="aks_test_x",
        chutes_api_key="cpk_y",
        customer_id="cus_1",
        meter_slug="chat",
    )
    token = config.authorization().removeprefix("Bearer ")
    assert json.loads(base64.b64decode(token)) == {
        "secret_key": "aks_test_x",
        "provider_key": "cpk_y",
        "customer_id": "cus_1",
        "meter_slug": "chat",
    }


def test_without_credentials_it_is_not_configured_and_says_what_to_set() -> None:
    config = UpstreamConfig("https://lava/v1/forward", "https://chutes/v1")
    assert not config.configured
    with pytest.raises(UpstreamError) as caught:
        config.authorization()
    assert caught.value.code == "not_configured"
    assert "LAVA_FORWARD_TOKEN" in caught.value.message
    assert "LAVA_SECRET_KEY" in caught.value.message


async def test_streaming_without_credentials_fails_before_any_request() -> None:
    config = UpstreamConfig("http://127.0.0.1:9/v1/forward", "https://chutes/v1")
    with pytest.raises(UpstreamError) as caught:
        await anext(stream_chat(chat_body(), config=config))
    assert caught.value.code == "not_configured"


def test_the_chat_url_carries_the_encoded_target() -> None:
    config = UpstreamConfig("https://api.lava.so/v1/forward", "https://llm.chutes.ai/v1/")
    assert config.chat_url() == (
        "https://api.lava.so/v1/forward?u=https%3A%2F%2Fllm.chutes.ai%2Fv1%2Fchat%2Fcompletions"
    )
    assert config.lava_api_root() == "https://api.lava.so/v1"


def test_the_config_is_read_from_settings(settings: Any) -> None:
    settings.LAVA_FORWARD_URL = "https://lava.example/v1/forward"
    settings.CHUTES_API_BASE = "https://chutes.example/v1"
    settings.LAVA_FORWARD_TOKEN = ""
    settings.LAVA_SECRET_KEY = "aks_test_settings"
    settings.LAVA_CUSTOMER_ID = "cus_9"
    settings.UPSTREAM_IDLE_TIMEOUT = 42
    settings.UPSTREAM_MAX_RETRIES = 1
    config = config_from_settings()
    assert (config.forward_url, config.api_base) == (
        "https://lava.example/v1/forward",
        "https://chutes.example/v1",
    )
    assert config.configured and config.customer_id == "cus_9"
    assert (config.idle_timeout, config.max_retries, config.total_timeout) == (42.0, 1, 1800.0)


def test_the_config_repr_shows_no_secret() -> None:
    config = UpstreamConfig(
        "https://lava/v1/forward", "https://c/v1", forward_token="ft-1", secret_key="sk-2",
        chutes_api_key="cpk-3",
    )  # fmt: skip
    text = repr(config)
    assert "ft-1" not in text and "sk-2" not in text and "cpk-3" not in text
    assert "<set>" in text
