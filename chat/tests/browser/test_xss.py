"""Stored and streamed cross-site scripting: markup typed by a user (a question, a title), written
by a model (a title) or entered by an admin (a model's name and description) is shown as text
in the chat page, the sidebar and the admin, and runs nothing.

A payload that reached the DOM as markup would also be stopped by the CSP; the tests therefore
check the text is shown as typed, that no such element exists, and that the policy reported no
violation (a blocked inline handler is a violation), besides `window.__xss` staying unset.
Replies and markdown images are covered in test_security.py.

One kind of report is expected and harmless: the sanitiser parses model text with DOMParser, and
Chromium reports the handlers in that inert document (which never runs them) against the page's
policy, from the sanitiser's own file. Any other source means markup reached the live page.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from chat.tests.browser.conftest import ADMIN_PASSWORD, ADMIN_USERNAME, ScriptedServer, open_context
from chat.tests.browser.pages import ChatPage, directive

pytestmark = pytest.mark.browser

IMG = '<img src=x onerror="window.__xss=1;alert(1)">'
SCRIPT = "<script>window.__xss=2;alert(2)</script>"
SVG = '<svg onload="window.__xss=3">'
SANITISER = "/static/vendor/dompurify-"
# Every CSP violation with the file that caused it, from before the page's first script.
REPORT_VIOLATIONS = """
document.addEventListener("securitypolicyviolation", (event) => {
  window.reportViolation(
    `${location.pathname}: ${event.violatedDirective} ${event.blockedURI} from ${event.sourceFile}`
  );
});
"""


@pytest.fixture
def context(browser: Browser, scripted_server: ScriptedServer) -> Iterator[BrowserContext]:
    context = open_context(browser, scripted_server.url)
    yield context
    context.close()


class Guard:
    """Watches a page for any sign of a payload running: a dialog, a CSP violation, a global."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.dialogs: list[str] = []
        self.violations: list[str] = []
        page.expose_function("reportViolation", self.report)
        page.add_init_script(REPORT_VIOLATIONS)
        # page.on drops a handler's value; Playwright's types want None, not this lambda's tuple.
        page.on("dialog", lambda dialog: (self.dialogs.append(dialog.message), dialog.dismiss()))  # type: ignore[call-overload, func-returns-value]  # value dropped

    def report(self, violation: str) -> None:
        self.violations.append(violation)

    def assert_nothing_ran(self) -> None:
        assert self.page.evaluate("typeof window.__xss") == "undefined"
        assert self.dialogs == []
        assert [v for v in self.violations if SANITISER not in v] == []
        # No payload became an element. (A reply is model markdown, sanitised: an <img src=x>
        # without its handler may stay there; test_security.py covers replies.)
        injected = "[onerror], [onload], body script:not([src]), img[src='x']:not(.markdown img)"
        assert self.page.locator(injected).count() == 0


@contextlib.contextmanager
def admin_page(browser: Browser, server: ScriptedServer) -> Iterator[tuple[Page, Guard]]:
    context = open_context(browser, server.url)
    try:
        page = context.new_page()
        guard = Guard(page)
        ChatPage(page).log_in(ADMIN_USERNAME, ADMIN_PASSWORD, next_url="/admin/")
        expect(page.get_by_role("heading", name="Site administration")).to_be_visible()
        yield page, guard
    finally:
        context.close()


def test_a_question_with_markup_is_shown_as_text_when_sent_streamed_and_stored(
    context: BrowserContext, browser: Browser, scripted_server: ScriptedServer
) -> None:
    page = context.new_page()
    guard = Guard(page)
    chat = ChatPage(page)
    chat.sign_up()
    chat.ask(f"Hello\n{directive(text='Hi.')}")
    # A second tab of the same conversation receives the next question in a `started` frame.
    other_page = context.new_page()
    other_guard = Guard(other_page)
    other = ChatPage(other_page)
    other_page.goto(f"/?c={chat.conversation_id()}")
    other.wait_ready()

    payload = f"{IMG} {SCRIPT} {SVG}"
    chat.ask(f"{payload}\n{directive(text='Noted.')}")

    for view in (chat, other):
        question = view.questions.nth(1).locator(".user-text")
        expect(question).to_contain_text(payload)
        expect(view.replies.nth(1)).to_have_attribute("data-status", "complete")
    guard.assert_nothing_ran()
    other_guard.assert_nothing_ran()
    chat.reload()
    expect(chat.questions.nth(1).locator(".user-text")).to_contain_text(payload)
    # Search matches message text; the results list shows titles as text too.
    page.get_by_label("Search conversations").fill("onerror")
    expect(chat.sidebar_links).to_have_count(1)
    guard.assert_nothing_ran()

    # The admin shows a conversation's messages, as text.
    with admin_page(browser, scripted_server) as (admin, admin_guard):
        admin.goto(f"/admin/chat/conversation/{chat.conversation_id()}/change/")
        expect(admin.locator("#content")).to_contain_text(payload)
        admin_guard.assert_nothing_ran()


def test_a_title_written_by_the_model_or_typed_in_a_rename_is_shown_as_text(
    page: Page, browser: Browser, scripted_server: ScriptedServer
) -> None:
    guard = Guard(page)
    chat = ChatPage(page)
    chat.sign_up()
    # The stand-in answers the title request with the same scripted text: its first line.
    model_title = f"{IMG} Tea notes"
    chat.ask(f"Tea?\n{directive(text=model_title + chr(10) + chr(10) + 'Green tea is nice.')}")
    expect(chat.title).to_have_text(model_title)
    expect(chat.sidebar_link("Tea notes")).to_have_text(model_title)
    assert model_title in page.title()
    guard.assert_nothing_ran()

    typed_title = f"{SCRIPT}{SVG} Renamed"
    item = page.locator(".conv", has=page.locator(".conv-link", has_text="Tea notes"))
    item.hover()
    item.get_by_role("button", name=re.compile("^Rename")).click()
    page.get_by_label("New title").fill(typed_title)
    page.get_by_label("New title").press("Enter")
    expect(chat.sidebar_links.first).to_have_text(typed_title)
    expect(chat.title).to_have_text(typed_title)
    chat.reload()
    expect(chat.sidebar_links.first).to_have_text(typed_title)
    expect(chat.title).to_have_text(typed_title)
    # The delete dialog quotes the title, as text.
    item = page.locator(".conv").first
    item.hover()
    item.get_by_role("button", name=re.compile("^Delete")).click()
    expect(page.locator("#confirm-delete-text")).to_contain_text(typed_title)
    page.get_by_role("button", name="Cancel").click()
    guard.assert_nothing_ran()

    # The admin lists conversations by title.
    with admin_page(browser, scripted_server) as (admin, admin_guard):
        admin.goto("/admin/chat/conversation/?q=Renamed")
        row = admin.locator("#result_list tbody tr").first
        expect(row).to_contain_text(typed_title)
        row.locator("a").first.click()
        expect(admin.locator("#content h2, #content .readonly").first).to_be_visible()
        expect(admin.locator("#content")).to_contain_text(typed_title)
        admin_guard.assert_nothing_ran()


def test_a_model_name_and_description_set_by_an_admin_are_shown_as_text(
    page: Page, browser: Browser, scripted_server: ScriptedServer
) -> None:
    name = f"{IMG}Coder"
    description = f"{SCRIPT}Writes code. {SVG}"
    with admin_page(browser, scripted_server) as (admin, admin_guard):
        original = edit_model(admin, "Qwen2.5 Coder 32B", name, description)
        try:
            admin.goto("/admin/chat/chatmodel/?q=Coder")
            expect(admin.locator("#result_list")).to_contain_text(name)
            admin.locator("#result_list a", has_text="Coder").first.click()
            expect(admin.locator("#id_name")).to_have_value(name)
            expect(admin.locator("#id_description")).to_have_value(description)
            admin_guard.assert_nothing_ran()
            check_the_chat_page(page, name, description)
        finally:
            edit_model(admin, name, *original)


def check_the_chat_page(page: Page, name: str, description: str) -> None:
    """The picker, a reply's model line and the presets dialog show the name as text."""
    guard = Guard(page)
    chat = ChatPage(page)
    chat.sign_up()
    page.locator("#model-button").click()
    option = page.locator(".model-option", has=page.locator(".option-name", has_text="Coder"))
    expect(option.locator(".option-name")).to_have_text(name)
    expect(option).to_have_attribute("title", description)
    option.click()
    expect(page.locator("#model-name")).to_have_text(name)
    reply = chat.ask(f"Code?\n{directive(text='Sure.', reasoning=None)}")
    expect(reply.locator(".meta-model")).to_have_text(name)
    # The presets dialog names the model of the current settings.
    dialog = chat.open_presets()
    expect(dialog.locator("#preset-save-summary")).to_contain_text(name)
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    guard.assert_nothing_ran()


def edit_model(admin: Page, name: str, new_name: str, description: str) -> tuple[str, str]:
    """Set a model's name and description in the admin; returns the old ones."""
    admin.goto("/admin/chat/chatmodel/")
    admin.locator("#result_list a", has_text=re.compile(f"^{re.escape(name)}$")).click()
    old = (admin.locator("#id_name").input_value(), admin.locator("#id_description").input_value())
    admin.locator("#id_name").fill(new_name)
    admin.locator("#id_description").fill(description)
    admin.get_by_role("button", name="Save", exact=True).click()
    expect(admin.locator(".messagelist")).to_be_visible()
    return old
