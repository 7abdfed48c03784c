"""An edited question over the message limit is refused by the page, like a new one: nothing
is sent, the editor stays open with its text and says why."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import Page, expect

from chat.tests.browser.conftest import MAX_MESSAGE_CHARS
from chat.tests.browser.pages import ChatPage, directive

pytestmark = pytest.mark.browser


def test_an_edit_over_the_limit_is_refused_by_the_page_and_never_sent(page: Page) -> None:
    chat = ChatPage(page)
    chat.sign_up()
    chat.ask(f"First question\n{directive(text='First answer.')}")
    sent: list[Any] = []  # text frames, as str
    page.on("websocket", lambda ws: ws.on("framesent", lambda payload: sent.append(payload)))
    chat.reload()
    first = chat.questions.first
    first.hover()
    first.get_by_role("button", name="Edit").click()
    editor = page.get_by_label("Edit your message")
    too_long = "é" * (MAX_MESSAGE_CHARS + 1)
    editor.fill(too_long)
    editor.press("Enter")

    expect(page.locator(".edit-error")).to_contain_text(f"the limit is {MAX_MESSAGE_CHARS:,}")
    expect(editor).to_have_value(too_long)
    # The page's frames were seen (its watch of the conversation), and no edit among them.
    assert any('"watch"' in frame for frame in sent)
    assert not any('"edit"' in frame for frame in sent)
    expect(chat.replies).to_have_count(1)
    assert chat.text_of(chat.replies.first) == "First answer."
