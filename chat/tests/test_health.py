from __future__ import annotations

from http import HTTPStatus

import pytest
from django.db import OperationalError
from django.test import Client

pytestmark = pytest.mark.django_db


def test_healthz_is_ok_when_database_and_channel_layer_answer(client: Client) -> None:
    response = client.get("/healthz")
    assert response.status_code == HTTPStatus.OK
    assert response.json() == {"status": "ok", "database": True, "channel_layer": True}


def test_healthz_is_503_when_the_channel_layer_is_unreachable(client: Client, settings) -> None:
    # A Redis layer pointing at a port where nothing listens.
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": ["redis://127.0.0.1:1/0"]},
        }
    }
    response = client.get("/healthz")
    assert response.status_code == HTTPStatus.SERVICE_UNAVAILABLE
    assert response.json()["channel_layer"] is False


def test_healthz_is_503_when_the_database_fails(client: Client, monkeypatch) -> None:
    def broken_cursor(*args, **kwargs):
        raise OperationalError("unable to open database file")

    monkeypatch.setattr("chat.views.connection.cursor", broken_cursor)
    response = client.get("/healthz")
    assert response.status_code == HTTPStatus.SERVICE_UNAVAILABLE
    assert response.json()["database"] is False


def test_healthz_needs_no_login(client: Client) -> None:
    assert client.get("/healthz").status_code == HTTPStatus.OK
