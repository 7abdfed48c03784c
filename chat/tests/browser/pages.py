"""The chat page as the tests drive it: every wait is on a state the page exposes
(body[data-ready], #connection[data-connection], a reply's data-status and data-seq)."""

from __future__ import annotations

import io
import itertools
import json
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

from PIL import Image
from playwright.sync_api import FilePayload, Locator, Page, expect

PASSWORD = "a long browser-test password 7"
_users = itertools.count(1)


def directive(**fields: Any) -> str:
    """A directive that scripts the stand-in's reply (see chat/testing/fakeupstream/script.py).

    A new user's model is the catalogue's first, a reasoning model; the server holds back such a
    model's answer until it has seen whether reasoning comes first. A one-word reasoning (unless
    the test gives its own) lets the answer stream at once.
    """
    fields.setdefault("reasoning", "Hm.")
    return f"[[fake {json.dumps(fields)}]]"


def words(count: int, prefix: str = "w") -> str:
    """Distinct plain words, so a doubled or lost piece of text cannot go unnoticed."""
    return " ".join(f"{prefix}{i:02d}" for i in range(1, count + 1))


def eventually(page: Page, check: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait for a condition the test observes from outside the page (frames seen by a route).

    Playwright delivers those events while the test waits in it, hence page.wait_for_timeout
    as the polling step rather than time.sleep.
    """
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout}s")
        page.wait_for_timeout(50)


def png_file(
    name: str = "picture.png", width: int = 80, height: int = 60, color: str = "red"
) -> FilePayload:
    """A real PNG, as Playwright hands a file to an <input type=file>."""
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, format="PNG")
    return {"name": name, "mimeType": "image/png", "buffer": out.getvalue()}


def squash(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


class ChatPage:
    def __init__(self, page: Page) -> None:
        self.page = page

    # Accounts

    def sign_up(self, username: str | None = None) -> str:
        name = username or f"user{next(_users)}-{uuid.uuid4().hex[:6]}"
        self.page.goto("/accounts/signup/")
        self.page.get_by_label("Username").fill(name)
        self.page.get_by_label("Password", exact=True).fill(PASSWORD)
        self.page.get_by_label("Password confirmation").fill(PASSWORD)
        self.page.get_by_role("button", name="Sign up").click()
        self.wait_ready()
        return name

    def log_in(self, username: str, password: str, next_url: str = "/") -> None:
        self.page.goto(f"/accounts/login/?next={next_url}")
        self.page.get_by_label("Username").fill(username)
        self.page.get_by_label("Password").fill(password)
        self.page.get_by_role("button", name="Log in").click()

    # Page state

    def wait_ready(self) -> None:
        # wait_for_function checks on every animation frame; expect() backs off up to a second.
        # (A function, not an expression string: the page's CSP forbids eval.)
        self.page.wait_for_function(
            "() => document.body?.dataset.ready === '1' &&"
            " document.getElementById('connection')?.dataset.connection === 'open'"
        )

    def reload(self) -> None:
        self.page.reload()
        self.wait_ready()

    @property
    def connection(self) -> Locator:
        return self.page.locator("#connection")

    @property
    def prompt(self) -> Locator:
        return self.page.get_by_label("Message", exact=True)

    @property
    def replies(self) -> Locator:
        return self.page.locator("#thread .reply")

    @property
    def questions(self) -> Locator:
        return self.page.locator("#thread .message.user")

    @property
    def title(self) -> Locator:
        return self.page.locator("#chat-title")

    @property
    def composer_error(self) -> Locator:
        return self.page.locator("#composer-error")

    def sidebar_link(self, title: str) -> Locator:
        return self.page.locator("#conversation-groups .conv-link", has_text=title)

    @property
    def sidebar_links(self) -> Locator:
        return self.page.locator("#conversation-groups .conv-link")

    def conversation_id(self) -> int:
        match = re.search(r"[?&]c=(\d+)", self.page.url)
        assert match, f"no conversation in {self.page.url}"
        return int(match.group(1))

    # Actions

    def send(self, text: str) -> None:
        self.prompt.fill(text)
        self.prompt.press("Enter")

    def ask(self, text: str, status: str = "complete") -> Locator:
        """Send `text` and wait for its reply to end with `status`; return the reply."""
        before = self.replies.count()
        self.send(text)
        reply = self.replies.nth(before)
        self.wait_status(before, status)
        expect(reply).to_have_attribute("data-status", status)
        return reply

    def wait_status(self, index: int, status: str) -> None:
        """Wait until the reply at `index` has `status` (checked on every animation frame)."""
        self.page.wait_for_function(
            "([index, status]) =>"
            " document.querySelectorAll('#thread .reply')[index]?.dataset.status === status",
            arg=[index, status],
        )

    def wait_seq(self, reply: Locator, at_least: int) -> None:
        """Wait until the reply holds at least `at_least` delta frames."""
        reply.wait_for()
        self.page.wait_for_function(
            "([id, n]) => Number(document.querySelector(`.reply[data-id='${id}']`)"
            "?.dataset.seq ?? 0) >= n",
            arg=[reply.get_attribute("data-id"), at_least],
        )

    def new_chat(self) -> None:
        self.page.get_by_role("button", name="New chat").click()
        expect(self.title).to_have_text("New chat")

    @property
    def attachments(self) -> Locator:
        return self.page.locator("#attachments .attachment")

    def attach(self, *files: FilePayload) -> None:
        """Choose files in the composer's file input (as the Attach button's chooser would)."""
        self.page.locator("#image-input").set_input_files(list(files))

    def open_conversation_menu(self) -> Locator:
        self.page.get_by_role("button", name="Share or export this conversation").click()
        menu = self.page.locator("#conv-menu")
        expect(menu).to_be_visible()
        return menu

    def open_presets(self) -> Locator:
        self.page.get_by_role("button", name="Presets").click()
        dialog = self.page.get_by_role("dialog", name="Presets")
        expect(dialog).to_have_attribute("data-loaded", "1")
        return dialog

    def pick_model(self, name: str) -> None:
        self.page.locator("#model-button").click()
        exact = re.compile(f"^{re.escape(name)}$")
        option_name = self.page.locator(".option-name", has_text=exact)
        self.page.locator(".model-option", has=option_name).click()
        expect(self.page.locator("#model-name")).to_have_text(name)

    @staticmethod
    def text_of(reply: Locator) -> str:
        return squash(reply.locator(".content").inner_text())
