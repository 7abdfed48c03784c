"""Conversations in the browser: titles and history across reloads, rename, search, delete,
regenerate, edit, the model picker with prices, settings and the thinking block."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.sync_api import Browser, Locator, Page, Route, expect

from chat.tests.browser.conftest import ADMIN_PASSWORD, ADMIN_USERNAME
from chat.tests.browser.live import LiveServer
from chat.tests.browser.pages import ChatPage, directive

pytestmark = pytest.mark.browser


def exactly(text: str) -> re.Pattern[str]:
    return re.compile(f"^{re.escape(text)}$")


def test_history_and_titles_survive_a_reload(page: Page) -> None:
    chat = ChatPage(page)
    chat.sign_up()
    # The stand-in answers the title request with the same scripted text: its first line.
    answer = "Cats are great.\nThey sleep a lot."
    chat.ask("Tell me about cats\n" + directive(text=answer))
    expect(chat.sidebar_link("Cats are great")).to_be_visible()
    expect(chat.title).to_have_text("Cats are great")
    first = chat.conversation_id()
    chat.new_chat()
    chat.ask(f"And dogs?\n{directive(text='Dogs are loyal.')}")
    expect(chat.sidebar_link("Dogs are loyal")).to_be_visible()

    chat.reload()

    expect(chat.sidebar_links).to_have_text(["Dogs are loyal", "Cats are great"])
    expect(page.locator(".conv-group h2")).to_have_text(["Today"])
    expect(chat.title).to_have_text("Dogs are loyal")
    chat.sidebar_link("Cats are great").click()
    expect(page).to_have_url(re.compile(rf"\?c={first}$"))
    expect(chat.questions).to_have_count(1)
    expect(chat.questions.first).to_contain_text("Tell me about cats")
    assert chat.text_of(chat.replies.first) == "Cats are great. They sleep a lot."
    expect(chat.title).to_have_text("Cats are great")
    # Back and forward move between conversations too.
    page.go_back()
    expect(chat.title).to_have_text("Dogs are loyal")


def test_rename_search_and_delete(page: Page) -> None:
    chat = ChatPage(page)
    chat.sign_up()
    chat.ask(f"Zebras have stripes\n{directive(text='About zebras.')}")
    expect(chat.sidebar_link("About zebras")).to_be_visible()
    chat.new_chat()
    chat.ask(f"Walruses have tusks\n{directive(text='About walruses.')}")
    expect(chat.sidebar_link("About walruses")).to_be_visible()

    # Rename
    item = page.locator(".conv", has=page.locator(".conv-link", has_text="About zebras"))
    item.hover()
    item.get_by_role("button", name="Rename “About zebras”").click()
    page.get_by_label("New title").fill("Striped horses")
    page.get_by_label("New title").press("Enter")
    expect(chat.sidebar_link("Striped horses")).to_be_visible()
    expect(chat.sidebar_links).to_have_text(["Striped horses", "About walruses"])
    chat.reload()
    expect(chat.sidebar_links).to_have_text(["Striped horses", "About walruses"])

    # Search reaches message text, not only titles.
    page.get_by_label("Search conversations").fill("tusks")
    expect(chat.sidebar_links).to_have_text(["About walruses"])
    page.get_by_label("Search conversations").fill("nothing like this")
    expect(page.locator("#history-empty")).to_have_text("No conversation matches.")
    page.get_by_label("Search conversations").fill("")
    expect(chat.sidebar_links).to_have_count(2)

    # Delete asks first; cancelling keeps it.
    walrus = page.locator(".conv", has=page.locator(".conv-link", has_text="About walruses"))
    walrus.hover()
    walrus.get_by_role("button", name="Delete “About walruses”").click()
    dialog = page.get_by_role("dialog", name="Delete this conversation?")
    expect(dialog).to_be_visible()
    dialog.get_by_role("button", name="Cancel").click()
    expect(chat.sidebar_links).to_have_count(2)
    walrus.hover()
    walrus.get_by_role("button", name="Delete “About walruses”").click()
    dialog.get_by_role("button", name="Delete").click()
    expect(chat.sidebar_links).to_have_text(["Striped horses"])
    # The open conversation was the deleted one: the page is a new chat now.
    expect(chat.title).to_have_text("New chat")
    chat.reload()
    expect(chat.sidebar_links).to_have_text(["Striped horses"])


def test_regenerate_replaces_the_last_reply(page: Page) -> None:
    chat = ChatPage(page)
    chat.sign_up()
    reply = chat.ask(f"Pick a number\n{directive(text='Seven.')}")
    old_id = reply.get_attribute("data-id")

    reply.get_by_role("button", name="Regenerate").click()

    reply = chat.replies.first
    expect(reply).not_to_have_attribute("data-id", old_id or "")
    expect(reply).to_have_attribute("data-status", "complete")
    expect(chat.replies).to_have_count(1)
    new_id = reply.get_attribute("data-id")
    chat.reload()
    expect(chat.replies).to_have_count(1)
    expect(chat.replies.first).to_have_attribute("data-id", new_id or "")
    expect(chat.questions).to_have_count(1)


def test_editing_a_question_replaces_it_and_everything_after(page: Page) -> None:
    chat = ChatPage(page)
    chat.sign_up()
    chat.ask(f"First question\n{directive(text='First answer.')}")
    chat.ask(f"Second question\n{directive(text='Second answer.')}")

    first = chat.questions.first
    first.hover()
    first.get_by_role("button", name="Edit").click()
    editor = page.get_by_label("Edit your message")
    expect(editor).to_have_value(re.compile("^First question"))
    editor.fill(f"Better question\n{directive(text='Better answer.')}")
    editor.press("Enter")

    expect(chat.questions).to_have_count(1)
    expect(chat.questions.first).to_contain_text("Better question")
    expect(chat.replies.first).to_have_attribute("data-status", "complete")
    expect(chat.replies).to_have_count(1)
    assert chat.text_of(chat.replies.first) == "Better answer."
    chat.reload()
    expect(chat.questions).to_have_count(1)
    expect(chat.questions.first).to_contain_text("Better question")
    assert chat.text_of(chat.replies.first) == "Better answer."


def test_the_model_picker_shows_prices_and_remembers_the_choice(page: Page) -> None:
    chat = ChatPage(page)
    chat.sign_up()
    page.get_by_role("button", name=re.compile("^Model:")).click()
    options = page.locator(".model-option")

    def option(name: str) -> Locator:
        return options.filter(has=page.locator(".option-name", has_text=exactly(name)))

    # Prices are shown as the server wrote them (decimal strings), trimmed of trailing zeros.
    expect(option("DeepSeek V3 0324")).to_contain_text("$0.27216 in · $0.27216 out per 1M tokens")
    expect(option("DeepSeek V3 0324")).to_contain_text("164K context")
    expect(option("Mistral Nemo")).to_contain_text("$0.01512 in · $0.01512 out per 1M tokens")
    expect(option("DeepSeek R1 0528").locator(".badge-reasoning")).to_have_text("reasoning")
    expect(option("Qwen2.5 VL 32B").locator(".badge-vision")).to_have_text("vision")
    expect(option("Mistral Nemo").locator(".badge-reasoning")).to_have_count(0)
    page.keyboard.press("Escape")
    expect(page.locator("#model-menu")).to_be_hidden()

    chat.pick_model("Mistral Nemo")
    reply = chat.ask("Hello there")
    expect(reply.locator(".meta-model")).to_have_text("Mistral Nemo")
    expect(reply.locator(".meta-cost")).to_have_text(re.compile(r"^\$0\.\d+$"))
    expect(reply.locator(".meta-tokens")).to_have_text(re.compile(r"^\d+ in · \d+ out tokens$"))
    expect(page.locator("#total-cost")).to_have_text(re.compile(r"^Total \$0\.\d+$"))
    chat.reload()
    expect(page.locator("#model-name")).to_have_text("Mistral Nemo")

    # A user default applies to new chats.
    chat.new_chat()
    expect(page.locator("#model-name")).to_have_text("DeepSeek TNG R1T2 Chimera")
    chat.pick_model("Gemma 3 12B")
    page.locator("#model-button").click()
    page.get_by_role("button", name="Use for new chats").click()
    expect(page.get_by_role("button", name="Used for new chats")).to_be_disabled()
    chat.reload()
    expect(page.locator("#model-name")).to_have_text("Gemma 3 12B")


def test_a_thinking_model_shows_its_reasoning_apart_with_its_duration(page: Page) -> None:
    chat = ChatPage(page)
    chat.sign_up()
    chat.pick_model("DeepSeek R1 0528")
    reasoning = "First I weigh the question. Then I answer it."
    reply = chat.ask(
        f"Think first {directive(reasoning=reasoning, text='It is 42.', interval_ms=40)}"
    )

    thinking = reply.locator("details.thinking")
    expect(thinking.locator("summary")).to_have_text(re.compile(r"^Thought for \d+(\.\d)? s$"))
    expect(thinking.locator(".thinking-text")).to_be_hidden()
    thinking.locator("summary").click()
    expect(thinking.locator(".thinking-text")).to_have_text(reasoning)
    assert chat.text_of(reply) == "It is 42."
    chat.reload()
    summary = chat.replies.first.locator("details.thinking summary")
    expect(summary).to_have_text(re.compile(r"^Thought for \d+(\.\d)? s$"))


def test_settings_apply_to_a_new_chat_and_are_saved_on_the_conversation(page: Page) -> None:
    chat = ChatPage(page)
    chat.sign_up()
    page.get_by_role("button", name="Conversation settings").click()
    page.get_by_role("textbox", name="System prompt").fill("Answer like a pirate.")
    page.get_by_label("Temperature").fill("0.4")
    page.get_by_label("Max tokens").fill("300")
    page.get_by_role("button", name="Save settings").click()
    expect(page.locator("#settings-status")).to_contain_text("Saved")

    chat.ask(f"Ahoy {directive(text='Arr.')}")
    chat.reload()
    page.get_by_role("button", name="Conversation settings").click()
    expect(page.get_by_role("textbox", name="System prompt")).to_have_value("Answer like a pirate.")
    expect(page.get_by_label("Temperature")).to_have_value("0.4")
    expect(page.get_by_label("Max tokens")).to_have_value("300")

    page.get_by_label("Temperature").fill("3")
    page.get_by_role("button", name="Save settings").click()
    expect(page.locator("#settings-status")).to_have_text(
        "Temperature must be a number from 0 to 2."
    )
    page.get_by_label("Temperature").fill("")
    page.get_by_label("Max tokens").fill("500")
    page.get_by_role("button", name="Save settings").click()
    expect(page.locator("#settings-status")).to_have_text("Saved.")
    chat.reload()
    page.get_by_role("button", name="Conversation settings").click()
    expect(page.get_by_label("Temperature")).to_have_value("")
    expect(page.get_by_label("Max tokens")).to_have_value("500")


def test_copy_puts_the_reply_on_the_clipboard(page: Page) -> None:
    chat = ChatPage(page)
    chat.sign_up()
    text = "Run this:\n\n```python\nprint('hi')\n```\n"
    reply = chat.ask(f"Code please {directive(text=text)}")

    copy_code = reply.locator(".copy-code")
    copy_code.click()
    expect(copy_code).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == "print('hi')\n"
    reply.get_by_role("button", name="Copy", exact=True).click()
    assert page.evaluate("navigator.clipboard.readText()") == text


def test_shift_enter_adds_a_line_and_enter_sends(page: Page) -> None:
    chat = ChatPage(page)
    chat.sign_up()
    chat.prompt.press_sequentially("first line")
    chat.prompt.press("Shift+Enter")
    chat.prompt.press_sequentially(f"second line {directive(text='Two lines.')}")
    expect(chat.questions).to_have_count(0)

    chat.prompt.press("Enter")

    expect(chat.replies.first).to_have_attribute("data-status", "complete")
    expect(chat.questions.first.locator(".user-text")).to_have_text(
        re.compile(r"^first line\nsecond line")
    )
    expect(chat.prompt).to_have_value("")


def test_the_sidebar_groups_by_date_and_loads_the_next_page_at_its_end(page: Page) -> None:
    now = datetime.now().astimezone()
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    ages = [now] * 20 + [midnight - timedelta(hours=12)] * 10
    ages += [midnight - timedelta(days=3)] * 10 + [midnight - timedelta(days=30)] * 15

    def summary(number: int, updated: datetime) -> dict[str, object]:
        stamp = updated.isoformat()
        return {"id": 9000 + number, "title": f"Old chat {number}", "model": None,
                "created": stamp, "updated": stamp}  # fmt: skip

    pages = {
        "1": {"conversations": [summary(n, t) for n, t in enumerate(ages[:50])], "next_page": 2},
        "2": {"conversations": [summary(50 + n, t) for n, t in enumerate(ages[50:])],
              "next_page": None},
    }  # fmt: skip

    def answer(route: Route) -> None:
        number = parse_qs(urlsplit(route.request.url).query).get("page", ["1"])[0]
        route.fulfill(json=pages[number])

    page.route(re.compile(r"/api/conversations\?"), answer)
    chat = ChatPage(page)
    chat.sign_up()

    expect(page.locator(".conv-group h2")).to_have_text(
        ["Today", "Yesterday", "Previous 7 days", "Older"]
    )
    expect(chat.sidebar_links).to_have_count(50)
    page.locator("#load-more").scroll_into_view_if_needed()
    expect(chat.sidebar_links).to_have_count(55)
    expect(page.locator("#load-more")).to_be_hidden()
    expect(chat.sidebar_links.last).to_have_text("Old chat 54")


def set_model_enabled(admin: ChatPage, name: str, enabled: bool) -> None:
    page = admin.page
    page.goto(f"/admin/chat/chatmodel/?q={name}")
    row = page.locator("#result_list tbody tr", has_text=name)
    row.locator("input.action-select").check()
    verb = "Enable" if enabled else "Disable"
    page.locator("select[name=action]").select_option(label=f"{verb} selected models")
    page.get_by_role("button", name="Run").or_(page.get_by_role("button", name="Go")).click()
    expect(page.locator(".messagelist")).to_be_visible()


def test_a_disabled_model_shows_as_unavailable_until_another_is_picked(
    page: Page, browser: Browser, chat_server: LiveServer
) -> None:
    chat = ChatPage(page)
    chat.sign_up()
    chat.pick_model("Mistral Small 24B 2501")
    chat.ask(f"Hello {directive(text='Hello.')}")
    admin_context = browser.new_context(base_url=chat_server.url)
    admin = ChatPage(admin_context.new_page())
    admin.log_in(ADMIN_USERNAME, ADMIN_PASSWORD, next_url="/admin/")
    try:
        set_model_enabled(admin, "Mistral Small 24B 2501", enabled=False)
        chat.reload()

        expect(page.locator("#model-name")).to_have_text(
            "unsloth/Mistral-Small-24B-Instruct-2501 (unavailable)"
        )
        expect(page.locator("#model-notice")).to_contain_text("no longer available")
        expect(chat.prompt).to_be_disabled()

        chat.pick_model("Gemma 3 12B")

        expect(page.locator("#model-notice")).to_be_hidden()
        expect(chat.prompt).to_be_enabled()
        reply = chat.ask(f"Still there? {directive(text='Yes.')}")
        expect(reply.locator(".meta-model")).to_have_text("Gemma 3 12B")
        chat.reload()
        expect(page.locator("#model-name")).to_have_text("Gemma 3 12B")
    finally:
        set_model_enabled(admin, "Mistral Small 24B 2501", enabled=True)
        admin_context.close()
