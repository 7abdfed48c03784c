"""Settings are read in a fresh interpreter for each case, as a server would at start-up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

ROOT = Path(__file__).resolve().parents[2]
STRONG_KEY = "k" * 20 + "-a-long-enough-secret-value-for-tests"


def load_settings(env: dict[str, str], expr: str = "None") -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    clean.update({"DJANGO_SETTINGS_MODULE": "chutesweb.settings", **env})
    code = (
        "import json, django; from django.conf import settings; django.setup(); "
        f"print(json.dumps({expr}, default=str))"
    )
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=clean, capture_output=True, text=True
    )


@pytest.mark.parametrize(
    ("url", "engine"),
    [
        ("mysql://chat:secret@127.0.0.1:3306/chat", "mysql"),
        ("oracle://chat:secret@db/chat", "oracle"),
    ],
)
def test_a_database_other_than_postgresql_or_sqlite_is_refused_at_start_up(
    url: str, engine: str
) -> None:
    result = load_settings({"DATABASE_URL": url})
    assert result.returncode != 0
    refusal = "DATABASE_URL must name a PostgreSQL (postgres://) or SQLite (sqlite://) database"
    assert f"{refusal}, not {engine}." in result.stderr
    assert "secret" not in result.stderr


@pytest.mark.parametrize(
    ("url", "engine"),
    [
        ("postgres://chat@127.0.0.1:5432/chat", "django.db.backends.postgresql"),
        ("sqlite:////tmp/chat.sqlite3", "django.db.backends.sqlite3"),
    ],
)
def test_postgresql_and_sqlite_urls_are_accepted(url: str, engine: str) -> None:
    result = load_settings({"DATABASE_URL": url}, "settings.DATABASES['default']['ENGINE']")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == engine


@pytest.mark.parametrize(("value", "frozen"), [("true", True), ("false", False)])
def test_the_server_freezes_what_it_loaded_at_start_up_unless_told_not_to(
    value: str, frozen: bool
) -> None:
    result = load_settings(
        {"GC_FREEZE": value},
        "__import__('gc').get_freeze_count() > 0 if __import__('chutesweb.asgi') else None",
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) is frozen


@pytest.mark.parametrize(("env", "every"), [({}, 100), ({"GC_FULL_PASS_EVERY": "10"}, 10)])
def test_the_server_spaces_out_full_collections(env: dict[str, str], every: int) -> None:
    result = load_settings(
        env, "__import__('gc').get_threshold() if __import__('chutesweb.asgi') else None"
    )
    assert result.returncode == 0, result.stderr
    young, middle, full = json.loads(result.stdout)
    assert (young, middle, full) == (700, 10, every)  # Python's own for the younger two


@pytest.mark.parametrize("value", ["0", "-3", "often"])
def test_a_full_collection_spacing_below_one_is_refused(value: str) -> None:
    result = load_settings({"GC_FULL_PASS_EVERY": value})
    assert result.returncode != 0
    assert "GC_FULL_PASS_EVERY must be" in result.stderr


@pytest.mark.parametrize("off", ["", "direct_text_frames"])
def test_loading_the_app_installs_the_runtime_patches_unless_switched_off(off: str) -> None:
    # daphne's app (in INSTALLED_APPS) installs Twisted's reactor, as the daphne command does.
    result = load_settings(
        {"RUNTIME_PATCHES_OFF": off},
        "(__import__('chutesweb.asgi'), "
        "sorted(__import__('chutesweb.runtime').runtime.in_force()))[1]",
    )
    assert result.returncode == 0, result.stderr
    installed = json.loads(result.stdout)
    assert "eager_writes" in installed
    assert ("direct_text_frames" in installed) is (off == "")


def test_production_refuses_the_development_secret_key() -> None:
    result = load_settings({"DEBUG": "false", "SECRET_KEY": ""})
    assert result.returncode != 0
    assert "SECRET_KEY must be set" in result.stderr


def test_production_refuses_a_short_secret_key() -> None:
    result = load_settings({"DEBUG": "false", "SECRET_KEY": "short"})
    assert result.returncode != 0
    assert "at least 32 characters" in result.stderr


def test_production_with_a_real_key_tightens_cookies_and_hsts() -> None:
    result = load_settings(
        {"DEBUG": "false", "SECRET_KEY": STRONG_KEY},
        "[settings.SESSION_COOKIE_SECURE, settings.CSRF_COOKIE_SECURE, "
        "settings.SECURE_HSTS_SECONDS, settings.SECURE_SSL_REDIRECT]",
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [True, True, 31536000, True]


def test_a_boolean_variable_must_be_true_or_false() -> None:
    result = load_settings({"DEBUG": "maybe"})
    assert result.returncode != 0
    assert "DEBUG must be true or false" in result.stderr


def test_a_numeric_variable_must_be_a_number() -> None:
    result = load_settings({"UPSTREAM_IDLE_TIMEOUT": "soon"})
    assert result.returncode != 0
    assert "UPSTREAM_IDLE_TIMEOUT must be a number" in result.stderr


def test_embedded_defaults_are_sqlite_and_the_in_memory_layer() -> None:
    result = load_settings(
        {},
        "[settings.DATABASES['default']['ENGINE'], "
        "settings.DATABASES['default']['OPTIONS']['transaction_mode'], "
        "settings.CHANNEL_LAYERS['default']['BACKEND'], settings.LAVA_FORWARD_URL, "
        "settings.CHUTES_API_BASE]",
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [
        "django.db.backends.sqlite3",
        "IMMEDIATE",
        "channels.layers.InMemoryChannelLayer",
        "https://api.lava.so/v1/forward",
        "https://llm.chutes.ai/v1",
    ]


def test_database_url_selects_postgresql_and_redis_url_the_redis_layer() -> None:
    result = load_settings(
        {"DATABASE_URL": "postgres://app@db.internal:5432/chat", "REDIS_URL": "redis://r:6379/2"},
        "[settings.DATABASES['default']['ENGINE'], settings.DATABASES['default']['NAME'], "
        "settings.CHANNEL_LAYERS['default']['BACKEND'], "
        "settings.CHANNEL_LAYERS['default']['CONFIG']['hosts']]",
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [
        "django.db.backends.postgresql",
        "chat",
        "channels_redis.core.RedisChannelLayer",
        ["redis://r:6379/2"],
    ]


def test_sqlite_uses_wal_mode(db) -> None:
    from django.db import connection

    if connection.vendor != "sqlite":
        pytest.skip("SQLite only: this run uses another database")
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA journal_mode")
        assert cursor.fetchone()[0] == "wal"


def test_the_test_database_is_not_the_development_database(db) -> None:
    from django.db import connection

    assert str(connection.settings_dict["NAME"]) != str(settings.SQLITE_PATH)


def test_check_deploy_is_clean_in_production() -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "REDIS_URL"} and not k.startswith("DJANGO_")
    }
    env.update(DEBUG="false", SECRET_KEY=STRONG_KEY, ALLOWED_HOSTS="chat.example.com")
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_production_static_files_import_each_other_by_hashed_name(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    env.update(DEBUG="false", SECRET_KEY=STRONG_KEY, STATIC_ROOT=str(tmp_path))
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "-v0"],
        cwd=ROOT,
        env=env,
        check=True,
    )
    manifest = json.loads((tmp_path / "staticfiles.json").read_text())["paths"]
    app = (tmp_path / manifest["chat/js/app.js"]).read_text()
    hashed_socket = manifest["chat/js/socket.js"].rsplit("/", 1)[-1]
    assert f'"./{hashed_socket}"' in app
    assert '"./socket.js"' not in app
