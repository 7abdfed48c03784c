"""The light and dark themes and the phone-width layout render; with UPDATE_SCREENSHOTS=1 their
screenshots are saved in docs/screenshots/ (shown in the README).

These tests use their own server whose stand-in runs in this process, so each reply (and each
title) is scripted from here and the questions on screen carry no `[[fake ...]]` directive.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from chat.testing.fakeupstream import FakeUpstream, running_in_thread
from chat.tests.browser.conftest import DEFAULT_TIMEOUT_MS
from chat.tests.browser.live import UPSTREAM_TOKEN, LiveServer, start_live_server
from chat.tests.browser.pages import ChatPage

pytestmark = pytest.mark.browser

# The README's screenshots are refreshed with UPDATE_SCREENSHOTS=1; other runs write them to a
# temporary folder, so a test run leaves the checkout as it was.
SCREENSHOTS = (
    Path(__file__).resolve().parents[3] / "docs" / "screenshots"
    if os.getenv("UPDATE_SCREENSHOTS") == "1"
    else Path(tempfile.gettempdir()) / "chutes-chat-screenshots"
)
SCREENSHOTS.mkdir(parents=True, exist_ok=True)

QUESTION = "How do I add up one column of a CSV file in Python?"
ANSWER = """The standard library's `csv` module is enough:

```python
import csv

with open("sales.csv", newline="") as f:
    total = sum(float(row["amount"]) for row in csv.DictReader(f))
print(f"Total: {total:.2f}")
```

1. `DictReader` maps each row to the names in the header.
2. The generator adds the **amount** column without loading the whole file.

| Approach | Best for |
|---|---|
| `csv` module | small scripts, no dependencies |
| `pandas` | analysis of large tables |
"""
REASONING = "They want one column's total. DictReader keeps it short and needs no dependency."


class Showcase:
    """A server whose stand-in answers what the test queues: a reply, then its title."""

    def __init__(self, server: LiveServer, upstream: FakeUpstream) -> None:
        self.server = server
        self.upstream = upstream

    def script(self, answer: str, title: str, **fields: object) -> None:
        self.upstream.push_script(text=answer, tokens=30, interval_ms=10, **fields)
        self.upstream.push_script(text=title, reasoning=None)


@pytest.fixture(scope="module")
def showcase(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Showcase]:
    with running_in_thread(
        tokens=(UPSTREAM_TOKEN,), default_script={"reasoning": None}
    ) as upstream:
        server = start_live_server(tmp_path_factory.mktemp("showcase"), upstream_url=upstream.url)
        try:
            yield Showcase(server, upstream)
        finally:
            server.stop()


def new_context(browser: Browser, showcase: Showcase, **options: Any) -> BrowserContext:
    context = browser.new_context(base_url=showcase.server.url, color_scheme="light", **options)
    context.set_default_timeout(DEFAULT_TIMEOUT_MS)
    return context


@pytest.fixture
def desktop(browser: Browser, showcase: Showcase) -> Iterator[Page]:
    context = new_context(browser, showcase, viewport={"width": 1280, "height": 900})
    yield context.new_page()
    context.close()


@pytest.fixture
def phone(browser: Browser, showcase: Showcase) -> Iterator[Page]:
    context = new_context(
        browser,
        showcase,
        viewport={"width": 390, "height": 844},
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
    )
    yield context.new_page()
    context.close()


def background_of(page: Page) -> str:
    return page.evaluate("getComputedStyle(document.body).backgroundColor")


def test_light_and_dark_themes_render_and_the_choice_is_remembered(
    desktop: Page, showcase: Showcase
) -> None:
    page = desktop
    chat = ChatPage(page)
    chat.sign_up("ada")
    showcase.script("Three days: Alfama, Belém, and a day trip to Sintra.", "A weekend in Lisbon")
    chat.ask("Plan a weekend in Lisbon")
    expect(chat.sidebar_link("A weekend in Lisbon")).to_be_visible()
    chat.new_chat()
    showcase.script("It tells the browser what a page may load.", "Content Security Policy")
    chat.ask("What is a CSP header?")
    expect(chat.sidebar_link("Content Security Policy")).to_be_visible()
    chat.new_chat()
    chat.pick_model("DeepSeek R1 0528")
    showcase.script(ANSWER, "Summing a CSV column", reasoning=REASONING)
    chat.ask(QUESTION)
    expect(chat.title).to_have_text("Summing a CSV column")
    expect(page.locator("html")).not_to_have_attribute("data-theme", "dark")
    light = background_of(page)
    page.locator("#prompt").focus()
    page.screenshot(path=SCREENSHOTS / "chat-light.png")

    page.get_by_role("button", name="Dark theme").click()

    expect(page.get_by_role("button", name="Dark theme")).to_have_attribute("aria-pressed", "true")
    expect(page.locator("html")).to_have_attribute("data-theme", "dark")
    dark = background_of(page)
    assert dark != light
    page.locator("#prompt").focus()
    page.screenshot(path=SCREENSHOTS / "chat-dark.png")
    chat.reload()
    expect(page.locator("html")).to_have_attribute("data-theme", "dark")
    assert background_of(page) == dark
    page.get_by_role("button", name="Dark theme").click()
    expect(page.locator("html")).to_have_attribute("data-theme", "light")


def test_the_theme_follows_the_system_until_one_is_chosen(desktop: Page) -> None:
    page = desktop
    page.emulate_media(color_scheme="dark")
    ChatPage(page).sign_up()
    toggle = page.get_by_role("button", name="Dark theme")
    expect(toggle).to_have_attribute("aria-pressed", "true")
    dark = background_of(page)
    page.emulate_media(color_scheme="light")
    expect(toggle).to_have_attribute("aria-pressed", "false")
    assert background_of(page) != dark


def test_the_page_works_at_phone_width_with_the_sidebar_as_a_drawer(
    phone: Page, showcase: Showcase
) -> None:
    page = phone
    chat = ChatPage(page)
    chat.sign_up("grace")
    chat.pick_model("Qwen2.5 Coder 32B")
    showcase.script(ANSWER, "Summing a CSV column")
    chat.ask(QUESTION)
    expect(chat.title).to_have_text("Summing a CSV column")
    expect(page.locator("#sidebar")).not_to_be_in_viewport()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.screenshot(path=SCREENSHOTS / "chat-phone.png")

    menu = page.get_by_role("button", name="Show conversations")
    menu.click()
    expect(menu).to_have_attribute("aria-expanded", "true")
    expect(page.locator("#sidebar")).to_be_in_viewport()
    expect(chat.sidebar_link("Summing a CSV column")).to_be_visible()
    page.keyboard.press("Escape")
    expect(page.locator("#sidebar")).not_to_be_in_viewport()
    expect(menu).to_be_focused()

    # Opening a conversation from the drawer closes it.
    menu.click()
    chat.new_chat()
    expect(page.locator("#sidebar")).not_to_be_in_viewport()
    menu.click()
    chat.sidebar_link("Summing a CSV column").click()
    expect(page.locator("#sidebar")).not_to_be_in_viewport()
    expect(chat.replies).to_have_count(1)
