"""What a socket can make the server send it: a repeated watch sends no new snapshot, a resync
does, replayed sends never take a socket past its watch limit, and the reaper settles only
replies whose heartbeat is older than the cutoff."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.utils import timezone

from chat.models import Charge, Message
from chat.realtime.engine import get_manager
from chat.testing.wsclient import MODEL, message, open_socket, send_and_accept, send_frame

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)


async def test_a_repeated_watch_sends_no_new_snapshot_and_a_resync_does(upstream, alice) -> None:
    upstream.push_script(
        tokens=400, interval_ms=5, after=400, mid="stall", reasoning="deep thought"
    )
    sender = await open_socket(alice)
    accepted = await send_and_accept(sender, "keep going")
    await sender.recv_until(lambda f: f["type"] == "delta" and "content" in f)
    watcher = await open_socket(alice)
    await watcher.send({"type": "watch", "conversation": accepted["conversation"]})
    first = await watcher.recv_until(lambda f: f["type"] == "watching")
    snapshots = [f for f in first if f["type"] == "snapshot"]
    assert len(snapshots) == 1
    # The snapshot carries the reasoning streamed so far, not only the answer.
    assert snapshots[0]["reasoning"] == "deep thought"
    for _ in range(5):
        await watcher.send({"type": "watch", "conversation": accepted["conversation"]})
    again = []
    for _ in range(5):
        again += await watcher.recv_until(lambda f: f["type"] == "watching")
    assert [f["type"] for f in again if f["type"] not in ("delta", "watching")] == []
    assert all(f["streaming"] == [accepted["message"]] for f in again if f["type"] == "watching")
    await watcher.send({"type": "resync", "conversation": accepted["conversation"]})
    resynced = await watcher.recv_until(lambda f: f["type"] == "watching")
    [fresh] = [f for f in resynced if f["type"] == "snapshot"]
    assert fresh["seq"] >= snapshots[0]["seq"]
    await sender.send({"type": "stop", "message": accepted["message"]})
    await sender.done(accepted["message"])
    await watcher.done(accepted["message"])
    await sender.close()
    await watcher.close()


async def test_replayed_sends_never_take_a_socket_past_its_watch_limit(
    upstream, alice, settings
) -> None:
    settings.MAX_WATCHED_CONVERSATIONS = 3
    upstream.set_default_script(tokens=1)
    first = await open_socket(alice)
    sends = [send_frame(f"question {index}", model=MODEL) for index in range(5)]
    for frame in sends:
        await first.send(frame)
        await first.recv_until(lambda f: f["type"] == "done")
    await first.close()
    # A new socket replays all five (a client retrying after a dropped connection): each is
    # answered as before, and the socket lets go of the conversation it watched longest.
    socket = await open_socket(alice)
    for frame in sends:
        await socket.send(frame)
        answered = await socket.recv_until(lambda f: f["type"] == "done")
        assert answered[0]["type"] in ("accepted", "unwatched")
        watching = [c for c, sockets in get_manager().local.items() if sockets]
        assert len(watching) <= 3
    unwatched = [f["conversation"] for f in socket.received if f["type"] == "unwatched"]
    accepted = [f["conversation"] for f in socket.received if f["type"] == "accepted"]
    assert unwatched == accepted[:2]
    await socket.close()


@database_sync_to_async
def plant(user: Any, conversation_id: int, model_id: int, age_seconds: float) -> Message:
    reply = Message.objects.create(
        conversation_id=conversation_id,
        user=user,
        role="assistant",
        status="streaming",
        content="so far",
        seq=2,
        model_id=model_id,
        input_price=Decimal("0.27216"),
        output_price=Decimal("0.27216"),
        prompt_tokens=10,
        usage_estimated=True,
        heartbeat_at=timezone.now() - timedelta(seconds=age_seconds),
    )
    Charge.objects.create(user=user, message=reply, model_id=MODEL, reserved=Decimal("1"))
    return reply


async def test_the_reaper_settles_stale_replies_and_leaves_fresh_ones(
    upstream, alice, settings
) -> None:
    settings.STREAM_STALE_SECONDS = 30
    upstream.push_script(tokens=1)
    socket = await open_socket(alice)
    accepted = await send_and_accept(socket, "first")
    await socket.done(accepted["message"])
    await socket.close()
    first = await message(accepted["message"])
    stale = await plant(alice, first.conversation_id, first.model_id, 31)
    # Another process's reply, heart-beaten a second ago: it is alive.
    fresh = await plant(alice, first.conversation_id, first.model_id, 1)
    assert await get_manager().reap() == [stale.pk]
    assert (await message(stale.pk)).status == "interrupted"
    assert (await message(fresh.pk)).status == "streaming"
