from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractUser
from django.test import Client

_counter = itertools.count(1)
PASSWORD = "correct horse battery staple"


@pytest.fixture
def make_user(db: None) -> Callable[..., AbstractUser]:
    def make(username: str | None = None, **extra: Any) -> AbstractUser:
        name = username or f"user{next(_counter)}"
        return get_user_model().objects.create_user(username=name, password=PASSWORD, **extra)

    return make


@pytest.fixture
def user(make_user: Callable[..., AbstractUser]) -> AbstractUser:
    return make_user("alice")


@pytest.fixture
def admin_user(make_user: Callable[..., AbstractUser]) -> AbstractUser:
    return make_user("root", is_staff=True, is_superuser=True)


@pytest.fixture
def user_client(user: AbstractUser) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def admin_client(admin_user: AbstractUser) -> Client:
    client = Client()
    client.force_login(admin_user)
    return client
