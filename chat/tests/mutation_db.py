"""A pytest plugin for mutation runs only (`make mutation`, `[tool.mutmut]` in pyproject.toml).

mutmut imports the settings once and runs the tests of every mutant in a fork of that one
process, so every run would name the same test database (the settings name it after the
process id). Django removes that file between runs but not its `-wal` and `-shm` files, and
SQLite replays the old log into the new file: "file is not a database". Each run gets a
database named after its own process instead, with no stale log beside it, and leaves none.

A mutant's run stops at its first failing test, so the tests that need no database (the fast
ones) go first: the database tests keep Django's order among themselves, after them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from django.conf import settings

_SIDE_FILES = ("-wal", "-shm", "-journal")
_PREFIX = "test-db-mutation-"


def _test_database() -> Path | None:
    database = settings.DATABASES["default"]
    if database["ENGINE"] != "django.db.backends.sqlite3":
        return None
    return Path(database.setdefault("TEST", {}).get("NAME") or "")


def _remove_side_files(path: Path) -> None:
    for suffix in _SIDE_FILES:
        path.with_name(path.name + suffix).unlink(missing_ok=True)


def pytest_configure(config: pytest.Config) -> None:
    current = _test_database()
    if current is None:
        return
    own = current.with_name(f"{_PREFIX}{os.getpid()}.sqlite3")
    _remove_side_files(own)
    settings.DATABASES["default"]["TEST"]["NAME"] = str(own)


def pytest_unconfigure(config: pytest.Config) -> None:
    current = _test_database()
    if current is not None and current.name.startswith(_PREFIX):
        _remove_side_files(current)


def _needs_database(item: pytest.Item) -> bool:
    fixtures = getattr(item, "fixturenames", ())
    return item.get_closest_marker("django_db") is not None or any(
        name in fixtures for name in ("db", "transactional_db", "live_server")
    )


def pytest_collection_finish(session: pytest.Session) -> None:
    # After the project's own ordering (conftest.py), which sorts these last.
    session.items.sort(key=_needs_database)
