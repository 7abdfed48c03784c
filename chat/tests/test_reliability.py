"""Faults: what the user sees and what is stored when the upstream, the database, a client or
the server misbehaves. Each test is a row of docs/reliability.md."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.db import OperationalError

from chat.actions import progress
from chat.models import ChatModel, Conversation, Message
from chat.realtime import engine, generation
from chat.testing import processes
from chat.testing.wsclient import (
    MODEL,
    connect,
    message,
    open_socket,
    send_and_accept,
    send_frame,
    streamed,
    text_of,
)

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)

# Faults the stand-in injects after some tokens, and the error code the reply ends with.
MID_STREAM = [
    ("error_line", "upstream_error"),
    ("cut", "upstream_error"),
    ("drop", "upstream_error"),
    ("reset", "upstream_error"),
]


@pytest.mark.parametrize(("fault", "code"), MID_STREAM)
async def test_a_mid_stream_fault_keeps_what_the_user_saw(
    upstream, alice, settings, fault: str, code: str
) -> None:
    settings.UPSTREAM_MAX_RETRIES = 0
    upstream.push_script(tokens=30, interval_ms=3, after=8, mid=fault)
    socket = await open_socket(alice)
    accepted = await send_and_accept(socket, "fault please")
    frames = await socket.done(accepted["message"])
    await socket.close()
    done = frames[-1]
    assert (done["status"], done["error"]["code"]) == ("error", code)
    seen = text_of(frames, accepted["message"])
    reply = await message(accepted["message"])
    assert seen and reply.content == seen
    assert reply.status == "error"
    assert reply.cost is not None and reply.usage_estimated  # billed from the text it used


async def test_a_stall_longer_than_the_idle_timeout_ends_in_timeout(
    upstream, alice, settings
) -> None:
    settings.UPSTREAM_IDLE_TIMEOUT = 0.5
    upstream.push_script(tokens=30, interval_ms=3, after=5, mid="stall")
    socket = await open_socket(alice)
    accepted = await send_and_accept(socket, "stall please")
    frames = await socket.done(accepted["message"])
    await socket.close()
    assert (frames[-1]["status"], frames[-1]["error"]["code"]) == ("error", "timeout")
    assert (await message(accepted["message"])).content == text_of(frames, accepted["message"])


async def test_no_first_token_within_the_idle_timeout_ends_in_timeout(
    upstream, alice, settings
) -> None:
    settings.UPSTREAM_IDLE_TIMEOUT = 0.3
    settings.UPSTREAM_MAX_RETRIES = 0
    upstream.push_script(tokens=3, ttft_ms=2000)
    socket = await open_socket(alice)
    accepted = await send_and_accept(socket, "think long")
    done = (await socket.done(accepted["message"]))[-1]
    await socket.close()
    assert (done["status"], done["error"]["code"]) == ("error", "timeout")


async def test_the_upstream_down_ends_in_a_readable_error(alice, settings) -> None:
    settings.LAVA_FORWARD_URL = f"http://127.0.0.1:{processes.free_port()}/v1/forward"
    settings.LAVA_FORWARD_TOKEN = "t"
    settings.UPSTREAM_MAX_RETRIES = 1
    settings.AUTO_TITLES = False
    socket = await open_socket(alice)
    accepted = await send_and_accept(socket, "anyone there?")
    done = (await socket.done(accepted["message"]))[-1]
    await socket.close()
    assert done["status"] == "error"
    assert done["error"]["code"] == "upstream_error"
    assert done["error"]["message"] == "Could not reach the model service."
    reply = await message(accepted["message"])
    assert reply.cost == 0  # nothing was produced, nothing is billed


async def test_a_retryable_overload_before_the_first_token_is_retried(upstream, alice) -> None:
    upstream.push_script(status=503, fail_times=1, tokens=4, interval_ms=1)
    socket = await open_socket(alice)
    accepted = await send_and_accept(socket, "busy?")
    done = (await socket.done(accepted["message"]))[-1]
    await socket.close()
    assert done["status"] == "complete"
    assert [e.status for e in upstream.chat_log()] == [503, 200]


async def test_a_slow_upstream_under_many_streams_completes_every_reply(
    upstream, make_user, settings
) -> None:
    settings.MAX_CONCURRENT_GENERATIONS = 5
    users = [await database_sync_to_async(make_user)(f"load{i}") for i in range(10)]
    upstream.set_default_script(tokens=15, interval_ms=40, ttft_ms=200)
    sockets = [await open_socket(u) for u in users for _ in range(4)]
    accepted = await asyncio.gather(*(send_and_accept(s, "slowly") for s in sockets))
    results = await asyncio.gather(
        *(s.done(a["message"], timeout=30) for s, a in zip(sockets, accepted, strict=True))
    )
    for socket in sockets:
        await socket.close()
    assert all(frames[-1]["status"] == "complete" for frames in results)
    for frames, answer in zip(results, accepted, strict=True):
        assert (await message(answer["message"])).content == text_of(frames, answer["message"])


async def test_a_database_locked_during_flushes_and_the_final_write_loses_nothing(
    upstream, alice, settings, monkeypatch
) -> None:
    settings.STREAM_FLUSH_SECONDS = 0.05
    flush, finish = progress.flush_progress, progress.finish_generation
    failures = {"flush": 0, "finish": 0}

    def locked_flush(*args: Any) -> None:
        failures["flush"] += 1
        if failures["flush"] <= 5:
            raise OperationalError("database is locked")
        flush(*args)

    def locked_finish(outcome: progress.Outcome) -> Message | None:
        failures["finish"] += 1
        if failures["finish"] <= 2:
            raise OperationalError("database is locked")
        return finish(outcome)

    monkeypatch.setattr(progress, "flush_progress", locked_flush)
    monkeypatch.setattr(progress, "finish_generation", locked_finish)
    upstream.push_script(tokens=40, interval_ms=10)
    socket = await open_socket(alice)
    accepted = await send_and_accept(socket, "keep going")
    frames = await socket.done(accepted["message"])
    await socket.close()
    assert failures["flush"] > 5 and failures["finish"] == 3
    assert frames[-1]["status"] == "complete"
    expected = streamed(upstream)
    assert text_of(frames, accepted["message"]) == expected
    reply = await message(accepted["message"])
    assert (reply.status, reply.content) == ("complete", expected)


def test_a_flush_appends_the_new_text_only_on_top_of_the_text_it_follows(user) -> None:
    model = ChatModel.objects.get(model_id=MODEL)
    conversation = Conversation.objects.create(owner=user, title="t", model=model)
    reply = Message.objects.create(
        conversation=conversation, user=user, role="assistant", status="streaming", model=model
    )

    def flush(*updates: progress.Progress) -> set[int]:
        return progress.flush_progress(list(updates), [])

    def saved() -> tuple[str, str, int]:
        row = Message.objects.get(pk=reply.pk)
        return row.content, row.reasoning, row.seq

    assert flush(progress.Progress(reply.pk, 2, 0, "Hel", "th")) == set()
    assert saved() == ("Hel", "th", 2)
    assert flush(progress.Progress(reply.pk, 5, 2, "lo, ⟦é⟧ ", "ink")) == set()
    assert saved() == ("Hello, ⟦é⟧ ", "think", 5)
    # An append computed against other saved text is refused, and the row left as it was.
    assert flush(progress.Progress(reply.pk, 7, 2, "world", "")) == {reply.pk}
    assert saved() == ("Hello, ⟦é⟧ ", "think", 5)
    whole = progress.Progress(reply.pk, 7, 2, "Hello, ⟦é⟧ world", "think", whole=True)
    assert flush(whole) == set()
    assert saved() == ("Hello, ⟦é⟧ world", "think", 7)
    # A reply that has ended keeps its final text.
    Message.objects.filter(pk=reply.pk).update(status="complete", content="final")
    assert flush(progress.Progress(reply.pk, 8, 7, "!", "")) == set()
    assert saved() == ("final", "think", 7)


def test_a_reply_is_held_as_one_string_a_flush_and_never_loses_a_part() -> None:
    text = ["Hel", "lo", ", wor", "ld"]
    unsaved = text[2:]
    assert generation._joined_tail(unsaved, text) == ", world"
    assert (text, unsaved) == (["Hel", "lo", ", world"], [", world"])
    # The text was joined meanwhile (a watcher's snapshot): only the unsaved parts are joined.
    text, unsaved = ["Hello, world"], [", wor", "ld"]
    assert generation._joined_tail(unsaved, text) == ", world"
    assert (text, unsaved) == (["Hello, world"], [", world"])
    assert generation._joined_tail([], ["x"]) == ""


async def test_a_flush_reported_failed_after_its_commit_neither_repeats_nor_loses_text(
    upstream, alice, settings, monkeypatch
) -> None:
    # The test runs each flush itself, after new text arrived, and the reply only ends when it
    # is stopped: what happens does not depend on how fast the machine is.
    settings.STREAM_FLUSH_SECONDS = 3600
    flush = progress.flush_progress
    calls: list[tuple[list[bool], set[int]]] = []
    partials: list[str] = []

    def committed_then_failed(updates: list[progress.Progress], beats: list[int]) -> set[int]:
        # The first two commit and then report a failure.
        refused = flush(updates, beats)
        calls.append(([u.whole for u in updates], refused))
        partials.extend(Message.objects.get(pk=u.message_id).content for u in updates)
        if len(calls) <= 2:
            raise OperationalError("server closed the connection unexpectedly")
        return refused

    monkeypatch.setattr(progress, "flush_progress", committed_then_failed)
    upstream.push_script(tokens=400, interval_ms=5, after=400, mid="stall")
    socket = await open_socket(alice)
    accepted = await send_and_accept(socket, "keep going")
    reply_id = accepted["message"]
    frames: list[dict[str, Any]] = []
    for _ in range(8):
        frames += await socket.recv_until(lambda f: f["type"] == "delta")
        await engine.get_manager().flush_once()
    await socket.send({"type": "stop", "message": reply_id})
    frames += await socket.done(reply_id)
    await socket.close()
    seen = text_of(frames, reply_id)
    assert frames[-1]["status"] == "stopped"
    # The third flush found the saved text ahead of what it appended to, and the next saved it
    # whole; every saved partial is a beginning of the reply, never a repeat.
    assert [whole for whole, _ in calls] == [[False]] * 3 + [[True]] + [[False]] * 4
    assert calls[2][1] == {reply_id}
    assert all(refused == set() for _, refused in calls[3:])
    assert all(seen.startswith(partial) for partial in partials)
    # The first flush's text three times (committed, then refused twice), then five new ones.
    assert len(set(partials)) == 6
    assert (await message(reply_id)).content == seen


async def test_a_client_that_does_not_read_is_dropped_not_the_reply_or_others(
    upstream, alice, settings
) -> None:
    settings.MAX_UNACKED_CHARS = 3000
    upstream.push_script(tokens=200, interval_ms=2, text="x" * 4000)
    watcher = await open_socket(alice)
    accepted = await send_and_accept(watcher, "a long one")
    # The sender reads and acknowledges everything; a second socket never acknowledges.
    silent = await open_socket(alice)
    await silent.send({"type": "watch", "conversation": accepted["conversation"]})
    frames: list[dict[str, Any]] = []
    received = 0
    while True:
        raw = await watcher.communicator.receive_from(timeout=10)
        received += len(raw)
        await watcher.send({"type": "ack", "received": received})
        frames.append(json.loads(raw))
        if frames[-1]["type"] == "done":
            break
    assert frames[-1]["status"] == "complete"
    assert text_of(frames, accepted["message"]) == streamed(upstream)
    # The silent socket was closed for not reading.
    closed = None
    while closed is None:
        output = await silent.communicator.receive_output(timeout=5)
        if output["type"] == "websocket.close":
            closed = output
    assert closed["code"] == 4408
    await watcher.close()


async def test_a_frame_storm_from_one_socket_is_cut_off(upstream, alice, settings) -> None:
    settings.FRAME_BURST = 10
    settings.FRAMES_PER_SECOND = 5
    socket = await open_socket(alice)
    for _ in range(80):
        await socket.send({"type": "watch", "conversation": 999_999})
    outputs = []
    while True:
        output = await socket.communicator.receive_output(timeout=5)
        outputs.append(output)
        if output["type"] == "websocket.close":
            break
    codes = [json.loads(o["text"])["code"] for o in outputs if o.get("text") is not None]
    assert codes.count("not_found") == 10  # the burst was served
    assert codes.count("rate_limited") == 1  # then one warning, not one per frame
    assert outputs[-1]["code"] == 4429
    # The user's other sockets are not affected.
    other = await open_socket(alice)
    upstream.push_script(tokens=2, interval_ms=1)
    accepted = await send_and_accept(other, "still fine")
    assert (await other.done(accepted["message"]))[-1]["status"] == "complete"
    await other.close()


async def test_hundreds_of_clients_connecting_and_leaving_at_once(upstream, alice) -> None:
    async def visit() -> None:
        connected, _, socket = await connect(alice)
        assert connected
        await socket.send({"type": "watch", "conversation": 424242})
        assert (await socket.recv())["code"] == "not_found"
        await socket.close()

    await asyncio.gather(*(visit() for _ in range(300)))
    # Afterwards the server still serves a full reply.
    upstream.push_script(tokens=5, interval_ms=1)
    socket = await open_socket(alice)
    accepted = await send_and_accept(socket, "after the crowd")
    assert (await socket.done(accepted["message"]))[-1]["status"] == "complete"
    await socket.close()


async def test_the_per_user_message_rate_is_limited(upstream, alice, settings) -> None:
    settings.MESSAGES_PER_MINUTE = 2
    upstream.set_default_script(tokens=1, interval_ms=1)
    socket = await open_socket(alice)
    for text in ("one", "two"):
        accepted = await send_and_accept(socket, text)
        await socket.done(accepted["message"])
    await socket.send(send_frame("three", model=MODEL))
    answer = await socket.recv()
    await socket.close()
    assert answer["code"] == "rate_limited"
    assert len(upstream.chat_log()) == 2


async def test_watching_is_limited_per_socket(upstream, alice, settings) -> None:
    settings.MAX_WATCHED_CONVERSATIONS = 2
    upstream.set_default_script(tokens=1, interval_ms=1)
    socket = await open_socket(alice)
    conversations = []
    for text in ("a", "b", "c"):
        accepted = await send_and_accept(socket, text)
        await socket.done(accepted["message"])
        conversations.append(accepted["conversation"])
        await socket.send({"type": "unwatch", "conversation": accepted["conversation"]})
        await socket.recv_until(lambda f: f["type"] == "unwatched")
    for conversation in conversations[:2]:
        await socket.send({"type": "watch", "conversation": conversation})
        await socket.recv_until(lambda f: f["type"] == "watching")
    await socket.send({"type": "watch", "conversation": conversations[2]})
    answer = await socket.recv()
    await socket.close()
    assert answer["type"] == "error"
    assert "at most 2 conversations" in answer["message"]
