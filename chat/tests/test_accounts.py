from __future__ import annotations

from http import HTTPStatus

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from .conftest import PASSWORD

pytestmark = pytest.mark.django_db


def test_signup_creates_the_account_and_logs_in(client: Client) -> None:
    response = client.post(
        "/accounts/signup/",
        {"username": "bob", "password1": PASSWORD, "password2": PASSWORD},
    )
    assert response.status_code == HTTPStatus.FOUND
    assert response["Location"] == "/"
    assert get_user_model().objects.filter(username="bob").exists()
    assert client.get("/").status_code == HTTPStatus.OK


def test_signup_shows_errors_and_keeps_nothing_on_mismatch(client: Client) -> None:
    response = client.post(
        "/accounts/signup/",
        {"username": "bob", "password1": PASSWORD, "password2": PASSWORD + "x"},
    )
    assert response.status_code == HTTPStatus.OK
    assert "password fields didn" in response.content.decode()
    assert not get_user_model().objects.filter(username="bob").exists()


def test_signup_can_be_switched_off(client: Client, settings) -> None:
    settings.ALLOW_SIGNUP = False
    assert client.get("/accounts/signup/").status_code == HTTPStatus.NOT_FOUND
    response = client.post(
        "/accounts/signup/",
        {"username": "bob", "password1": PASSWORD, "password2": PASSWORD},
    )
    assert response.status_code == HTTPStatus.NOT_FOUND
    assert not get_user_model().objects.filter(username="bob").exists()
    assert "Sign up" not in client.get("/accounts/login/").content.decode()


def test_login_and_logout(client: Client, user) -> None:
    response = client.post("/accounts/login/", {"username": "alice", "password": PASSWORD})
    assert response.status_code == HTTPStatus.FOUND
    assert client.get("/").status_code == HTTPStatus.OK

    response = client.post("/accounts/logout/")
    assert response.status_code == HTTPStatus.FOUND
    assert client.get("/").status_code == HTTPStatus.FOUND


def test_login_refuses_a_wrong_password(client: Client, user) -> None:
    response = client.post("/accounts/login/", {"username": "alice", "password": "nope"})
    assert response.status_code == HTTPStatus.OK
    assert "correct username and password" in response.content.decode()


def test_anonymous_users_are_sent_to_login(client: Client) -> None:
    response = client.get("/")
    assert response.status_code == HTTPStatus.FOUND
    assert response["Location"].startswith("/accounts/login/")


def test_anonymous_api_calls_get_401_json(client: Client) -> None:
    response = client.get("/api/models")
    assert response.status_code == HTTPStatus.UNAUTHORIZED
    assert response.json()["error"]["code"] == "unauthenticated"


def test_password_change(user_client: Client) -> None:
    new = PASSWORD + " again"
    response = user_client.post(
        "/accounts/password/",
        {"old_password": PASSWORD, "new_password1": new, "new_password2": new},
    )
    assert response.status_code == HTTPStatus.FOUND
    assert get_user_model().objects.get(username="alice").check_password(new)


def test_only_staff_reach_the_admin(user_client: Client, admin_client: Client) -> None:
    assert user_client.get("/admin/").status_code == HTTPStatus.FOUND
    assert admin_client.get("/admin/").status_code == HTTPStatus.OK


def test_demo_mode_says_so_on_every_page(client: Client, settings) -> None:
    assert "Demo mode" not in client.get("/accounts/login/").content.decode()
    settings.DEMO_MODE = True
    assert (
        "Demo mode: replies come from the built-in stand-in"
        in client.get("/accounts/login/").content.decode()
    )
