"""The core flow in the production configuration: DEBUG off, a real SECRET_KEY, collectstatic'd
files served by WhiteNoise with the production storage. Once from daphne directly, and once the
way docs/deployment.md deploys it: behind the shipped nginx configuration, over TLS.

Log in, pick a model, send and watch the reply stream, stop it (the text seen is kept), then
reload while a second reply streams (it resumes, complete and not doubled).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, Page, Response, expect

from chat.testing import processes
from chat.testing.processes import SITE_HOST
from chat.tests.browser.conftest import ADMIN_ENV, ADMIN_PASSWORD, ADMIN_USERNAME, open_context
from chat.tests.browser.live import LiveServer, start_live_server
from chat.tests.browser.pages import ChatPage, directive, words

pytestmark = pytest.mark.browser

SECRET_KEY = secrets.token_urlsafe(50)
MODEL = "Mistral Nemo"
# A module of the chat page under its hashed name: the production storage's.
HASHED_MODULE = re.compile(r"/static/chat/js/app\.[0-9a-f]{12}\.js$")


@dataclass
class Site:
    url: str
    context_options: dict[str, Any] = field(default_factory=dict)


def production_env(static_root: Path, **extra: str) -> dict[str, str]:
    return {
        "DEBUG": "false",
        "SECRET_KEY": SECRET_KEY,
        "STATIC_ROOT": str(static_root),
        **ADMIN_ENV,
        **extra,
    }


@pytest.fixture(scope="module")
def static_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """collectstatic with the production storage, once for both sites."""
    root = tmp_path_factory.mktemp("production-static")
    processes.collectstatic(processes.base_env(**production_env(root)))
    return root


def start(folder: Path, static_root: Path, **extra: str) -> LiveServer:
    return start_live_server(
        folder, extra_env=production_env(static_root, **extra), create_admin=True
    )


@pytest.fixture(scope="module")
def direct_site(tmp_path_factory: pytest.TempPathFactory, static_root: Path) -> Iterator[Site]:
    """daphne on plain HTTP: no HTTPS redirect, cookies not limited to HTTPS."""
    server = start(
        tmp_path_factory.mktemp("production-direct"),
        static_root,
        SECURE_SSL_REDIRECT="false",
        SECURE_COOKIES="false",
    )
    yield Site(server.url)
    server.stop()


@pytest.fixture(scope="module")
def nginx_site(tmp_path_factory: pytest.TempPathFactory, static_root: Path) -> Iterator[Site]:
    """daphne behind nginx with the shipped configuration, reached by the site's name (the
    browser maps it to 127.0.0.1) over TLS with a self-signed certificate."""
    processes.require_nginx()
    folder = tmp_path_factory.mktemp("production-nginx")
    https_port = processes.free_port()
    server = start(
        folder,
        static_root,
        ALLOWED_HOSTS=f"{SITE_HOST},127.0.0.1",
        # nginx passes the host name without the port; the browser's Origin has it.
        CSRF_TRUSTED_ORIGINS=f"https://{SITE_HOST}:{https_port}",
        BEHIND_TLS_PROXY="true",
    )
    try:
        app_port = urlsplit(server.url).port
        assert app_port is not None
        nginx = processes.start_nginx(folder / "nginx", [app_port], https_port=https_port)
    except BaseException:
        server.stop()
        raise
    yield Site(nginx.url, {"ignore_https_errors": True})
    nginx.stop()
    server.stop()


@pytest.fixture(params=["direct", "nginx"])
def site(request: pytest.FixtureRequest) -> Site:
    return request.getfixturevalue(f"{request.param}_site")


@pytest.fixture
def page(browser: Browser, site: Site) -> Iterator[Page]:
    context = open_context(browser, site.url, **site.context_options)
    yield context.new_page()
    context.close()


def test_the_core_flow_works_in_production(page: Page, site: Site) -> None:
    failures: list[str] = []

    def record(response: Response) -> None:
        if response.status >= 400:
            failures.append(f"{response.status} {response.url}")

    page.on("response", record)
    page.on("pageerror", lambda error: failures.append(f"page error: {error}"))
    chat = ChatPage(page)
    chat.log_in(ADMIN_USERNAME, ADMIN_PASSWORD)
    chat.wait_ready()
    module = page.locator("script[type=module][src*='/chat/js/app']")
    expect(module).to_have_attribute("src", HASHED_MODULE)
    chat.pick_model(MODEL)

    # A reply that streams for several seconds: watched as it grows, then stopped.
    first = words(60)
    chat.send(f"Stop me {directive(text=first, tokens=60, interval_ms=100, reasoning=None)}")
    reply = chat.replies.first
    chat.wait_seq(reply, 3)
    expect(reply).to_have_attribute("data-status", "streaming")
    early = chat.text_of(reply)
    chat.wait_seq(reply, 6)
    assert first.startswith(early) and len(chat.text_of(reply)) > len(early) > 0
    page.get_by_role("button", name="Stop the reply (Esc)").click()
    expect(reply).to_have_attribute("data-status", "stopped")
    partial = chat.text_of(reply)
    assert first.startswith(partial) and len(early) < len(partial) < len(first)

    # A second reply, reloaded mid-stream: it resumes and ends whole, once.
    second = words(40, prefix="v")
    chat.send(f"Go on {directive(text=second, tokens=40, interval_ms=70, reasoning=None)}")
    chat.wait_seq(chat.replies.nth(1), 5)
    chat.reload()
    resumed = chat.replies.nth(1)
    expect(resumed).to_have_attribute("data-status", "streaming")
    expect(resumed).to_have_attribute("data-status", "complete")
    assert chat.text_of(resumed) == second
    expect(chat.replies).to_have_count(2)
    expect(chat.questions).to_have_count(2)
    expect(chat.replies.first).to_have_attribute("data-status", "stopped")
    assert chat.text_of(chat.replies.first) == partial
    assert failures == []
