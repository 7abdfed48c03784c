"""The power features in the browser, end to end and with their refusals: images for vision
models, versions of a reply, export and import, share links and presets.

These tests use the server whose stand-in runs in this process, so they can check what reached
the model (an image as a data URI, a preset's model and system prompt).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from http import HTTPStatus
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Route, WebSocket, expect

from chat.testing.fakeupstream import LogEntry
from chat.testing.fakeupstream.script import message_text
from chat.tests.browser.conftest import (
    ADMIN_PASSWORD,
    ADMIN_USERNAME,
    DEFAULT_SCRIPT,
    SCRIPTED_MAX_IMAGE_BYTES,
    ScriptedServer,
    open_context,
)
from chat.tests.browser.pages import ChatPage, directive, png_file

pytestmark = pytest.mark.browser

VISION_MODEL = "Qwen2.5 VL 32B"


@pytest.fixture
def context(browser: Browser, scripted_server: ScriptedServer) -> Iterator[BrowserContext]:
    context = open_context(browser, scripted_server.url)
    yield context
    context.close()


def request_with(server: ScriptedServer, text: str) -> LogEntry:
    """The chat request the stand-in received whose last question starts with `text` (a title
    request quotes the question after "Question: ", so it does not count)."""
    for entry in reversed(server.upstream.chat_log()):
        messages = (entry.body or {}).get("messages") or []
        questions = [m for m in messages if m.get("role") == "user"]
        if questions and message_text(questions[-1]).startswith(text):
            return entry
    raise AssertionError(f"the stand-in received no question starting with {text!r}")


def conversations_of(page: Page) -> list[dict[str, Any]]:
    response = page.request.get("/api/conversations")
    assert response.status == HTTPStatus.OK
    return response.json()["conversations"]


# Images -----------------------------------------------------------------------------------------


def test_an_image_reaches_a_vision_model_and_shows_in_the_history(
    page: Page, scripted_server: ScriptedServer
) -> None:
    chat = ChatPage(page)
    chat.sign_up()
    attach = page.get_by_role("button", name="Attach images")
    # A new user's model reads no images: attaching says why instead of opening a chooser (the
    # button stays focusable, so a keyboard user can ask too).
    expect(attach).to_have_attribute("aria-disabled", "true")
    attach.focus()
    page.keyboard.press("Enter")
    expect(chat.composer_error).to_contain_text("cannot read images")
    chat.pick_model(VISION_MODEL)
    expect(attach).to_have_attribute("aria-disabled", "false")

    chat.attach(png_file("red.png", 80, 60))
    expect(chat.attachments).to_have_attribute("data-state", "ready")
    expect(chat.attachments.locator("img")).to_have_attribute("alt", "red.png")
    reply = chat.ask(f"What colour is this? {directive(text='It is red.', reasoning=None)}")

    assert chat.text_of(reply) == "It is red."
    expect(chat.attachments).to_have_count(0)
    expect(chat.questions.first.locator(".thumb img")).to_have_count(1)
    question = request_with(scripted_server, "What colour is this?").body["messages"][-1]
    kinds = [part["type"] for part in question["content"]]
    assert kinds == ["text", "image_url"]
    assert question["content"][1]["image_url"]["url"].startswith("data:image/png;base64,")

    chat.reload()
    thumb = chat.questions.first.locator(".thumb")
    expect(thumb.locator("img")).to_have_attribute("src", re.compile(r"^/api/images/\d+$"))
    # Loaded, not only referenced: the page's policy lets this site's images in.
    page.wait_for_function(
        "() => document.querySelector('#thread .thumb img')?.naturalWidth === 80"
    )
    thumb.click()
    viewer = page.get_by_role("dialog", name="Attached image")
    expect(viewer).to_be_visible()
    src = thumb.locator("img").get_attribute("src") or ""
    expect(viewer.locator("img")).to_have_attribute("src", re.compile(f"{re.escape(src)}$"))
    page.keyboard.press("Escape")
    expect(viewer).to_be_hidden()
    expect(thumb).to_be_focused()


def test_images_for_a_model_without_vision_are_refused_and_nothing_is_sent(
    page: Page, scripted_server: ScriptedServer
) -> None:
    # As if an admin changed Gemma 3 12B after this page loaded: the page believes it has vision,
    # so only the server can refuse it.
    def stale_catalogue(route: Route) -> None:
        data = route.fetch().json()
        for model in data["models"]:
            if model["name"] == "Gemma 3 12B":
                model["capabilities"] = [*model["capabilities"], "vision"]
        route.fulfill(json=data)

    page.route("**/api/models", stale_catalogue)
    chat = ChatPage(page)
    chat.sign_up()
    chat.pick_model(VISION_MODEL)
    chat.attach(png_file("cat.png"))
    expect(chat.attachments).to_have_attribute("data-state", "ready")
    requests = len(scripted_server.upstream.chat_log())

    chat.pick_model("Mistral Nemo")
    expect(page.get_by_role("button", name="Attach images")).to_have_attribute(
        "aria-disabled", "true"
    )
    chat.send("Describe the cat")

    expect(chat.composer_error).to_contain_text("Mistral Nemo cannot read images.")
    expect(chat.composer_error).to_contain_text("remove the images")
    expect(chat.questions).to_have_count(0)
    expect(chat.prompt).to_have_value("Describe the cat")
    expect(chat.attachments).to_have_count(1)

    # The server refuses too, with its own message; the page gives back the draft and images.
    chat.pick_model("Gemma 3 12B")
    chat.prompt.press("Enter")

    expect(chat.composer_error).to_have_text(
        "Gemma 3 12B cannot read images. Pick a model marked vision, or remove the images."
    )
    expect(chat.questions).to_have_count(0)
    expect(chat.prompt).to_have_value("Describe the cat")
    expect(chat.attachments).to_have_attribute("data-state", "ready")
    assert conversations_of(page) == []
    assert len(scripted_server.upstream.chat_log()) == requests


def test_an_oversized_or_unreadable_file_is_refused_with_a_clear_message(page: Page) -> None:
    chat = ChatPage(page)
    chat.sign_up()
    chat.pick_model(VISION_MODEL)

    # The server this test runs against limits images to 1 MB (the default is 5 MB); the page
    # checks the limit the server states.
    huge = png_file("huge.png")
    huge["buffer"] += b"\0" * (SCRIPTED_MAX_IMAGE_BYTES // 2 * 3)
    chat.attach(huge)
    expect(chat.composer_error).to_have_text(
        "“huge.png” is 1.5 MB; images are limited to 1 MB each."
    )
    expect(chat.attachments).to_have_count(0)

    chat.attach({"name": "notes.txt", "mimeType": "text/plain", "buffer": b"hello"})
    expect(chat.composer_error).to_have_text("“notes.txt” is not a PNG, JPEG, WebP or GIF image.")

    # Only the server can tell a PNG that is not one; its reason is shown.
    chat.attach({"name": "fake.png", "mimeType": "image/png", "buffer": b"not an image at all"})
    expect(chat.composer_error).to_contain_text("“fake.png”: This file is not an image we can read")
    expect(chat.attachments).to_have_count(0)

    # Pasted and dropped images join the tray like chosen ones; each can be removed.
    page.evaluate(PASTE_AND_DROP, base64.b64encode(png_file()["buffer"]).decode())
    thumbs = chat.attachments.locator("img")
    expect(thumbs).to_have_count(2)
    expect(thumbs.nth(0)).to_have_attribute("alt", "pasted.png")
    expect(thumbs.nth(1)).to_have_attribute("alt", "dropped.png")
    page.get_by_role("button", name="Remove pasted.png").click()
    expect(chat.attachments.locator("img")).to_have_attribute("alt", "dropped.png")
    expect(page.get_by_role("button", name="Remove dropped.png")).to_be_focused()


PASTE_AND_DROP = """(png) => {
  const bytes = Uint8Array.from(atob(png), (c) => c.charCodeAt(0));
  const files = (name) => {
    const data = new DataTransfer();
    data.items.add(new File([bytes], name, { type: "image/png" }));
    return data;
  };
  const init = { bubbles: true, cancelable: true };
  document.getElementById("prompt").dispatchEvent(
    new ClipboardEvent("paste", { ...init, clipboardData: files("pasted.png") }));
  document.getElementById("composer-box").dispatchEvent(
    new DragEvent("drop", { ...init, dataTransfer: files("dropped.png") }));
}"""


# Versions ---------------------------------------------------------------------------------------


def test_flipping_to_an_earlier_reply_continues_the_conversation_from_it(
    page: Page, scripted_server: ScriptedServer
) -> None:
    upstream = scripted_server.upstream
    chat = ChatPage(page)
    chat.sign_up()
    chat.pick_model("Mistral Nemo")
    # Questions without a directive get the default reply: set it for each version.
    try:
        upstream.set_default_script(**DEFAULT_SCRIPT, text="Red.")
        reply = chat.ask("Name a colour")
        for colour in ("Green.", "Blue."):
            upstream.set_default_script(**DEFAULT_SCRIPT, text=colour)
            old = reply.get_attribute("data-id") or ""
            reply.get_by_role("button", name="Regenerate").click()
            expect(reply).not_to_have_attribute("data-id", old)
            expect(reply).to_have_attribute("data-status", "complete")
            expect(reply.locator(".versions")).to_be_visible()
        versions = reply.locator(".versions")
        expect(versions.locator(".version-label")).to_have_text("3/3")
        assert chat.text_of(reply) == "Blue."

        reply.get_by_role("button", name="Previous version").click()
        expect(versions.locator(".version-label")).to_have_text("2/3")
        assert chat.text_of(reply) == "Green."
        reply.get_by_role("button", name="Previous version").click()
        expect(versions.locator(".version-label")).to_have_text("1/3")
        assert chat.text_of(reply) == "Red."
        expect(reply.get_by_role("button", name="Previous version")).to_be_disabled()
        # The keyboard user stays on the control they used.
        expect(reply.get_by_role("button", name="Next version")).to_be_focused()

        upstream.set_default_script(**DEFAULT_SCRIPT, text="Yellow.")
        chat.ask("Name another one")

        history = request_with(scripted_server, "Name another one").body["messages"]
        assert [(m["role"], m["content"]) for m in history] == [
            ("user", "Name a colour"),
            ("assistant", "Red."),
            ("user", "Name another one"),
        ]
        chat.reload()
        expect(chat.replies).to_have_count(2)
        first = chat.replies.first
        assert chat.text_of(first) == "Red."
        expect(first.locator(".version-label")).to_have_text("1/3")
        assert chat.text_of(chat.replies.nth(1)) == "Yellow."
        expect(chat.replies.nth(1).locator(".versions")).to_be_hidden()

        # An edited question is a version too.
        upstream.set_default_script(**DEFAULT_SCRIPT, text="Purple.")
        question = chat.questions.nth(1)
        question.hover()
        question.get_by_role("button", name="Edit").click()
        page.get_by_label("Edit your message").fill("Name a dark one")
        page.get_by_label("Edit your message").press("Enter")
        expect(question.locator(".version-label")).to_have_text("2/2")
        assert chat.text_of(chat.replies.nth(1)) == "Purple."
    finally:
        upstream.set_default_script(**DEFAULT_SCRIPT)

    question.get_by_role("button", name="Previous version").click()
    expect(question.locator(".version-label")).to_have_text("1/2")
    expect(question.locator(".user-text")).to_have_text("Name another one")
    expect(chat.replies.nth(1)).to_contain_text("Yellow.")


# Export and import ------------------------------------------------------------------------------


def test_a_conversation_downloads_as_markdown_and_as_json(page: Page) -> None:
    chat = ChatPage(page)
    chat.sign_up()
    chat.ask(f"Export me\n{directive(text='Exported **answer**.')}")
    conversation = chat.conversation_id()

    menu = chat.open_conversation_menu()
    with page.expect_download() as markdown_download:
        menu.get_by_role("link", name="Export as Markdown").click()
    expect(menu).to_be_hidden()
    chat.open_conversation_menu()
    with page.expect_download() as json_download:
        menu.get_by_role("link", name="Export as JSON").click()

    markdown = markdown_download.value
    assert markdown.suggested_filename == f"conversation-{conversation}.md"
    text = Path(markdown.path()).read_text()
    assert "## You (" in text
    assert "Export me" in text
    assert "Exported **answer**." in text
    exported = json_download.value
    assert exported.suggested_filename == f"conversation-{conversation}.json"
    data = json.loads(Path(exported.path()).read_text())
    assert data["format"] == "chutes-chat/1"
    [record] = data["conversations"]
    assert [(m["role"], m["content"].split("\n")[0]) for m in record["messages"]] == [
        ("user", "Export me"),
        ("assistant", "Exported **answer**."),
    ]
    assert record["messages"][1]["cost"] is not None


def test_export_all_then_import_into_another_account_all_or_nothing(
    page: Page, browser: Browser, scripted_server: ScriptedServer, tmp_path: Path
) -> None:
    chat = ChatPage(page)
    chat.sign_up()
    chat.ask(f"About owls\n{directive(text='Owls hunt at night.')}")
    expect(chat.sidebar_link("Owls hunt at night")).to_be_visible()
    chat.new_chat()
    chat.ask(f"About bats\n{directive(text='Bats use echoes.')}")
    expect(chat.sidebar_link("Bats use echoes")).to_be_visible()
    with page.expect_download() as download:
        page.get_by_role("link", name="Export all").click()
    export = tmp_path / "export.json"
    download.value.save_as(export)
    assert download.value.suggested_filename.startswith("chutes-chat-")

    other_context = open_context(browser, scripted_server.url)
    try:
        other = ChatPage(other_context.new_page())
        other.sign_up()
        status = other.page.locator("#transfer-status")

        # A file with one bad message is refused whole, with the server's reason.
        bad = json.loads(export.read_text())
        bad["conversations"][1]["messages"][0]["role"] = "wizard"
        with other.page.expect_file_chooser() as chooser:
            other.page.get_by_role("button", name="Import…").click()
        chooser.value.set_files(
            {"name": "bad.json", "mimeType": "application/json", "buffer": json.dumps(bad).encode()}
        )
        expect(status).to_have_text(
            "Nothing was imported. conversation 2, message 1 role: must be user or assistant."
        )
        expect(status).to_have_attribute("data-state", "error")
        expect(other.page.locator("#history-empty")).to_be_visible()
        assert conversations_of(other.page) == []

        with other.page.expect_file_chooser() as chooser:
            other.page.get_by_role("button", name="Import…").click()
        chooser.value.set_files(export)

        expect(status).to_have_text("Imported 2 conversations.")
        expect(status).to_have_attribute("data-state", "ok")
        expect(other.sidebar_links).to_have_count(2)
        other.sidebar_link("Owls hunt at night").click()
        expect(other.questions.first).to_contain_text("About owls")
        assert other.text_of(other.replies.first) == "Owls hunt at night."
    finally:
        other_context.close()


# Share links -----------------------------------------------------------------------------------


def test_a_share_link_shows_a_private_snapshot_to_anyone_until_revoked(
    page: Page, browser: Browser, scripted_server: ScriptedServer
) -> None:
    chat = ChatPage(page)
    chat.sign_up()
    page.get_by_role("button", name="Conversation settings").click()
    page.get_by_role("textbox", name="System prompt").fill("Secret system instructions.")
    page.get_by_role("button", name="Save settings").click()
    expect(page.locator("#settings-status")).to_contain_text("Saved")
    page.get_by_role("button", name="Close", exact=True).click()
    chat.pick_model("DeepSeek R1 0528")
    reasoning = "Private chain of thought."
    # Scripted without a directive, so the question does not quote the reasoning.
    upstream = scripted_server.upstream
    try:
        upstream.set_default_script(
            **DEFAULT_SCRIPT, text="A **shared** answer.", reasoning=reasoning
        )
        chat.ask("Share this")
    finally:
        upstream.set_default_script(**DEFAULT_SCRIPT)

    chat.open_conversation_menu().get_by_role("button", name="Share…").click()
    dialog = page.get_by_role("dialog", name="Share this conversation")
    expect(dialog).to_be_visible()
    for option in ("Reasoning", "Costs", "System prompt"):
        expect(dialog.get_by_label(option)).not_to_be_checked()
    expect(dialog.get_by_label("Reasoning")).to_be_focused()
    dialog.get_by_role("button", name="Create link").click()
    link = dialog.get_by_label("Link", exact=True)
    expect(link).to_have_value(re.compile(r"/s/[\w-]+$"))
    url = link.input_value()
    dialog.get_by_role("button", name="Copy link").click()
    assert page.evaluate("navigator.clipboard.readText()") == url
    # A second link that opts in to everything.
    for option in ("Reasoning", "Costs", "System prompt"):
        dialog.get_by_label(option).check()
    dialog.get_by_role("button", name="Create link").click()
    expect(dialog.locator(".share-item")).to_have_count(2)
    full_url = link.input_value()
    assert full_url != url

    visitor_context = open_context(browser, scripted_server.url)
    try:
        visitor = visitor_context.new_page()
        response = visitor.goto(url)
        assert response is not None and response.status == HTTPStatus.OK
        expect(visitor.locator("body")).to_have_attribute("data-ready", "1")
        expect(visitor.locator(".shared-user")).to_contain_text("Share this")
        # Markdown, rendered through the sanitiser.
        expect(visitor.locator(".shared-assistant strong")).to_have_text("shared")
        page_text = visitor.locator("body").inner_text()
        assert reasoning not in page_text
        assert "Secret system instructions." not in page_text
        assert "Cost:" not in page_text
        visitor.goto(full_url)
        expect(visitor.locator(".shared-system")).to_contain_text("Secret system instructions.")
        expect(visitor.locator(".shared-thinking")).to_contain_text(reasoning)
        expect(visitor.locator(".shared-cost")).to_contain_text("$")

        item = dialog.locator(".share-item", has=page.locator(f'a[href="{url}"]'))
        item.get_by_role("button", name="Revoke").click()
        expect(dialog.locator(".share-item")).to_have_count(1)
        expect(dialog.locator("#share-status")).to_contain_text("Link revoked")
        gone = visitor.goto(url)
        assert gone is not None and gone.status == HTTPStatus.NOT_FOUND
        still = visitor.goto(full_url)
        assert still is not None and still.status == HTTPStatus.OK
    finally:
        visitor_context.close()
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    expect(page.get_by_role("button", name="Share or export this conversation")).to_be_focused()


# Presets ----------------------------------------------------------------------------------------


def sent_frames(page: Page) -> list[dict[str, Any]]:
    """Every frame the page sends on its websocket, from now on."""
    frames: list[dict[str, Any]] = []

    def watch(socket: WebSocket) -> None:
        socket.on("framesent", lambda payload: frames.append(json.loads(payload)))

    page.on("websocket", watch)
    return frames


def test_a_preset_saved_from_the_settings_starts_a_chat_with_its_model_and_prompt(
    page: Page, scripted_server: ScriptedServer
) -> None:
    frames = sent_frames(page)
    chat = ChatPage(page)
    chat.sign_up()
    chat.pick_model("Mistral Nemo")
    page.get_by_role("button", name="Conversation settings").click()
    page.get_by_role("textbox", name="System prompt").fill("Answer like a pirate.")
    page.get_by_label("Temperature").fill("0.4")
    page.get_by_role("button", name="Save as preset…").click()

    dialog = page.get_by_role("dialog", name="Presets")
    expect(dialog.get_by_label("Name", exact=True)).to_be_focused()
    expect(dialog.locator("#preset-save-summary")).to_have_text(
        "Saves: Mistral Nemo · temperature 0.4 · “Answer like a pirate.”"
    )
    # The user's own presets (presets an admin published, from other tests, are listed too).
    own_presets = dialog.locator(".preset:has([data-action=rename]) .preset-name")
    dialog.get_by_label("Name", exact=True).fill("Pirate")
    dialog.get_by_role("button", name="Save preset").click()
    expect(own_presets).to_have_text(["Pirate"])
    dialog.get_by_label("Name", exact=True).fill("Scratch")
    dialog.get_by_label("Name", exact=True).press("Enter")
    expect(own_presets).to_have_text(["Pirate", "Scratch"])

    dialog.get_by_role("button", name="Rename “Pirate”").click()
    dialog.get_by_label("New name for “Pirate”").fill("Pirate talk")
    dialog.get_by_label("New name for “Pirate”").press("Enter")
    expect(own_presets).to_have_text(["Pirate talk", "Scratch"])
    dialog.get_by_role("button", name="Delete “Scratch”").click()
    expect(own_presets).to_have_text(["Pirate talk"])
    dialog.get_by_role("button", name="Close", exact=True).click()
    expect(dialog).to_be_hidden()

    # A new chat forgets the settings; the preset brings them back.
    page.get_by_role("button", name="Close", exact=True).click()
    chat.new_chat()
    expect(page.locator("#model-name")).to_have_text("DeepSeek TNG R1T2 Chimera")
    chat.open_presets().get_by_role("button", name="Start a chat from “Pirate talk”").click()
    expect(dialog).to_be_hidden()
    note = page.locator("#preset-note")
    expect(note).to_contain_text("Starting from the preset “Pirate talk”")
    expect(page.locator("#model-name")).to_have_text("Mistral Nemo")
    expect(chat.prompt).to_be_focused()
    page.get_by_role("button", name="Conversation settings").click()
    expect(page.get_by_role("textbox", name="System prompt")).to_have_value("Answer like a pirate.")
    expect(page.get_by_label("Temperature")).to_have_value("0.4")
    page.get_by_role("button", name="Close", exact=True).click()

    chat.ask(f"Ahoy there\n{directive(text='Arr.', reasoning=None)}")

    expect(note).to_be_hidden()
    body = request_with(scripted_server, "Ahoy there").body
    assert body["model"] == "unsloth/Mistral-Nemo-Instruct-2407"
    assert body["messages"][0] == {"role": "system", "content": "Answer like a pirate."}
    assert body["temperature"] == 0.4
    [send] = [frame for frame in frames if frame.get("type") == "send"]
    assert isinstance(send["preset"], int)
    chat.reload()
    expect(page.locator("#model-name")).to_have_text("Mistral Nemo")
    page.get_by_role("button", name="Conversation settings").click()
    expect(page.get_by_role("textbox", name="System prompt")).to_have_value("Answer like a pirate.")


def test_presets_are_private_and_published_ones_are_shared_read_only(
    page: Page, browser: Browser, scripted_server: ScriptedServer
) -> None:
    owner = ChatPage(page)
    owner.sign_up()
    dialog = owner.open_presets()
    dialog.get_by_label("Name", exact=True).fill("Owner's secret preset")
    dialog.get_by_role("button", name="Save preset").click()
    expect(dialog.locator(".preset-name")).to_contain_text(["Owner's secret preset"])

    admin_context = open_context(browser, scripted_server.url)
    other_context = open_context(browser, scripted_server.url)
    try:
        admin = admin_context.new_page()
        ChatPage(admin).log_in(ADMIN_USERNAME, ADMIN_PASSWORD, next_url="/admin/chat/preset/add/")
        admin.get_by_label("Name").fill("House style")
        admin.get_by_label("Model").select_option(label=VISION_MODEL)
        admin.get_by_label("System prompt").fill("Be concise.")
        admin.get_by_role("button", name="Save", exact=True).click()
        expect(admin.locator(".messagelist")).to_contain_text("House style")

        other = ChatPage(other_context.new_page())
        other.sign_up()
        listed = other.open_presets()
        names = listed.locator(".preset-name")
        expect(names).to_contain_text(["House style"])
        expect(names.filter(has_text="Owner's secret preset")).to_have_count(0)
        published = listed.locator(
            ".preset", has=other.page.locator(".preset-name", has_text="House style")
        )
        expect(published.locator(".badge-published")).to_have_text("published")
        expect(published.get_by_role("button", name="Rename “House style”")).to_have_count(0)
        expect(published.get_by_role("button", name="Delete “House style”")).to_have_count(0)
        # Nor can it be changed through the API.
        preset_id = published.get_attribute("data-id")
        response = other.page.request.patch(
            f"/api/presets/{preset_id}",
            data={"name": "Mine now"},
            headers={"X-CSRFToken": csrf_token(other_context)},
        )
        assert response.status == HTTPStatus.FORBIDDEN

        published.get_by_role("button", name="Start a chat from “House style”").click()
        expect(other.page.locator("#model-name")).to_have_text(VISION_MODEL)
        expect(other.page.locator("#preset-note")).to_contain_text("“Be concise.”")
    finally:
        admin_context.close()
        other_context.close()


def csrf_token(context: BrowserContext) -> str:
    return next(c["value"] for c in context.cookies() if c["name"] == "csrftoken")
