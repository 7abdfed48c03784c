from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from channels.layers import channel_layers
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractUser
from django.db import connections
from django.db.backends.signals import connection_created
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


@pytest.fixture(autouse=True)
def fresh_channel_layer() -> Iterator[None]:
    """Each test gets a new in-memory layer: its queues belong to that test's event loop."""
    channel_layers.backends.clear()
    yield
    channel_layers.backends.clear()


class WriteLog:
    """Counts SQL statements on every database connection, whatever thread runs them."""

    def __init__(self) -> None:
        self.statements: list[str] = []

    def __call__(
        self, execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any
    ) -> Any:
        self.statements.append(sql)
        return execute(sql, params, many, context)

    def count(self, verb: str, table: str) -> int:
        return sum(
            1
            for sql in self.statements
            if sql.lstrip().upper().startswith(verb) and f'"{table}"' in sql
        )

    def clear(self) -> None:
        self.statements.clear()


@pytest.fixture
def db_writes() -> Iterator[WriteLog]:
    log = WriteLog()

    def install(sender: Any, connection: Any, **kwargs: Any) -> None:
        if log not in connection.execute_wrappers:
            connection.execute_wrappers.append(log)

    connection_created.connect(install)
    for conn in connections.all(initialized_only=True):
        install(None, conn)
    yield log
    connection_created.disconnect(install)
    for conn in connections.all(initialized_only=True):
        if log in conn.execute_wrappers:
            conn.execute_wrappers.remove(log)
