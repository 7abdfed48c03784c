"""A pytest plugin for mutation runs only (`make mutation`, `[tool.mutmut]` in pyproject.toml).

mutmut imports the settings once and runs the tests of every mutant in a fork of that one
process, so every run would name the same test database (the settings name it after the
process id). Django removes that file between runs but not its `-wal` and `-shm` files, and
SQLite replays the old log into the new file: "file is not a database". Each run gets a
database named after its own process instead, with no stale log beside it, and leaves none.
The database is a copy of one migrated once for the whole run (migrating took most of a
mutant's second).

A mutant's run stops at its first failing test, so the tests that need no database (the fast
ones) go first: the database tests keep Django's order among themselves, after them.
"""

from __future__ import annotations

import os
import shutil
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


def _migrate(config: pytest.Config, path: Path) -> None:
    """A migrated test database at `path` (with the rows the migrations write)."""
    from django.db import connections
    from pytest_django.plugin import blocking_manager_key

    connection = connections["default"]
    name = connection.settings_dict["NAME"]
    settings.DATABASES["default"]["TEST"]["NAME"] = str(path)
    # Before any test: pytest-django blocks the database until a test asks for it.
    with config.stash[blocking_manager_key].unblock():
        connection.creation.create_test_db(verbosity=0, autoclobber=True, serialize=False)
        connection.close()
    # create_test_db points the connection at the new database: back to where it was.
    connection.settings_dict["NAME"] = name
    _remove_side_files(path)


def pytest_configure(config: pytest.Config) -> None:
    current = _test_database()
    if current is None:
        return
    template = current.with_name(f"{_PREFIX}template.sqlite3")
    if not template.exists():
        _migrate(config, template)
    own = current.with_name(f"{_PREFIX}{os.getpid()}.sqlite3")
    _remove_side_files(own)
    shutil.copyfile(template, own)
    settings.DATABASES["default"]["TEST"]["NAME"] = str(own)
    # pytest-django's --reuse-db: use the copy as it is (migrate finds nothing to do).
    config.option.reuse_db = True


def pytest_unconfigure(config: pytest.Config) -> None:
    current = _test_database()
    if current is not None and current.name.startswith(_PREFIX):
        current.unlink(missing_ok=True)
        _remove_side_files(current)


def _needs_database(item: pytest.Item) -> bool:
    fixtures = getattr(item, "fixturenames", ())
    return item.get_closest_marker("django_db") is not None or any(
        name in fixtures for name in ("db", "transactional_db", "live_server")
    )


def pytest_collection_finish(session: pytest.Session) -> None:
    # After the project's own ordering (conftest.py), which sorts these last.
    session.items.sort(key=_needs_database)
