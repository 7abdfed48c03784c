"""The sanitiser keeps exactly what markdown needs: a model's forms, inputs, buttons, frames,
svg, math and styles never reach the page (in the chat or on a share link), and nothing they
name is fetched, while ordinary markdown still renders in full."""

from __future__ import annotations

from http import HTTPStatus

import pytest
from playwright.sync_api import Locator, Page, Request, expect

from chat.tests.browser.live import HitRecorder
from chat.tests.browser.pages import ChatPage, directive

pytestmark = pytest.mark.browser

# Elements a model may write as HTML that markdown never produces.
REFUSED = (
    "input, form, button, textarea, select, option, iframe, frame, object, embed, svg, math, "
    "style, link, meta, base, video, audio, source, picture, dialog, details, template, "
    "[style], [id], [name], [data-action], [class]:not(code)"
)


def hostile(origin: str) -> str:
    return (
        "Look at this.\n\n"
        f'<input type="image" src="{origin}/input.gif" alt="an input">\n\n'
        f'<form action="{origin}/form"><input name="q" value="x">'
        f'<button formaction="{origin}/button">Send it</button></form>\n\n'
        f'<iframe src="{origin}/frame"></iframe>\n\n'
        f'<svg><image href="{origin}/svg.gif"></image></svg>\n\n'
        "<math><mi>x</mi></math>\n\n"
        f"<style>@import url({origin}/style.css); body {{ display: none }}</style>\n\n"
        f'<object data="{origin}/object"></object><embed src="{origin}/embed">\n\n'
        f'<video poster="{origin}/poster.gif"></video>'
        f'<audio src="{origin}/audio.mp3"></audio>\n\n'
        f'<link rel="stylesheet" href="{origin}/link.css">\n\n'
        "<dialog open>A fake dialog</dialog><details open><summary>More</summary></details>\n\n"
        '<p class="reply" id="send" name="prompt" data-action="copy-code" style="color: red">'
        "Plain words.</p>\n"
    )


NORMAL = """# A heading

## A smaller one

Some *emphasis*, **strength**, ~~a mistake~~ and `inline code`.

> A quotation.

- one
- two

3. three
4. four

- [x] done
- [ ] to do

| left | right |
|:-----|------:|
| a    | 1     |

```python
def greet(name):
    return f"Hello {name}"
```

A [link](https://example.com/docs "the docs").

---
"""


def new_share_page(page: Page, chat: ChatPage) -> str:
    """A share link of the open conversation, made through the API as the page makes it."""
    csrf = next(c["value"] for c in page.context.cookies() if c["name"] == "csrftoken")
    response = page.request.post(
        f"/api/conversations/{chat.conversation_id()}/shares",
        data={},
        headers={"X-CSRFToken": csrf, "Origin": page.url.split("/?")[0].rstrip("/")},
    )
    assert response.status == HTTPStatus.CREATED, response.text()
    return str(response.json()["url"])


def assert_only_markdown(content: Locator) -> None:
    expect(content.locator(REFUSED)).to_have_count(0)
    expect(content).to_contain_text("Plain words.")


def test_html_that_markdown_does_not_write_never_reaches_the_page(
    page: Page, image_host: HitRecorder
) -> None:
    requests: list[str] = []

    def record(request: Request) -> None:
        requests.append(request.url)

    page.on("request", record)
    chat = ChatPage(page)
    chat.sign_up()
    text = hostile(image_host.origin)

    reply = chat.ask(f"Be sneaky\n{directive(text=text, tokens=30, interval_ms=20)}")

    content = reply.locator(".content")
    assert_only_markdown(content)
    # The page's own elements are still the only ones with their ids.
    expect(page.locator("[id=send]")).to_have_count(1)
    chat.reload()
    assert_only_markdown(chat.replies.first.locator(".content"))

    # A share link renders the same text with the same sanitiser.
    visitor = page.context.new_page()
    visitor.on("request", record)
    visitor.goto(new_share_page(page, chat))
    expect(visitor.locator("body")).to_have_attribute("data-ready", "1")
    assert_only_markdown(visitor.locator(".shared-assistant [data-markdown]"))

    assert image_host.hits == []
    assert [url for url in requests if url.startswith(image_host.origin)] == []


def test_markdown_still_renders_in_full(page: Page) -> None:
    chat = ChatPage(page)
    chat.sign_up()

    reply = chat.ask(f"Show me markdown\n{directive(text=NORMAL, reasoning='Let me think.')}")

    content = reply.locator(".content")
    expect(content.locator("h1")).to_have_text("A heading")
    expect(content.locator("h2")).to_have_text("A smaller one")
    expect(content.locator("em")).to_have_text("emphasis")
    expect(content.locator("strong")).to_have_text("strength")
    expect(content.locator("del")).to_have_text("a mistake")
    expect(content.locator("p > code")).to_have_text("inline code")
    expect(content.locator("blockquote")).to_contain_text("A quotation.")
    expect(content.locator("ul").first.locator("li")).to_have_text(["one", "two"])
    expect(content.locator("ol")).to_have_attribute("start", "3")
    expect(content.locator("ol li")).to_have_text(["three", "four"])
    # Task list boxes stay visible, as text.
    expect(content.locator("ul").nth(1).locator("li")).to_have_text(["☑ done", "☐ to do"])
    expect(content.locator("th")).to_have_text(["left", "right"])
    expect(content.locator("td").last).to_have_attribute("align", "right")
    # The code block: highlighted, labelled, with its copy button (added after sanitising).
    block = content.locator(".code-block")
    expect(block.locator(".code-lang")).to_have_text("python")
    expect(block.locator("code.language-python .hljs-keyword").first).to_have_text("def")
    expect(block.get_by_role("button", name="Copy code")).to_be_visible()
    link = content.get_by_role("link", name="link")
    expect(link).to_have_attribute("href", "https://example.com/docs")
    expect(link).to_have_attribute("title", "the docs")
    expect(link).to_have_attribute("target", "_blank")
    expect(content.locator("hr")).to_have_count(1)
    # The thinking block is the page's own, beside the sanitised content.
    expect(reply.locator(".thinking")).to_be_visible()
    expect(reply.locator(".thinking-text")).to_have_text("Let me think.")
