"""Fixtures for the end-to-end tests: Debian's Chromium driven by Playwright against daphne and
the stand-in upstream, started as real processes on a throwaway database.

Without Chromium the tests are skipped, unless REQUIRE_BROWSER=1 (CI), where that is a failure.
They are plain (sync) tests: Playwright's sync API must not run inside an event loop.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import pytest

from chat.testing.fakeupstream import FakeUpstream, running_in_thread
from chat.testing.processes import SITE_HOST
from chat.tests.browser.live import (
    UPSTREAM_TOKEN,
    HitRecorder,
    LiveServer,
    hit_recorder,
    start_live_server,
)

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
    # The production tests reach nginx by the site's name, as a browser would (test_production).
    f"--host-resolver-rules=MAP {SITE_HOST} 127.0.0.1",
]
DEFAULT_TIMEOUT_MS = 15_000
# Small on purpose, so the tests can show refused sends; the limit has its own tests.
MAX_MESSAGE_CHARS = 5000
ADMIN_USERNAME = "root"
ADMIN_PASSWORD = "browser-admin-password-1"
ADMIN_ENV = {
    "DJANGO_SUPERUSER_USERNAME": ADMIN_USERNAME,
    "DJANGO_SUPERUSER_PASSWORD": ADMIN_PASSWORD,
}
# Small, so that refusing an oversized image needs no large file; the page reads the limit.
SCRIPTED_MAX_IMAGE_BYTES = 1024 * 1024
# The separate stand-in's defaults (live.DEFAULT_REPLY), for the one run in this process.
DEFAULT_SCRIPT = {"tokens": 12, "interval_ms": 25, "ttft_ms": 50}


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
        extra_env={"MAX_MESSAGE_CHARS": str(MAX_MESSAGE_CHARS), **ADMIN_ENV},
        create_admin=True,
    )
    yield server
    server.stop()


@dataclass
class ScriptedServer:
    """daphne with a stand-in running in this process: a test can read what it was sent."""

    server: LiveServer
    upstream: FakeUpstream

    @property
    def url(self) -> str:
        return self.server.url


@pytest.fixture(scope="package")
def scripted_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScriptedServer]:
    """Started only for the tests that ask for it (and shared by them)."""
    with running_in_thread(tokens=(UPSTREAM_TOKEN,), default_script=DEFAULT_SCRIPT) as upstream:
        server = start_live_server(
            tmp_path_factory.mktemp("scripted-server"),
            upstream_url=upstream.url,
            extra_env={"MAX_IMAGE_BYTES": str(SCRIPTED_MAX_IMAGE_BYTES), **ADMIN_ENV},
            create_admin=True,
        )
        try:
            yield ScriptedServer(server, upstream)
        finally:
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


def open_context(browser: Browser, url: str, **options: object) -> BrowserContext:
    """A fresh browser profile (no cookies: a new visitor) on the server at `url`."""
    settings: dict[str, object] = {
        "viewport": {"width": 1280, "height": 800},
        "color_scheme": "light",
        "permissions": ["clipboard-read", "clipboard-write"],
        **options,
    }
    context = browser.new_context(base_url=url, **settings)  # type: ignore[arg-type]
    context.set_default_timeout(DEFAULT_TIMEOUT_MS)
    return context


@pytest.fixture
def context(browser: Browser, chat_server: LiveServer) -> Iterator[BrowserContext]:
    context = open_context(browser, chat_server.url)
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
