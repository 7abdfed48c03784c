"""The delivery rule of a socket, boundary by boundary, without timing: what a watcher receives
after a snapshot is exactly the deltas that follow it, once each, in order (docs/protocol.md).

The consumer is driven directly: frames of a generation are handed to `deliver`, snapshots to
its snapshot paths, and every frame the socket would send is recorded.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from types import SimpleNamespace
from typing import Any

from chat import protocol
from chat.realtime.consumer import ChatConsumer, snapshot_frames
from chat.realtime.generation import Snapshot
from chat.realtime.watching import WatchList

CONVERSATION, MESSAGE = 7, 42


class Manager:
    """The parts of the generation manager a socket's delivery uses."""

    def __init__(self) -> None:
        self.snapshots: dict[int, Snapshot] = {}
        self.requested: list[int] = []
        self.remote = False

    def local_snapshot(self, message_id: int) -> Snapshot | None:
        return self.snapshots.get(message_id)

    async def request_snapshot(self, message_id: int, reply_to: str) -> None:
        self.requested.append(message_id)


class Recorder(ChatConsumer):
    """A consumer whose frames are recorded instead of written to a connection."""

    # Stand-ins: a user with a pk, and a manager that records what it is asked.
    user: Any
    manager: Any

    def __init__(self) -> None:
        super().__init__()
        self.user = SimpleNamespace(pk=1)
        self.watching = WatchList(10)
        self.watching.add(CONVERSATION)
        self.delivered: dict[int, int] = {}
        self.held: dict[int, list[dict[str, Any]]] = {}
        self.finished: OrderedDict[int, None] = OrderedDict()
        self.closing = False
        self.sent_chars = self.acked_chars = 0
        self.max_unacked = self.max_buffered = 10**9
        self.buffered = None
        self.write_text = None
        self.manager = Manager()
        self.sent: list[Any] = []
        # Called with each frame as it is written: a test can deliver more frames meanwhile,
        # as a generation does while the socket awaits its send.
        self.on_send: Any = None

    async def frame_send(self, message: dict[str, Any]) -> None:
        frame = json.loads(message["text"])
        self.sent.append(frame)
        if self.on_send is not None:
            await self.on_send(frame)


def delta(seq: int, text: str = "") -> dict[str, Any]:
    return {
        "type": "chat.stream",
        "message": MESSAGE,
        "seq": seq,
        "kind": "delta",
        "frame": protocol.delta_frame(CONVERSATION, MESSAGE, seq, text or f"<{seq}>", ""),
        "origin": "elsewhere",
    }


def snap(seq: int, content: str = "", reasoning: str = "") -> Snapshot:
    return Snapshot(MESSAGE, CONVERSATION, seq, content or f"<1..{seq}>", reasoning, "streaming")


def kinds(socket: Recorder) -> list[tuple[str, int]]:
    return [(frame["type"], frame["seq"]) for frame in socket.sent]


async def test_a_delta_already_in_the_snapshot_is_not_delivered_again() -> None:
    socket = Recorder()
    await socket._deliver_snapshot(snap(5))
    await socket.deliver(delta(4))
    await socket.deliver(delta(5))
    assert kinds(socket) == [("snapshot", 5)]


async def test_the_delta_right_after_the_snapshot_is_delivered_and_the_next_ones_in_order() -> None:
    socket = Recorder()
    await socket._deliver_snapshot(snap(5))
    for seq in (6, 7, 8):
        await socket.deliver(delta(seq))
    assert kinds(socket) == [("snapshot", 5), ("delta", 6), ("delta", 7), ("delta", 8)]


async def test_a_gap_of_one_is_noticed_and_answered_with_an_exact_snapshot() -> None:
    socket = Recorder()
    await socket._deliver_snapshot(snap(5))
    # Delta 6 was lost; the running generation is at 7 when 7 arrives.
    socket.manager.snapshots[MESSAGE] = snap(7)
    await socket.deliver(delta(7))
    await socket.deliver(delta(8))
    assert kinds(socket) == [("snapshot", 5), ("snapshot", 7), ("delta", 8)]


async def test_a_larger_gap_from_another_process_holds_deltas_until_its_snapshot() -> None:
    socket = Recorder()
    await socket._deliver_snapshot(snap(5))
    await socket.deliver(delta(9))  # 6..8 lost; the generation runs elsewhere
    assert socket.manager.requested == [MESSAGE]
    for seq in (10, 11, 12):
        await socket.deliver(delta(seq))
    assert kinds(socket) == [("snapshot", 5)]
    # The other process's snapshot is at 11: 10 and 11 are in it, 12 follows.
    await socket.chat_snapshot(_event(snap(11)))
    assert kinds(socket) == [("snapshot", 5), ("snapshot", 11), ("delta", 12)]
    # A late second answer changes nothing.
    await socket.chat_snapshot(_event(snap(11)))
    assert kinds(socket) == [("snapshot", 5), ("snapshot", 11), ("delta", 12)]


def _event(snapshot: Snapshot) -> dict[str, Any]:
    return {
        "type": "chat.snapshot",
        "message": snapshot.message_id,
        "conversation": snapshot.conversation_id,
        "seq": snapshot.seq,
        "content": snapshot.content,
        "reasoning": snapshot.reasoning,
        "status": snapshot.status,
    }


async def test_deltas_held_while_a_remote_snapshot_is_on_its_way_follow_it_in_order() -> None:
    socket = Recorder()
    # Watching a reply another process runs: its deltas wait for its snapshot.
    socket.held[MESSAGE] = []
    for seq in (3, 4, 5, 6):
        await socket.deliver(delta(seq))
    assert socket.sent == []
    await socket.chat_snapshot(_event(snap(4)))
    assert kinds(socket) == [("snapshot", 4), ("delta", 5), ("delta", 6)]


async def test_the_end_of_a_reply_held_with_its_deltas_comes_last() -> None:
    socket = Recorder()
    socket.held[MESSAGE] = []
    await socket.deliver(delta(3))
    done = protocol.done_frame(
        CONVERSATION,
        MESSAGE,
        "complete",
        seq=3,
        prompt_tokens=1,
        completion_tokens=3,
        estimated=False,
        cost=None,
    )
    await socket.deliver(
        {"message": MESSAGE, "seq": 3, "kind": "done", "frame": protocol.encode(done)}
    )
    await socket.chat_snapshot(_event(snap(2)))
    assert [f["type"] for f in socket.sent] == ["snapshot", "delta", "done"]
    await socket.deliver(delta(4))  # nothing after the end
    assert [f["type"] for f in socket.sent] == ["snapshot", "delta", "done"]


async def test_a_long_snapshot_goes_in_pieces_and_deltas_arriving_meanwhile_follow_it() -> None:
    socket = Recorder()
    content = "c" * (2 * protocol.SNAPSHOT_PIECE_CHARS + 5)
    reasoning = "r" * (protocol.SNAPSHOT_PIECE_CHARS + 1)
    arrivals = iter([delta(10, "late"), delta(11, "later")])

    async def a_delta_arrives(frame: dict[str, Any]) -> None:
        event = next(arrivals, None)
        if event is not None:
            await socket.deliver(event)

    socket.on_send = a_delta_arrives
    await socket._deliver_snapshot(snap(9, content, reasoning))
    assert [f["type"] for f in socket.sent] == ["snapshot"] + ["snapshot_part"] * 4 + [
        "delta",
        "delta",
    ]
    pieces = socket.sent[:5]
    assert all(
        len(f["content"]) + len(f["reasoning"]) <= protocol.SNAPSHOT_PIECE_CHARS for f in pieces
    )
    assert [f["more"] for f in pieces] == [True, True, True, True, False]
    assert "".join(f["content"] for f in pieces) == content
    assert "".join(f["reasoning"] for f in pieces) == reasoning
    assert {f["seq"] for f in pieces} == {9}
    assert [f["content"] for f in socket.sent[5:]] == ["late", "later"]


def test_a_short_snapshot_is_one_frame_with_its_reasoning() -> None:
    [frame] = snapshot_frames(snap(3, "answer", "thought"))
    assert (frame["type"], frame["content"], frame["reasoning"]) == (
        "snapshot",
        "answer",
        "thought",
    )
    assert "more" not in frame
