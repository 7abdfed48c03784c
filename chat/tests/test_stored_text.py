"""A reply whose upstream splits characters oddly (or sends what no database stores) is saved
whole, and saves of the other replies of the process go on meanwhile: through the websocket,
the generation and the database, against the stand-in over loopback."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from chat.actions import progress
from chat.testing.fakeupstream import DONE_EVENT, delta_chunk, sse_event, usage_numbers
from chat.testing.wsclient import message, open_socket, send_and_accept, streamed, text_of

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)

HIGH, LOW = "\ud83d", "\ude42"  # the two halves of U+1F642


def content_event(text: str) -> bytes:
    # JSON escapes, so that each half of a pair goes out on its own.
    return sse_event(delta_chunk({"content": text}))


async def test_split_and_lone_surrogates_are_saved_decoded_while_other_replies_keep_saving(
    upstream, alice, settings, monkeypatch
) -> None:
    settings.STREAM_FLUSH_SECONDS = 0.05
    loop = asyncio.get_running_loop()
    # Every partial text a flush saved, by reply, in the order the flushes were done.
    saved: list[tuple[int, str]] = []
    other_saved = asyncio.Event()
    other_id: int | None = None
    first_done = False
    flush = progress.flush_progress

    def note(texts: list[tuple[int, str]]) -> None:
        saved.extend(texts)
        if first_done and any(pk == other_id and text for pk, text in texts):
            other_saved.set()

    def recording_flush(updates: list[progress.Progress], *rest: Any) -> Any:
        result = flush(updates, *rest)
        loop.call_soon_threadsafe(note, [(u.message_id, u.content) for u in updates])
        return result

    monkeypatch.setattr(progress, "flush_progress", recording_flush)
    upstream.push_script(
        raw=[
            content_event(f"Smile: {HIGH}"),
            content_event(f"{LOW} and a lone {LOW}"),
            content_event(f", then half {HIGH}"),
            content_event(" of one.\x00"),
            sse_event(delta_chunk({}, finish_reason="stop")),
            sse_event(delta_chunk(usage=usage_numbers(10, 8))),
            DONE_EVENT,
        ],
        interval_ms=60,
    )
    upstream.push_script(tokens=60, interval_ms=40)

    odd, other = await open_socket(alice), await open_socket(alice)
    first = await send_and_accept(odd, "an emoji, please")
    # The stand-in serves scripts in the order requests arrive: the odd reply's goes first.
    await upstream.wait_until(lambda: len(upstream.chat_log()) == 1)
    second = await send_and_accept(other, "and a long answer")
    other_id = second["message"]

    frames = await odd.done(first["message"], timeout=10)
    first_done = True
    # NUL too: PostgreSQL refuses it in text.
    expected = "Smile: \U0001f642 and a lone \ufffd, then half \ufffd of one.\ufffd"
    assert frames[-1]["status"] == "complete"
    assert text_of(frames, first["message"]) == expected
    reply = await message(first["message"])
    assert (reply.status, reply.content) == ("complete", expected)
    assert (reply.prompt_tokens, reply.completion_tokens) == (10, 8)
    assert any(pk == first["message"] for pk, _text in saved)

    # The other reply is still streaming, and the periodic flush still saves its text.
    await asyncio.wait_for(other_saved.wait(), 5)
    other_frames = await other.done(other_id, timeout=15)
    await odd.close()
    await other.close()
    assert other_frames[-1]["status"] == "complete"
    other_reply = await message(other_id)
    assert (other_reply.status, other_reply.content) == ("complete", streamed(upstream))
    assert next(text for pk, text in saved if pk == other_id and text) in other_reply.content
