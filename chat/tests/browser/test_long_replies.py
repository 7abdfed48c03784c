"""A reply longer than a websocket message may be (daphne refuses messages over its limit)
still resumes after a reload: its snapshot comes in pieces, and the page shows it whole."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from http import HTTPStatus

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from chat.testing.fakeupstream import FakeUpstream, running_in_thread
from chat.testing.fakeupstream.script import split_pieces
from chat.tests.browser.conftest import DEFAULT_SCRIPT, open_context
from chat.tests.browser.live import ROOT, UPSTREAM_TOKEN, LiveServer, start_live_server
from chat.tests.browser.pages import ChatPage, eventually, squash

pytestmark = pytest.mark.browser

# daphne's websocket messages are limited to 4 bytes x MAX_FRAME_CHARS: 1 MB here, about
# daphne's own default (1 MiB), which a server started without chutesweb.serve keeps.
MAX_FRAME_CHARS = 250_000
MODEL_ID = "unsloth/Mistral-Nemo-Instruct-2407"


def allow_long_replies(server: LiveServer) -> None:
    """Give the model room for replies of several hundred thousand tokens, as an admin can."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "chat.tests.browser.server_settings",
        "DATA_DIR": str(server.data_dir),
    }
    code = (
        "from chat.models import ChatModel; "
        f"ChatModel.objects.filter(model_id={MODEL_ID!r})"
        ".update(context_length=2_000_000, max_output_tokens=500_000)"
    )
    subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code], cwd=ROOT, env=env, check=True
    )


@pytest.fixture(scope="module")
def long_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[LiveServer, FakeUpstream]]:
    with running_in_thread(tokens=(UPSTREAM_TOKEN,), default_script=DEFAULT_SCRIPT) as upstream:
        server = start_live_server(
            tmp_path_factory.mktemp("long-replies"),
            upstream_url=upstream.url,
            extra_env={
                "MAX_FRAME_CHARS": str(MAX_FRAME_CHARS),
                "AUTO_TITLES": "false",
                "DEFAULT_MAX_TOKENS": "500000",
            },
        )
        try:
            allow_long_replies(server)
            yield server, upstream
        finally:
            server.stop()


@pytest.fixture
def context(
    browser: Browser, long_server: tuple[LiveServer, FakeUpstream]
) -> Iterator[BrowserContext]:
    context = open_context(browser, long_server[0].url)
    yield context
    context.close()


def test_a_reply_longer_than_a_websocket_message_resumes_after_a_reload(
    page: Page, long_server: tuple[LiveServer, FakeUpstream]
) -> None:
    _, upstream = long_server
    chat = ChatPage(page)
    chat.sign_up()
    chat.pick_model("Mistral Nemo")
    # 20 pieces of about 60,000 characters; the stand-in stops after 18 (1.08 MB) and keeps
    # the request open, so the reply is still streaming when the page comes back.
    text = "lorem ipsum dolor sit amet " * 44_440
    upstream.push_script(text=text, tokens=20, interval_ms=20, after=18, mid="stall")
    expected = "".join(split_pieces(text, 20)[:18])
    chat.send("A very long answer, please")
    reply = chat.replies.first
    # Everything the stand-in sends is on the page (deltas close together share a frame).
    eventually(page, lambda: chat.text_of(reply) == squash(expected), timeout=30)

    chat.reload()

    reply = chat.replies.first
    expect(reply).to_have_attribute("data-status", "streaming")
    eventually(page, lambda: chat.text_of(reply) == squash(expected), timeout=30)
    page.keyboard.press("Escape")
    expect(reply).to_have_attribute("data-status", "stopped")
    conversation = page.request.get(f"/api/conversations/{chat.conversation_id()}")
    assert conversation.status == HTTPStatus.OK
    saved = conversation.json()["messages"][-1]["content"]
    assert len(saved.encode()) > 1024 * 1024
    assert saved == expected
    assert chat.text_of(reply) == squash(saved)
    expect(chat.replies).to_have_count(1)
