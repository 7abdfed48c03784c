"""The process's shared background work (saving partial replies, the reaper, the control
channel) never dies from one item: a failure is contained to that reply, logged with its id,
and the work goes on for every other reply."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.utils import timezone

from chat.actions import progress
from chat.billing import settlement
from chat.events import control_group
from chat.models import Charge, Message
from chat.realtime import generation
from chat.realtime.engine import get_manager
from chat.testing.wsclient import MODEL, message, open_socket, send_and_accept, text_of
from chat.upstream import client as upstream_client

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)


class Saves:
    """Wraps `progress.flush_progress`: refuses every save that includes `poisoned` (the way a
    database driver refuses a value it cannot encode), and records what each reply had saved
    after every successful save."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.poisoned: set[int] = set()
        self.saved: dict[int, list[str]] = {}
        self.refused = 0
        self._flush = progress.flush_progress
        monkeypatch.setattr(progress, "flush_progress", self)

    def __call__(self, updates: list[progress.Progress], beats: list[int]) -> set[int]:
        if any(u.message_id in self.poisoned for u in updates):
            self.refused += 1
            raise UnicodeEncodeError("utf-8", "\ud83d", 0, 1, "surrogates not allowed")
        refused = self._flush(updates, beats)
        for update in updates:
            content = Message.objects.get(pk=update.message_id).content
            self.saved.setdefault(update.message_id, []).append(content)
        return refused


async def test_a_reply_that_cannot_be_saved_ends_in_error_and_the_others_keep_saving(
    upstream, alice, settings, monkeypatch
) -> None:
    settings.STREAM_FLUSH_SECONDS = 3600  # the test runs each flush
    saves = Saves(monkeypatch)
    # Two replies that only end when stopped.
    upstream.push_script(tokens=400, interval_ms=5, after=400, mid="stall")
    upstream.push_script(tokens=400, interval_ms=5, after=400, mid="stall")
    one, two = await open_socket(alice), await open_socket(alice)
    poisoned = await send_and_accept(one, "one")
    healthy = await send_and_accept(two, "two")
    saves.poisoned.add(poisoned["message"])
    seen: list[dict[str, Any]] = []
    for _ in range(generation.MAX_SAVE_FAILURES):
        seen += await two.recv_until(lambda f: f["type"] == "delta")
        await get_manager().flush_once()
    # The third failure in a row ended the reply that cannot be saved, with its text.
    frames = await one.done(poisoned["message"])
    await one.close()
    assert (frames[-1]["status"], frames[-1]["error"]["code"]) == (
        "error",
        generation.SAVE_FAILED,
    )
    assert saves.refused >= generation.MAX_SAVE_FAILURES
    ended = await message(poisoned["message"])
    assert ended.status == "error"
    assert ended.content == text_of(frames, poisoned["message"]) != ""
    # The other reply was saved by every flush, and still is.
    assert len(saves.saved[healthy["message"]]) == generation.MAX_SAVE_FAILURES
    seen += await two.recv_until(lambda f: f["type"] == "delta")
    await get_manager().flush_once()
    assert len(saves.saved[healthy["message"]]) == generation.MAX_SAVE_FAILURES + 1
    await two.send({"type": "stop", "message": healthy["message"]})
    seen += await two.done(healthy["message"])
    await two.close()
    assert seen[-1]["status"] == "stopped"
    assert (await message(healthy["message"])).content == text_of(seen, healthy["message"])


async def test_the_flush_loop_survives_a_failure_that_is_not_the_databases(
    upstream, alice, settings, monkeypatch
) -> None:
    settings.STREAM_FLUSH_SECONDS = 0.02
    flush = progress.flush_progress
    loop = asyncio.get_running_loop()
    saved_after_failure = asyncio.Event()
    calls = {"failed": 0}

    def failing_once(updates: list[progress.Progress], beats: list[int]) -> set[int]:
        if updates and not calls["failed"]:
            calls["failed"] += 1
            raise ValueError("a value the database driver refused")
        refused = flush(updates, beats)
        if updates and calls["failed"]:
            loop.call_soon_threadsafe(saved_after_failure.set)
        return refused

    monkeypatch.setattr(progress, "flush_progress", failing_once)
    upstream.push_script(tokens=400, interval_ms=5, after=400, mid="stall")
    socket = await open_socket(alice)
    accepted = await send_and_accept(socket, "keep going")
    await asyncio.wait_for(saved_after_failure.wait(), 10)
    saved = (await message(accepted["message"])).content
    await socket.send({"type": "stop", "message": accepted["message"]})
    frames = await socket.done(accepted["message"])
    await socket.close()
    assert calls["failed"] == 1
    assert saved and text_of(frames, accepted["message"]).startswith(saved)


def _fake_stream(*texts: str) -> Any:
    async def stream_chat(body: Any, **kwargs: Any) -> AsyncIterator[upstream_client.Event]:
        yield upstream_client.RequestIds("req-1", None)
        for text in texts:
            yield upstream_client.TextDelta(text)
        yield upstream_client.Usage(prompt_tokens=10, completion_tokens=4)
        yield upstream_client.Finish("stop")

    return stream_chat


async def test_text_no_database_can_store_is_saved_with_pairs_joined_and_the_rest_replaced(
    upstream, alice, settings, monkeypatch
) -> None:
    """Whatever reaches the generation, its end is written: a surrogate pair split in two
    deltas is joined, a lone surrogate is replaced by U+FFFD."""
    monkeypatch.setattr(
        upstream_client, "stream_chat", _fake_stream("ok \ud83d", "\ude42 a\udc00b")
    )
    socket = await open_socket(alice)
    accepted = await send_and_accept(socket, "hello")
    frames = await socket.done(accepted["message"])
    await socket.close()
    assert frames[-1]["status"] == "complete"
    reply = await message(accepted["message"])
    assert (reply.status, reply.content) == ("complete", "ok \U0001f642 a\ufffdb")


async def test_a_reply_whose_end_cannot_be_written_ends_in_error_over_its_saved_text(
    upstream, alice, settings, monkeypatch
) -> None:
    finish = progress.finish_generation
    attempts: list[bool] = []

    def refusing(outcome: progress.Outcome) -> Message | None:
        attempts.append(outcome.keep_saved_text)
        if not outcome.keep_saved_text:
            raise ValueError("a value the database driver refused")
        return finish(outcome)

    monkeypatch.setattr(progress, "finish_generation", refusing)
    upstream.push_script(tokens=5, interval_ms=1)
    socket = await open_socket(alice)
    accepted = await send_and_accept(socket, "hello")
    frames = await socket.done(accepted["message"])
    await socket.close()
    assert attempts == [False, False, True]
    assert (frames[-1]["status"], frames[-1]["error"]["code"]) == (
        "error",
        generation.SAVE_FAILED,
    )
    reply = await message(accepted["message"])
    assert reply.status == "error"
    charge = await database_sync_to_async(Charge.objects.get)(message_id=accepted["message"])
    assert charge.state == Charge.State.SETTLED


@database_sync_to_async
def _plant_stale(user: Any, conversation_id: int, model_id: int, content: str) -> Message:
    stale = Message.objects.create(
        conversation_id=conversation_id,
        user=user,
        role="assistant",
        status="streaming",
        content=content,
        seq=3,
        model_id=model_id,
        input_price=Decimal("0.27216"),
        output_price=Decimal("0.27216"),
        prompt_tokens=10,
        usage_estimated=True,
        heartbeat_at=timezone.now() - timedelta(minutes=5),
    )
    Charge.objects.create(user=user, message=stale, model_id=MODEL, reserved=Decimal("1"))
    return stale


async def test_the_reaper_settles_every_stale_reply_even_when_one_cannot_be(
    upstream, alice, monkeypatch
) -> None:
    upstream.push_script(tokens=1, interval_ms=1)
    socket = await open_socket(alice)
    accepted = await send_and_accept(socket, "first")
    await socket.done(accepted["message"])
    await socket.close()
    first = await message(accepted["message"])
    broken = await _plant_stale(alice, first.conversation_id, first.model_id, "cannot price")
    fine = await _plant_stale(alice, first.conversation_id, first.model_id, "half an answer")
    price = settlement.price_reply

    def price_or_fail(reply: Message) -> Decimal | None:
        if reply.pk == broken.pk:
            raise ValueError("a row the database refuses")
        return price(reply)

    monkeypatch.setattr(settlement, "price_reply", price_or_fail)
    reaped = await get_manager().reap()
    assert sorted(reaped) == sorted([broken.pk, fine.pk])
    settled = await message(fine.pk)
    assert (settled.status, settled.content) == ("interrupted", "half an answer")
    assert settled.cost is not None
    # The one that could not be settled is not left streaming; its charge keeps its reservation.
    ended = await message(broken.pk)
    assert (ended.status, ended.content) == ("interrupted", "cannot price")
    charge = await database_sync_to_async(Charge.objects.get)(message_id=broken.pk)
    assert (charge.state, charge.reserved) == (Charge.State.RESERVED, Decimal("1"))


async def test_a_bad_control_request_does_not_end_the_control_channel(upstream, alice) -> None:
    upstream.push_script(tokens=400, interval_ms=5, after=400, mid="stall")
    socket = await open_socket(alice)
    accepted = await send_and_accept(socket, "keep going")
    await socket.recv_until(lambda f: f["type"] == "delta")
    manager = get_manager()
    group = control_group(accepted["message"])
    # A snapshot request without an address to answer to, then a stop, on the same channel.
    await manager.layer.group_send(group, {"type": "gen.snapshot", "message": accepted["message"]})
    await manager.layer.group_send(group, {"type": "gen.stop", "message": accepted["message"]})
    frames = await socket.done(accepted["message"])
    await socket.close()
    assert frames[-1]["status"] == "stopped"


async def test_the_process_removes_images_never_sent_as_part_of_its_periodic_work(
    upstream, alice, settings, monkeypatch
) -> None:
    from chat import attachments
    from chat.models import Attachment

    settings.UNATTACHED_IMAGE_SECONDS = 3600
    loop = asyncio.get_running_loop()
    swept = asyncio.Event()
    remove = attachments.remove_unattached

    def removing(older_than: Any) -> int:
        removed = remove(older_than)
        loop.call_soon_threadsafe(swept.set)
        return removed

    monkeypatch.setattr(attachments, "remove_unattached", removing)

    @database_sync_to_async
    def upload_long_ago() -> int:
        image = Attachment.objects.create(
            owner=alice, content_type="image/png", data=b"x", size=1, width=1, height=1
        )
        Attachment.objects.filter(pk=image.pk).update(
            created_at=timezone.now() - timedelta(hours=2)
        )
        return image.pk

    image = await upload_long_ago()
    # The first round of the periodic work runs when the process's background work starts.
    socket = await open_socket(alice)
    await asyncio.wait_for(swept.wait(), 10)
    await socket.close()
    gone = not await database_sync_to_async(Attachment.objects.filter(pk=image).exists)()
    assert gone
