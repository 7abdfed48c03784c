from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.layers import channel_layers
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.core.cache import cache
from django.db import connections
from django.db.backends.utils import CursorWrapper
from django.test import Client

from chat.realtime.engine import get_manager
from chat.testing.fakeupstream import FakeUpstream

# The bare stand-in upstream and an upstream config pointing at it, for every test module.
from chat.tests.fixtures_upstream import bare_upstream_fixture, config_fixture  # noqa: F401

_counter = itertools.count(1)


def _database_order(item: pytest.Item) -> int:
    """Django's order: tests in a rolled-back transaction, then tests that commit (and flush the
    database after them), those that restore the migrations' rows first, then the others.

    A flush without that restore lets the migrations' rows be written again under new ids
    (PostgreSQL does not restart its sequences), which a later restore then collides with.
    """
    marker = item.get_closest_marker("django_db")
    fixtures = getattr(item, "fixturenames", ())
    committing = bool(marker and marker.kwargs.get("transaction")) or any(
        name in fixtures for name in ("transactional_db", "live_server")
    )
    if committing:
        restoring = bool(marker and marker.kwargs.get("serialized_rollback"))
        return 1 if restoring else 2
    return 0 if marker is not None or "db" in fixtures else 3


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> Any:
    """Keep Django's grouping after a random order (pytest-randomly shuffles last): a test that
    restores the migrations' rows must not run while a rolled-back test's copy of them is
    there. Within each group the random order stays (the sort is stable)."""
    result = yield
    items.sort(key=_database_order)
    return result


PASSWORD = "correct horse battery staple"


@pytest.fixture
def make_user(db: None) -> Callable[..., User]:
    def make(username: str | None = None, **extra: Any) -> User:
        name = username or f"user{next(_counter)}"
        return get_user_model().objects.create_user(username=name, password=PASSWORD, **extra)

    return make


@pytest.fixture
def user(make_user: Callable[..., User]) -> User:
    return make_user("alice")


@pytest.fixture
def admin_user(make_user: Callable[..., User]) -> User:
    return make_user("root", is_staff=True, is_superuser=True)


@pytest.fixture
def user_client(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def admin_client(admin_user: User) -> Client:
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
    """Counts SQL statements run through any database cursor, whatever thread runs them."""

    def __init__(self) -> None:
        self.statements: list[str] = []

    def count(self, verb: str, table: str) -> int:
        return sum(
            1
            for sql in self.statements
            if sql.lstrip().upper().startswith(verb) and f'"{table}"' in sql
        )

    def clear(self) -> None:
        self.statements.clear()


@pytest.fixture
def db_writes(monkeypatch: pytest.MonkeyPatch) -> WriteLog:
    log = WriteLog()
    execute = CursorWrapper.execute
    executemany = CursorWrapper.executemany

    def counted_execute(self: CursorWrapper, sql: str, params: Any = None) -> Any:
        log.statements.append(sql)
        return execute(self, sql, params)

    def counted_executemany(self: CursorWrapper, sql: str, param_list: Any) -> Any:
        log.statements.append(sql)
        return executemany(self, sql, param_list)

    monkeypatch.setattr(CursorWrapper, "execute", counted_execute)
    monkeypatch.setattr(CursorWrapper, "executemany", counted_executemany)
    return log


@pytest.fixture
async def upstream(settings: Any) -> AsyncIterator[FakeUpstream]:
    """The stand-in upstream on loopback, with the app pointed at it through /v1/forward."""
    server = FakeUpstream(tokens=("test-token",))
    await server.start()
    settings.LAVA_FORWARD_URL = server.forward_url
    settings.CHUTES_API_BASE = server.api_base
    settings.LAVA_FORWARD_TOKEN = "test-token"
    settings.UPSTREAM_MAX_RETRIES = 1
    # Titles are tested on their own; elsewhere every upstream request is a reply.
    settings.AUTO_TITLES = False
    yield server
    await get_manager().shutdown(grace=5)
    await server.stop()


@pytest.fixture
async def alice(make_user: Callable[..., User]) -> User:
    return await database_sync_to_async(make_user)("alice")


@pytest.fixture
async def bob(make_user: Callable[..., User]) -> User:
    return await database_sync_to_async(make_user)("bob")


@pytest.fixture(scope="session", autouse=True)
def close_thread_connections(django_db_setup: None, django_db_blocker: Any) -> Iterator[None]:
    """Let the test database be dropped at the end: connections kept open by the ORM's worker
    threads would make PostgreSQL refuse. Torn down before `django_db_setup` drops it."""
    yield
    with django_db_blocker.unblock():
        async_to_sync(database_sync_to_async(connections.close_all))()
        connection = connections["default"]
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            connection.close()


@pytest.fixture(autouse=True)
def empty_cache() -> Iterator[None]:
    """Log-in throttling counters live in the cache; no test inherits another's."""
    cache.clear()
    yield
    cache.clear()
