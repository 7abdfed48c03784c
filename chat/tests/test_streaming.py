"""Token-by-token streaming over the websocket against the stand-in upstream, over real HTTP."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.layers import InMemoryChannelLayer, get_channel_layer
from channels.sessions import InstanceSessionWrapper
from django.utils import timezone

from chat.actions import progress
from chat.models import Charge, ChatModel, Message
from chat.realtime.consumer import _frame_sender
from chat.realtime.engine import get_manager
from chat.testing.wsclient import (
    MODEL,
    connect,
    counts,
    message,
    open_socket,
    request_id,
    send_and_accept,
    send_frame,
    streamed,
    text_of,
)

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)

PRICE = Decimal("0.27216")


async def test_a_send_streams_deltas_in_order_and_saves_the_reply(upstream, alice) -> None:
    upstream.push_script(tokens=12, interval_ms=5)
    socket = await open_socket(alice)
    accepted = await send_and_accept(socket, "Hello there")
    frames = await socket.done(accepted["message"])
    await socket.close()

    started = [f for f in frames if f["type"] == "started"]
    assert started and started[0]["user_message"]["content"] == "Hello there"
    deltas = [f for f in frames if f["type"] == "delta"]
    assert len(deltas) > 1
    assert [d["seq"] for d in deltas] == list(range(1, len(deltas) + 1))
    expected = streamed(upstream)
    assert text_of(frames, accepted["message"]) == expected

    done = frames[-1]
    assert done["status"] == "complete"
    assert done["usage"]["estimated"] is False
    reply = await message(accepted["message"])
    assert reply.content == expected
    assert reply.status == "complete"
    assert reply.prompt_tokens == done["usage"]["prompt_tokens"] == upstream.log[-1].prompt_tokens
    assert reply.completion_tokens == done["usage"]["completion_tokens"]
    cost = (reply.prompt_tokens * PRICE + reply.completion_tokens * PRICE) / Decimal(1_000_000)
    assert reply.cost == cost
    assert Decimal(done["cost"]) == cost
    assert reply.lava_request_id == upstream.log[-1].request_id
    assert upstream.log[-1].body["messages"] == [{"role": "user", "content": "Hello there"}]


async def test_the_reply_text_is_written_once_at_the_end(upstream, alice, monkeypatch) -> None:
    calls: list[int] = []
    original = progress.finish_generation

    def spy(outcome: progress.Outcome) -> Message:
        calls.append(outcome.plan.message_id)
        return original(outcome)

    monkeypatch.setattr(progress, "finish_generation", spy)
    upstream.push_script(tokens=30, interval_ms=1)
    socket = await open_socket(alice)
    accepted = await send_and_accept(socket, "Count")
    await socket.done(accepted["message"])
    await socket.close()
    assert calls == [accepted["message"]]
    reply = await message(accepted["message"])
    assert reply.content == streamed(upstream)


async def test_a_new_socket_resumes_a_reply_without_gap_or_duplicate(upstream, alice) -> None:
    upstream.push_script(tokens=40, interval_ms=15)
    first = await open_socket(alice)
    accepted = await send_and_accept(first, "Tell me a story")
    # Let a few deltas arrive, then close the tab.
    await first.recv_until(lambda f: f["type"] == "delta" and f["seq"] >= 3)
    await first.close()

    second = await open_socket(alice)
    await second.send({"type": "watch", "conversation": accepted["conversation"]})
    frames = await second.done(accepted["message"])
    await second.close()

    snapshot = next(f for f in frames if f["type"] == "snapshot")
    assert snapshot["status"] == "streaming"
    assert snapshot["seq"] >= 3
    expected = streamed(upstream)
    assert text_of(frames, accepted["message"]) == expected
    assert (await message(accepted["message"])).content == expected


async def test_two_sockets_watching_one_conversation_both_see_every_delta(upstream, alice) -> None:
    upstream.push_script(tokens=1, interval_ms=1)
    one = await open_socket(alice)
    first = await send_and_accept(one, "warm up")
    await one.done(first["message"])

    two = await open_socket(alice)
    await two.send({"type": "watch", "conversation": first["conversation"]})
    await two.recv_until(lambda f: f["type"] == "watching")

    upstream.push_script(tokens=25, interval_ms=5)
    accepted = await send_and_accept(one, "again", conversation=first["conversation"])
    frames_one = await one.done(accepted["message"])
    frames_two = await two.done(accepted["message"])
    await one.close()
    await two.close()

    expected = streamed(upstream)
    assert text_of(frames_one, accepted["message"]) == expected
    assert text_of(frames_two, accepted["message"]) == expected
    started = next(f for f in frames_two if f["type"] == "started")
    assert started["user_message"]["content"] == "again"


async def test_stop_keeps_the_partial_and_cancels_the_upstream_request(upstream, alice) -> None:
    upstream.push_script(tokens=200, interval_ms=20)
    socket = await open_socket(alice)
    accepted = await send_and_accept(socket, "A long answer please")
    frames = await socket.recv_until(lambda f: f["type"] == "delta" and f["seq"] >= 3)
    await socket.send({"type": "stop", "message": accepted["message"]})
    frames += await socket.done(accepted["message"])
    await socket.close()

    done = frames[-1]
    assert done["status"] == "stopped"
    assert done["usage"]["estimated"] is True
    seen = text_of(frames, accepted["message"])
    reply = await message(accepted["message"])
    assert reply.status == "stopped"
    assert reply.content == seen
    assert 0 < len(seen) < len(streamed(upstream))
    assert reply.cost is not None and reply.cost > 0
    await upstream.wait_until(lambda: upstream.log[-1].outcome == "cancelled", timeout=5)


async def test_stop_of_a_finished_reply_answers_how_it_ended(upstream, alice) -> None:
    upstream.push_script(tokens=2, interval_ms=1)
    socket = await open_socket(alice)
    accepted = await send_and_accept(socket, "hi")
    await socket.done(accepted["message"])
    await socket.send({"type": "stop", "message": accepted["message"]})
    done = await socket.recv()
    await socket.close()
    assert done["type"] == "done"
    assert done["status"] == "complete"


UPSTREAM_FAILURES = [
    ({"status": 401}, "auth"),
    ({"status": 402}, "payment"),
    ({"status": 404}, "model_not_found"),
    ({"status": 429}, "overloaded"),
    ({"status": 500}, "upstream_error"),
    ({"status": 503}, "overloaded"),
    ({"status": 400}, "bad_request"),
    ({"tokens": 20, "after": 5, "mid": "error_line"}, "upstream_error"),
]


@pytest.mark.parametrize(("script", "code"), UPSTREAM_FAILURES)
async def test_an_upstream_failure_ends_in_done_with_error_and_the_socket_stays_usable(
    upstream, alice, settings, script: dict[str, Any], code: str
) -> None:
    settings.UPSTREAM_MAX_RETRIES = 0
    upstream.set_default_script(**script)
    socket = await open_socket(alice)
    accepted = await send_and_accept(socket, "will fail")
    frames = await socket.done(accepted["message"])
    done = frames[-1]
    assert done["status"] == "error"
    assert done["error"]["code"] == code
    assert done["error"]["message"]
    assert "test-token" not in done["error"]["message"]
    reply = await message(accepted["message"])
    assert reply.status == "error"
    assert reply.error_code == code
    partial = text_of(frames, accepted["message"])
    assert reply.content == partial, frames
    if "after" in script:
        assert partial  # what the user saw before the failure is kept
    else:
        # Refused before any response: nothing was produced, nothing is billed.
        assert (reply.prompt_tokens, reply.completion_tokens, reply.cost) == (0, 0, 0)  # type: ignore[comparison-overlap]  # Decimal(0) == 0

    upstream.set_default_script(tokens=3, interval_ms=1)
    again = await send_and_accept(socket, "and now?", conversation=accepted["conversation"])
    assert (await socket.done(again["message"]))[-1]["status"] == "complete"
    await socket.close()


async def test_a_stream_cut_without_done_keeps_the_partial(upstream, alice) -> None:
    upstream.push_script(tokens=20, interval_ms=2, after=6, mid="cut")
    socket = await open_socket(alice)
    accepted = await send_and_accept(socket, "cut me")
    frames = await socket.done(accepted["message"])
    await socket.close()
    done = frames[-1]
    assert done["status"] == "error"
    reply = await message(accepted["message"])
    assert reply.content == text_of(frames, accepted["message"])
    assert reply.content


async def test_a_duplicate_request_id_starts_one_generation(upstream, alice) -> None:
    upstream.set_default_script(tokens=10, interval_ms=5)
    socket = await open_socket(alice)
    frame = send_frame("once only", model=MODEL)
    await socket.send(frame)
    await socket.send(frame)
    frames = await socket.recv_until(
        lambda f: (
            f["type"] == "accepted"
            and len([x for x in socket.received if x["type"] == "accepted"]) == 2
        )
    )
    accepted = [f for f in frames if f["type"] == "accepted"]
    assert accepted[0] == accepted[1]
    await socket.done(accepted[0]["message"])

    # Sent again after the end: same answer, and how it ended.
    await socket.send(frame)
    again = await socket.recv_until(lambda f: f["type"] == "done")
    await socket.close()
    assert again[0] == accepted[0]
    assert again[-1]["status"] == "complete"
    assert len([r for r in upstream.log if r.path.endswith("/forward")]) == 1
    conversations, messages, charges = await counts()
    assert (conversations, messages, charges) == (1, 2, 1)


async def test_another_users_conversation_is_not_found_for_every_action(
    upstream, alice, bob
) -> None:
    upstream.set_default_script(tokens=60, interval_ms=20)
    mine = await open_socket(alice)
    accepted = await send_and_accept(mine, "private")
    await mine.recv_until(lambda f: f["type"] == "delta")

    theirs = await open_socket(bob)
    attempts = [
        {"type": "watch", "conversation": accepted["conversation"]},
        send_frame("hijack", model=MODEL, conversation=accepted["conversation"]),
        {"type": "stop", "message": accepted["message"]},
        {"type": "regenerate", "request_id": request_id(), "message": accepted["message"]},
    ]
    for attempt in attempts:
        await theirs.send(attempt)
        answer = await theirs.recv()
        assert answer["type"] == "error", attempt
        assert answer["code"] == "not_found", attempt
    # The same answer as for ids that do not exist at all.
    await theirs.send({"type": "watch", "conversation": 987654})
    assert (await theirs.recv())["code"] == "not_found"
    # Bob saw nothing of Alice's reply.
    assert all(f["type"] == "error" for f in theirs.received)

    frames = await mine.done(accepted["message"])
    assert frames[-1]["status"] == "complete"
    await mine.close()
    await theirs.close()
    assert len(upstream.log) == 1


async def test_anonymous_sockets_are_closed_with_4401(db) -> None:
    connected, code, socket = await connect(None)
    if connected:
        closed = await socket.communicator.receive_output(timeout=5)
        assert closed == {"type": "websocket.close", "code": 4401}
    else:
        assert code == 4401


async def test_foreign_and_missing_origins_are_refused_at_the_handshake(alice) -> None:
    connected, _, _ = await connect(alice, origin="https://evil.example")
    assert not connected
    connected, _, _ = await connect(alice, origin=None)
    assert not connected


MALFORMED = [
    "not json",
    "[1, 2]",
    '"just a string"',
    "{}",
    '{"type": 5}',
    '{"type": "dance"}',
    '{"type": "send"}',
    '{"type": "send", "request_id": "a b", "model": "x", "content": "hi"}',
    '{"type": "send", "request_id": "r1", "model": "x", "content": ""}',
    '{"type": "send", "request_id": "r1", "model": "x", "content": 5}',
    '{"type": "send", "request_id": "r1", "model": "x", "content": "hi", "conversation": "1"}',
    '{"type": "send", "request_id": "r1", "model": "x", "content": "hi", "conversation": true}',
    '{"type": "send", "request_id": "r1", "model": "x", "content": "hi",'
    ' "params": {"temperature": 9}}',
    '{"type": "send", "request_id": "r1", "model": "x", "content": "hi", "params": {"nope": 1}}',
    '{"type": "send", "request_id": "r1", "model": "x", "content": "hi", "params": []}',
    '{"type": "stop", "message": "12"}',
    '{"type": "stop", "message": -1}',
    '{"type": "watch"}',
    '{"type": "unwatch", "conversation": null}',
    '{"type": "regenerate", "message": 1}',
]


async def test_malformed_frames_are_answered_with_error_and_change_nothing(upstream, alice) -> None:
    socket = await open_socket(alice)
    before = await counts()
    for raw in MALFORMED:
        await socket.send_raw(raw)
        answer = await socket.recv()
        assert answer["type"] == "error", raw
        assert answer["code"] == "invalid_frame", raw
        assert answer["message"], raw
    huge = send_frame("x" * 100_001, model=MODEL)
    await socket.send(huge)
    answer = await socket.recv()
    assert (answer["code"], answer["request_id"]) == ("content_too_long", huge["request_id"])
    await socket.send_raw("x" * 1_000_001)
    assert (await socket.recv())["code"] == "content_too_long"
    assert await counts() == before
    assert upstream.log == []
    # Still open and usable.
    upstream.push_script(tokens=2, interval_ms=1)
    accepted = await send_and_accept(socket, "still here?")
    assert (await socket.done(accepted["message"]))[-1]["status"] == "complete"
    await socket.close()


async def test_an_unknown_or_disabled_model_is_refused(upstream, alice) -> None:
    await database_sync_to_async(ChatModel.objects.filter(model_id=MODEL).update)(enabled=False)
    socket = await open_socket(alice)
    before = await counts()
    for model in (MODEL, "nobody/NoSuchModel"):
        await socket.send(send_frame("hi", model=model))
        answer = await socket.recv()
        assert answer["code"] == "model_unavailable"
        assert "Pick another model" in answer["message"]
    await socket.close()
    assert await counts() == before


async def test_without_credentials_a_send_is_refused_as_not_configured(
    upstream, alice, settings
) -> None:
    settings.LAVA_FORWARD_TOKEN = ""
    socket = await open_socket(alice)
    await socket.send(send_frame("hi", model=MODEL))
    answer = await socket.recv()
    await socket.close()
    assert answer["code"] == "not_configured"
    assert "LAVA_FORWARD_TOKEN" in answer["message"]
    assert await counts() == (0, 0, 0)


async def test_too_many_concurrent_generations_are_refused(upstream, alice, settings) -> None:
    settings.MAX_CONCURRENT_GENERATIONS = 1
    upstream.set_default_script(tokens=50, interval_ms=20)
    socket = await open_socket(alice)
    first = await send_and_accept(socket, "one")
    await socket.send(send_frame("two", model=MODEL))
    answer = await socket.recv_until(lambda f: f["type"] == "error")
    assert answer[-1]["code"] == "too_many_generations"
    await socket.send({"type": "stop", "message": first["message"]})
    await socket.done(first["message"])
    await socket.close()


async def test_the_reaper_interrupts_a_stale_streaming_reply(upstream, alice) -> None:
    upstream.push_script(tokens=1, interval_ms=1)
    socket = await open_socket(alice)
    accepted = await send_and_accept(socket, "first")
    await socket.done(accepted["message"])

    @database_sync_to_async
    def plant() -> Message:
        reply = Message.objects.get(pk=accepted["message"])
        stale = Message.objects.create(
            conversation_id=accepted["conversation"],
            user=alice,
            role="assistant",
            status="streaming",
            content="half an ans",
            seq=4,
            model=reply.model,
            input_price=PRICE,
            output_price=PRICE,
            prompt_tokens=10,
            usage_estimated=True,
            heartbeat_at=timezone.now() - timedelta(minutes=5),
        )
        Charge.objects.create(user=alice, message=stale, model_id=MODEL, reserved=Decimal("1"))
        return stale

    stale = await plant()
    reaped = await get_manager().reap()
    assert reaped == [stale.pk]
    done = (await socket.done(stale.pk))[-1]
    await socket.close()
    assert done["status"] == "interrupted"
    stale = await message(stale.pk)
    assert stale.status == "interrupted"
    assert stale.content == "half an ans"
    assert stale.usage_estimated
    assert stale.cost == (10 * PRICE + 3 * PRICE) / Decimal(1_000_000)
    charge = await database_sync_to_async(Charge.objects.get)(message=stale)
    assert (charge.state, charge.cost) == ("settled", stale.cost)


async def test_watching_an_orphaned_reply_marks_it_interrupted(upstream, alice, settings) -> None:
    """A reply left streaming by a process that died is settled as soon as someone looks."""
    upstream.push_script(tokens=1, interval_ms=1)
    socket = await open_socket(alice)
    accepted = await send_and_accept(socket, "first")
    await socket.done(accepted["message"])
    # With the in-memory layer this process is the only one, so even a fresh heartbeat is an
    # orphan's; with Redis another process may run it until its heartbeat goes stale.
    in_memory = "InMemory" in settings.CHANNEL_LAYERS["default"]["BACKEND"]
    age = timedelta(0 if in_memory else settings.STREAM_STALE_SECONDS + 1)
    await database_sync_to_async(Message.objects.filter(pk=accepted["message"]).update)(
        status="streaming", heartbeat_at=timezone.now() - age
    )
    other = await open_socket(alice)
    await other.send({"type": "watch", "conversation": accepted["conversation"]})
    frames = await other.recv_until(lambda f: f["type"] == "watching")
    if not any(f["type"] == "done" for f in frames):
        frames += await other.done(accepted["message"])
    frames = [f for f in frames if f["type"] == "done"]
    await other.close()
    await socket.close()
    assert frames[-1]["status"] == "interrupted"
    assert (await message(accepted["message"])).status == "interrupted"


async def test_database_writes_per_reply_are_bounded_whatever_the_token_count(
    upstream, alice, settings, db_writes
) -> None:
    settings.STREAM_FLUSH_SECONDS = 0.25
    upstream.push_script(tokens=400, interval_ms=2)
    socket = await open_socket(alice)
    db_writes.clear()
    started = asyncio.get_running_loop().time()
    accepted = await send_and_accept(socket, "many tokens")
    frames = await socket.done(accepted["message"])
    elapsed = asyncio.get_running_loop().time() - started
    await socket.close()
    assert frames[-1]["status"] == "complete"
    message_updates = db_writes.count("UPDATE", "chat_message")
    flush_ticks = int(elapsed / 0.25) + 1
    # At least the final write; at most one flush per tick and the final write.
    assert 1 <= message_updates <= flush_ticks + 1, (message_updates, elapsed)
    assert db_writes.count("INSERT", "chat_message") == 2


async def test_regenerate_replaces_the_reply_and_keeps_the_old_one_billed(upstream, alice) -> None:
    upstream.set_default_script(tokens=3, interval_ms=1)
    socket = await open_socket(alice)
    first = await send_and_accept(socket, "question")
    await socket.done(first["message"])
    frame = {"type": "regenerate", "request_id": request_id(), "message": first["message"]}
    await socket.send(frame)
    accepted = await socket.recv()
    assert accepted["type"] == "accepted"
    assert accepted["conversation"] == first["conversation"]
    assert accepted["message"] != first["message"]
    assert (await socket.done(accepted["message"]))[-1]["status"] == "complete"
    await socket.close()
    old = await message(first["message"])
    new = await message(accepted["message"])
    assert not old.active and old.cost is not None
    assert new.active and new.parent_id == old.parent_id
    assert upstream.log[-1].body["messages"] == [{"role": "user", "content": "question"}]


async def test_frames_skip_the_session_wrapper_only_where_it_never_acts() -> None:
    sent: list[Any] = []

    async def server_send(message: Any) -> None:
        sent.append(message)

    # Only what the wrapper reads of a scope: channels' stubs want a whole websocket scope.
    scope: Any = {"type": "websocket", "cookies": {}}
    wrapper = InstanceSessionWrapper(scope, server_send)
    assert _frame_sender(wrapper.send) is server_send
    # A wrapper that would save the session on a frame keeps its place.
    wrapper.save_message_types = [*wrapper.save_message_types, "websocket.send"]
    assert _frame_sender(wrapper.send) == wrapper.send
    # Any other send is used as it is.
    assert _frame_sender(server_send) is server_send


async def test_with_the_in_memory_layer_sockets_open_no_channel_of_their_own(
    upstream, alice
) -> None:
    """One process: frames reach its sockets directly, so a socket needs no channel (no queue
    and no receiving task each); a reply still streams to every one of them."""
    layer = get_channel_layer()
    if not isinstance(layer, InMemoryChannelLayer):
        pytest.skip("the in-memory channel layer only: this run uses Redis")
    upstream.push_script(tokens=5, interval_ms=5)
    sockets = [await open_socket(alice) for _ in range(5)]
    accepted = await send_and_accept(sockets[0], "to every tab")
    for other in sockets[1:]:
        await other.send({"type": "watch", "conversation": accepted["conversation"]})
    frames = await sockets[0].done(accepted["message"])
    manager = get_manager()
    assert set(layer.channels) <= {manager.channel_name}
    for socket in sockets:
        await socket.close()
    assert text_of(frames, accepted["message"])
