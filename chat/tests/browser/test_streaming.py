"""Streaming in the browser: replies grow token by token, survive a reload and a dropped
connection whole, stop on request, and show in every tab watching the conversation."""

from __future__ import annotations

import json
import re

import pytest
from playwright.sync_api import BrowserContext, Page, WebSocketRoute, expect

from chat.tests.browser.conftest import MAX_MESSAGE_CHARS
from chat.tests.browser.pages import ChatPage, directive, eventually, words

pytestmark = pytest.mark.browser

SOCKET_URL = re.compile(r"/ws/chat/$")


def test_a_reply_grows_in_several_steps_before_it_is_done(page: Page) -> None:
    chat = ChatPage(page)
    chat.sign_up()
    # Every change to the thread: the reply's status and the length of its text at that moment.
    page.evaluate(
        """() => {
          window.growth = [];
          const thread = document.getElementById("thread");
          new MutationObserver(() => {
            const reply = thread.querySelector(".reply");
            if (reply) {
              window.growth.push([reply.dataset.status,
                                  reply.querySelector(".content").textContent.length]);
            }
          }).observe(thread, {subtree: true, childList: true, characterData: true,
                              attributes: true});
        }"""
    )
    text = words(20)
    reply = chat.ask(f"Count slowly {directive(text=text, tokens=20, interval_ms=60)}")

    growth = page.evaluate("window.growth")
    while_streaming = [length for status, length in growth if status == "streaming" and length]
    assert len(set(while_streaming)) >= 3, growth
    assert while_streaming == sorted(while_streaming), "the text never shrinks"
    assert while_streaming[0] < len(text) / 2, "it did not arrive all at once"
    assert chat.text_of(reply) == text


def test_a_reload_mid_reply_finishes_it_complete_and_not_doubled(page: Page) -> None:
    chat = ChatPage(page)
    chat.sign_up()
    text = words(40)
    chat.send(f"A long answer {directive(text=text, tokens=40, interval_ms=70)}")
    reply = chat.replies.first
    chat.wait_seq(reply, 5)

    chat.reload()

    reply = chat.replies.first
    expect(reply).to_have_attribute("data-status", "streaming")
    expect(reply).to_have_attribute("data-status", "complete")
    assert chat.text_of(reply) == text
    expect(chat.replies).to_have_count(1)
    expect(chat.questions).to_have_count(1)


def test_stop_keeps_the_partial_reply_and_it_is_still_there_after_a_reload(page: Page) -> None:
    chat = ChatPage(page)
    chat.sign_up()
    text = words(60)
    chat.send(f"Stop me {directive(text=text, tokens=60, interval_ms=100)}")
    reply = chat.replies.first
    chat.wait_seq(reply, 4)
    expect(page.get_by_role("button", name="Stop the reply (Esc)")).to_be_visible()

    page.keyboard.press("Escape")

    expect(reply).to_have_attribute("data-status", "stopped")
    partial = chat.text_of(reply)
    assert partial and text.startswith(partial) and len(partial) < len(text)
    expect(reply.locator(".meta-status")).to_have_text("Stopped")
    # A stopped reply's usage is estimated from its text.
    expect(reply.locator(".meta-tokens")).to_contain_text("≈")
    expect(reply.get_by_role("button", name="Retry")).to_be_visible()
    expect(page.get_by_role("button", name="Send")).to_be_visible()

    chat.reload()

    reply = chat.replies.first
    expect(reply).to_have_attribute("data-status", "stopped")
    assert chat.text_of(reply) == partial
    expect(reply.locator(".meta-status")).to_have_text("Stopped")


def test_the_stop_button_stops_a_reply_too(page: Page) -> None:
    chat = ChatPage(page)
    chat.sign_up()
    chat.send(f"Stop me {directive(tokens=60, interval_ms=100)}")
    reply = chat.replies.first
    chat.wait_seq(reply, 2)

    page.get_by_role("button", name="Stop the reply (Esc)").click()

    expect(reply).to_have_attribute("data-status", "stopped")


def test_a_second_tab_shows_the_same_stream(page: Page, context: BrowserContext) -> None:
    chat = ChatPage(page)
    chat.sign_up()
    chat.ask(f"Hello {directive(text='Hi.')}")
    other = ChatPage(context.new_page())
    other.page.goto(page.url)
    other.wait_ready()
    expect(other.replies).to_have_count(1)

    text = words(30)
    chat.send(f"Both tabs see this {directive(text=text, tokens=30, interval_ms=60)}")

    expect(other.questions.nth(1)).to_contain_text("Both tabs see this")
    reply = other.replies.nth(1)
    expect(reply).to_have_attribute("data-status", "streaming")
    expect(reply).to_have_attribute("data-status", "complete")
    assert other.text_of(reply) == text
    expect(other.replies).to_have_count(2)


def test_the_socket_reconnects_and_the_reply_continues_without_a_gap(page: Page) -> None:
    routes: list[tuple[WebSocketRoute, WebSocketRoute]] = []

    def route(socket: WebSocketRoute) -> None:
        routes.append((socket, socket.connect_to_server()))

    page.route_web_socket(SOCKET_URL, route)
    chat = ChatPage(page)
    chat.sign_up()
    page.evaluate(
        """() => {
          window.connectionStates = [];
          const indicator = document.getElementById("connection");
          new MutationObserver(() => window.connectionStates.push(indicator.dataset.connection))
            .observe(indicator, {attributes: true, attributeFilter: ["data-connection"]});
        }"""
    )
    text = words(40)
    chat.send(f"Keep going {directive(text=text, tokens=30, interval_ms=70)}")
    reply = chat.replies.first
    chat.wait_seq(reply, 5)

    # The network drops: both ends of the connection go away.
    page_side, server_side = routes[-1]
    server_side.close(code=4000, reason="dropped by the test")
    page_side.close(code=4000, reason="dropped by the test")

    expect(reply).to_have_attribute("data-status", "complete")
    assert chat.text_of(reply) == text
    assert len(routes) == 2
    states = page.evaluate("window.connectionStates")
    assert states[:1] == ["reconnecting"] and states[-1] == "open", states
    expect(chat.connection).to_have_text("Connected")


def test_a_send_whose_answer_was_lost_is_resent_once_with_the_same_request_id(
    page: Page,
) -> None:
    sent: list[str] = []
    dropped: list[bool] = []

    def route(socket: WebSocketRoute) -> None:
        server = socket.connect_to_server()

        def to_server(message: str | bytes) -> None:
            frame = json.loads(message)
            if frame.get("type") == "send":
                sent.append(frame["request_id"])
            server.send(message)

        def to_page(message: str | bytes) -> None:
            frame = json.loads(message)
            if frame.get("type") == "accepted" and not dropped:
                # The connection dies after the server accepted, before the page heard it.
                dropped.append(True)
                server.close(code=4000)
                socket.close(code=4000)
                return
            socket.send(message)

        socket.on_message(to_server)
        server.on_message(to_page)

    page.route_web_socket(SOCKET_URL, route)
    chat = ChatPage(page)
    chat.sign_up()

    reply = chat.ask(f"Only once {directive(text='Answered once.')}")

    assert chat.text_of(reply) == "Answered once."
    assert len(sent) == 2 and sent[0] == sent[1]
    chat.reload()
    expect(chat.questions).to_have_count(1)
    expect(chat.replies).to_have_count(1)
    expect(chat.sidebar_links).to_have_count(1)


def test_a_socket_refused_for_want_of_a_login_sends_the_page_to_log_in(
    page: Page, context: BrowserContext
) -> None:
    routes: list[tuple[WebSocketRoute, WebSocketRoute]] = []
    page.route_web_socket(SOCKET_URL, lambda ws: routes.append((ws, ws.connect_to_server())))
    chat = ChatPage(page)
    chat.sign_up()

    # Logged out elsewhere; then the connection drops and comes back without a session.
    context.clear_cookies()
    page_side, server_side = routes[-1]
    server_side.close(code=4000)
    page_side.close(code=4000)

    expect(page).to_have_url(re.compile(r"/accounts/login/\?next="))


def test_a_refused_message_is_explained_beside_the_composer_and_the_draft_kept(
    page: Page,
) -> None:
    chat = ChatPage(page)
    chat.sign_up()
    draft = "x" * (MAX_MESSAGE_CHARS + 1)

    chat.send(draft)

    expect(chat.composer_error).to_contain_text("the limit is 5,000")
    expect(chat.prompt).to_have_value(draft)
    expect(chat.questions).to_have_count(0)
    expect(page.get_by_role("button", name="Send")).to_be_enabled()


def test_a_message_over_the_limit_is_refused_by_the_page_and_never_sent(page: Page) -> None:
    sent: list[str] = []

    def route(socket: WebSocketRoute) -> None:
        server = socket.connect_to_server()

        def to_server(message: str | bytes) -> None:
            frame = json.loads(message)
            if frame.get("type") == "send":
                sent.append(frame["content"])
            server.send(message)

        socket.on_message(to_server)

    page.route_web_socket(SOCKET_URL, route)
    chat = ChatPage(page)
    chat.sign_up()
    draft = "é" * (MAX_MESSAGE_CHARS + 1)

    chat.send(draft)

    expect(chat.composer_error).to_have_text(
        "The message is 5,001 characters long; the limit is 5,000."
    )
    expect(chat.prompt).to_have_value(draft)
    expect(chat.questions).to_have_count(0)
    expect(page.get_by_role("button", name="Send")).to_be_enabled()
    # Characters as the server counts them: at the limit in emoji (twice as many UTF-16 units),
    # the message goes. It is the first frame the server sees: the refused one never went.
    scripted = directive(text="Fine.")
    at_limit = "🙂" * (MAX_MESSAGE_CHARS - len(scripted)) + scripted
    chat.ask(at_limit)
    expect(chat.composer_error).to_be_hidden()
    assert len(sent) == 1, "the refused message was sent"
    assert sent[0] == at_limit


def test_a_failed_reply_says_why_and_retry_asks_again(page: Page) -> None:
    chat = ChatPage(page)
    chat.sign_up()

    reply = chat.ask(f"Break {directive(mid='error_line', after=3)}", status="error")

    expect(reply.locator(".meta-status")).to_have_text("Failed")
    expect(reply.locator(".reply-error")).to_be_visible()
    expect(reply.locator(".reply-error")).not_to_be_empty()
    assert chat.text_of(reply), "the partial text is kept"
    first_id = reply.get_attribute("data-id")

    reply.get_by_role("button", name="Retry").click()

    retried = chat.replies.first
    expect(retried).not_to_have_attribute("data-id", first_id or "")
    expect(retried).to_have_attribute("data-status", "error")
    expect(chat.replies).to_have_count(1)


def test_the_page_acknowledges_what_it_has_read(page: Page) -> None:
    """Flow control (docs/protocol.md, `ack`): the server closes a socket that stops reading."""
    received: list[int] = []
    acks: list[int] = []

    def route(socket: WebSocketRoute) -> None:
        server = socket.connect_to_server()

        def to_server(message: str | bytes) -> None:
            frame = json.loads(message)
            if frame.get("type") == "ack":
                acks.append(frame["received"])
            server.send(message)

        def to_page(message: str | bytes) -> None:
            received.append(len(message))
            socket.send(message)

        socket.on_message(to_server)
        server.on_message(to_page)

    page.route_web_socket(SOCKET_URL, route)
    chat = ChatPage(page)
    chat.sign_up()
    chat.ask(f"Acknowledge {directive(tokens=30, interval_ms=20)}")

    # Within a second of the last frame, an ack counts every character read (the stand-in's
    # text has emoji: characters, not UTF-16 units).
    eventually(page, lambda: bool(acks) and acks[-1] == sum(received))
    assert acks == sorted(acks)
