"""With several processes, a reply's deltas cross the channel layer only for conversations
that sockets of another process watch (`GenerationManager.broadcast`); starts, ends and titles
always cross. Another process says so by announcing its watched conversations, or by asking
for a snapshot of the reply."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import Any

import pytest

from chat.events import WATCHERS_GROUP, conversation_group, watchers_event, watchers_question
from chat.realtime import consumer as consumer_module
from chat.realtime import engine
from chat.realtime.consumer import ChatConsumer
from chat.realtime.engine import GenerationManager
from chat.realtime.generation import Snapshot


class RecordingLayer:
    """A channel layer of several processes (not the in-memory one) that records sends."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    async def group_send(self, group: str, event: dict[str, Any]) -> None:
        self.sent.append((group, event))

    async def send(self, channel: str, event: dict[str, Any]) -> None:
        self.sent.append((channel, event))


@pytest.fixture
def manager() -> GenerationManager:
    return GenerationManager(RecordingLayer())  # type: ignore[arg-type]


def crossed(manager: GenerationManager) -> list[str]:
    layer: RecordingLayer = manager.layer  # type: ignore[assignment]
    return [event["kind"] for group, event in layer.sent if group == conversation_group(7)]


async def stream_one(manager: GenerationManager) -> None:
    for kind, seq in (("started", 0), ("delta", 1), ("delta", 2), ("done", 2)):
        await manager.broadcast(7, 70, seq, kind, "{}")


async def test_deltas_nobody_elsewhere_watches_stay_in_the_process(manager) -> None:
    await stream_one(manager)
    assert crossed(manager) == ["started", "done"]


async def test_deltas_cross_once_another_process_announces_a_watcher(manager) -> None:
    await manager._control(watchers_event("another-process", [7, 8]))
    await stream_one(manager)
    assert crossed(manager) == ["started", "delta", "delta", "done"]


async def test_a_process_own_announcement_does_not_count(manager) -> None:
    await manager._control(watchers_event(manager.origin, [7]))
    await stream_one(manager)
    assert crossed(manager) == ["started", "done"]


async def test_an_announcement_not_repeated_is_forgotten(manager, monkeypatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(engine.time, "monotonic", lambda: now[0])
    await manager._control(watchers_event("another-process", [7]))
    now[0] += engine.WATCH_ANNOUNCE_SECONDS * 3 - 1
    assert manager.is_watched_elsewhere(7)
    now[0] += 2
    assert not manager.is_watched_elsewhere(7)


async def test_a_snapshot_asked_from_elsewhere_makes_the_deltas_cross(manager, monkeypatch) -> None:
    snap = Snapshot(70, 7, 1, "Hel", "", "streaming")
    monkeypatch.setattr(manager, "local_snapshot", lambda message_id: snap)
    await manager._control({"type": "gen.snapshot", "message": 70, "reply_to": "elsewhere!1"})
    await stream_one(manager)
    assert crossed(manager) == ["started", "delta", "delta", "done"]


async def test_a_malformed_announcement_changes_nothing(manager) -> None:
    await manager._control({"type": "gen.watchers", "origin": "x", "conversations": "7"})
    await manager._control({"type": "gen.watchers", "origin": "x", "conversations": ["7", None]})
    assert manager.watched_elsewhere == {}


async def test_announcements_go_to_every_process(manager) -> None:
    await manager.announce([3, 4])
    await manager.announce([])
    layer: RecordingLayer = manager.layer
    assert layer.sent == [(WATCHERS_GROUP, watchers_event(manager.origin, [3, 4]))]


async def test_a_process_that_starts_asks_the_others_and_they_answer(manager) -> None:
    layer: RecordingLayer = manager.layer
    manager.local = {5: {object()}, 9: {object()}}
    await manager._control(watchers_question("a-new-process"))
    await manager._control(watchers_question(manager.origin))  # its own question: no answer
    assert layer.sent == [(WATCHERS_GROUP, watchers_event(manager.origin, [5, 9]))]


async def test_expired_announcements_are_forgotten_whether_or_not_a_delta_asks(
    manager, monkeypatch
) -> None:
    now = [1000.0]
    monkeypatch.setattr(engine.time, "monotonic", lambda: now[0])
    await manager._control(watchers_event("another-process", list(range(100))))
    now[0] += engine.WATCH_ANNOUNCE_SECONDS * 3 + 1
    await manager._control(watchers_event("another-process", [500]))
    manager._forget_expired()
    assert list(manager.watched_elsewhere) == [500]


async def test_each_announcement_renews_the_membership_of_the_watchers_group(
    manager, monkeypatch
) -> None:
    joined: list[str] = []

    async def group_add(group: str, channel: str) -> None:
        joined.append(group)

    manager.layer.group_add = group_add
    sleeps = [0]

    async def sleep(seconds: float) -> None:
        sleeps[0] += 1
        if sleeps[0] > 2:
            raise asyncio.CancelledError

    monkeypatch.setattr(engine.asyncio, "sleep", sleep)
    with pytest.raises(asyncio.CancelledError):
        await manager._announce_loop()
    assert joined == [WATCHERS_GROUP, WATCHERS_GROUP]


class Socket(ChatConsumer):
    """A consumer without a connection: what it sends is recorded."""

    def __init__(self, manager: Any) -> None:
        self.manager = manager
        self.channel_name = "here!1"
        self.held = {}
        self.delivered = {}
        self.finished = OrderedDict()
        self.pending_tasks = set()
        self.texts: list[str] = []
        self.sent = asyncio.Event()

    async def send_text(self, text: str) -> None:
        self.texts.append(text)
        self.sent.set()


async def test_a_resync_no_snapshot_answers_lets_the_end_through(manager, monkeypatch) -> None:
    """The reply ended in its process before the snapshot request got there: the end the
    socket holds goes out after a while instead of never (the page then re-reads the reply)."""
    monkeypatch.setattr(consumer_module, "SNAPSHOT_TIMEOUT", 0.01)
    socket = Socket(manager)
    socket.delivered[70] = 0
    await socket._deliver_delta(70, {"seq": 5, "frame": '{"type":"delta"}'})
    assert 70 in socket.held  # a gap: waiting for a snapshot
    await socket.deliver({"message": 70, "kind": "done", "seq": 9, "frame": '{"type":"done"}'})
    assert socket.texts == []
    await asyncio.wait_for(socket.sent.wait(), 5)
    assert socket.texts == ['{"type":"done"}']
    assert 70 not in socket.held
