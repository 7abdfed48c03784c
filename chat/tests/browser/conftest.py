"""Fixtures for the end-to-end tests: Debian's Chromium driven by Playwright against daphne and
the stand-in upstream, started as real processes on a throwaway database.

Without Chromium the tests are skipped, unless REQUIRE_BROWSER=1 (CI), where that is a failure.
They are plain (sync) tests: Playwright's sync API must not run inside an event loop.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import pytest

from chat.tests.browser.live import HitRecorder, LiveServer, hit_recorder, start_live_server

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page, Playwright

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DEFAULT_TIMEOUT_MS = 15_000
# Small on purpose, so the tests can show refused sends; the limit has its own tests.
MAX_MESSAGE_CHARS = 5000
ADMIN_USERNAME = "root"
ADMIN_PASSWORD = "browser-admin-password-1"


def _missing(reason: str) -> NoReturn:
    if os.environ.get("REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason} (REQUIRE_BROWSER=1)", pytrace=False)
    pytest.skip(reason)


def chromium_path() -> str | None:
    candidate = os.environ.get("CHROMIUM_PATH") or "/usr/bin/chromium"
    if Path(candidate).is_file() and os.access(candidate, os.X_OK):
        return candidate
    return shutil.which("chromium")


@pytest.fixture(scope="package")
def chat_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """daphne and the stand-in, shared by the package's tests (each signs up its own user)."""
    data_dir = tmp_path_factory.mktemp("browser-server")
    server = start_live_server(
        data_dir,
        extra_env={
            "MAX_MESSAGE_CHARS": str(MAX_MESSAGE_CHARS),
            "DJANGO_SUPERUSER_USERNAME": ADMIN_USERNAME,
            "DJANGO_SUPERUSER_PASSWORD": ADMIN_PASSWORD,
        },
        create_admin=True,
    )
    yield server
    server.stop()


@pytest.fixture(scope="package")
def playwright_driver() -> Iterator[Playwright]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("the playwright package is not installed (pip install -r requirements-dev.txt)")
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="package")
def browser(playwright_driver: Playwright) -> Iterator[Browser]:
    path = chromium_path()
    if path is None:
        _missing("Chromium not found: install Debian's `chromium` or set CHROMIUM_PATH")
    browser = playwright_driver.chromium.launch(
        executable_path=path, args=CHROMIUM_ARGS, headless=True
    )
    yield browser
    browser.close()


@pytest.fixture
def context(browser: Browser, chat_server: LiveServer) -> Iterator[BrowserContext]:
    context = browser.new_context(
        base_url=chat_server.url,
        viewport={"width": 1280, "height": 800},
        color_scheme="light",
        permissions=["clipboard-read", "clipboard-write"],
    )
    context.set_default_timeout(DEFAULT_TIMEOUT_MS)
    yield context
    context.close()


@pytest.fixture
def page(context: BrowserContext) -> Page:
    return context.new_page()


@pytest.fixture(scope="package")
def image_host() -> Iterator[HitRecorder]:
    """Another host (127.0.0.2) that records every request it receives."""
    with hit_recorder("127.0.0.2") as recorder:
        yield recorder
