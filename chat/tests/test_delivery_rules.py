"""The rest of a socket's delivery rule, boundary by boundary (test_delivery.py has the
sequence numbers): frames that pass straight through, each reply's end delivered once, what a
socket remembers, flow control at its exact limits, remote snapshots field by field, snapshots
in pieces, and when a reply counts as orphaned. Each test pins a rule a mutation of the code
showed unprotected (docs/reliability.md, "Mutation testing")."""

from __future__ import annotations

import datetime
import json
from typing import Any

import pytest
from django.utils import timezone

from chat import protocol
from chat.realtime import consumer
from chat.realtime.consumer import CLOSE_TOO_SLOW, FINISHED_MEMORY

from .test_delivery import CONVERSATION, MESSAGE, Manager, Recorder, delta, snap


class Requests(Manager):
    """A manager that also records where each requested snapshot is to be sent."""

    def __init__(self) -> None:
        super().__init__()
        self.reply_to: list[tuple[int, str]] = []

    async def request_snapshot(self, message_id: int, reply_to: str) -> None:
        await super().request_snapshot(message_id, reply_to)
        self.reply_to.append((message_id, reply_to))


class Socket(Recorder):
    """A recording consumer that also records how it was closed."""

    def __init__(self) -> None:
        super().__init__()
        self.manager = Requests()
        self.closed_with: list[int] = []

    async def close(self, code: int | bool | None = None, reason: str | None = None) -> None:
        assert isinstance(code, int)
        self.closed_with.append(code)


def done_event(message_id: int, seq: int = 1) -> dict[str, Any]:
    frame = protocol.done_frame(
        CONVERSATION,
        message_id,
        "complete",
        seq=seq,
        prompt_tokens=1,
        completion_tokens=1,
        estimated=False,
        cost=None,
    )
    return {"message": message_id, "seq": seq, "kind": "done", "frame": protocol.encode(frame)}


def ends(socket: Recorder) -> list[int]:
    return [frame["message"] for frame in socket.sent if frame["type"] == "done"]


# Frames of a generation ---------------------------------------------------------------------


async def test_frames_other_than_deltas_and_ends_pass_straight_through() -> None:
    socket = Socket()
    started = protocol.encode(
        protocol.started_frame(CONVERSATION, MESSAGE, {"id": 1, "content": "hi"}, "m")
    )
    await socket.deliver({"message": MESSAGE, "kind": "started", "frame": started})
    assert [frame["type"] for frame in socket.sent] == ["started"]


async def test_the_end_of_a_reply_is_delivered_once() -> None:
    socket = Socket()
    await socket.deliver(done_event(MESSAGE))
    await socket.deliver(done_event(MESSAGE))
    assert ends(socket) == [MESSAGE]


async def test_the_end_of_a_reply_whose_deltas_were_never_seen_is_delivered() -> None:
    socket = Socket()
    await socket._deliver_done(MESSAGE, done_event(MESSAGE)["frame"])
    # The end of a reply read back from the database comes as a frame not yet encoded.
    await socket._deliver_done(MESSAGE + 1, json.loads(done_event(MESSAGE + 1)["frame"]))
    assert ends(socket) == [MESSAGE, MESSAGE + 1]


async def test_a_finished_reply_leaves_nothing_behind_on_the_socket() -> None:
    socket = Socket()
    await socket._deliver_snapshot(snap(3))
    await socket.deliver(delta(4))
    await socket.deliver(done_event(MESSAGE, 4))
    assert MESSAGE not in socket.delivered and MESSAGE not in socket.held
    # Frames of it that come late are dropped.
    await socket.deliver(delta(5))
    assert [frame["type"] for frame in socket.sent] == ["snapshot", "delta", "done"]


async def test_a_snapshot_answered_after_the_end_of_its_reply_is_dropped() -> None:
    socket = Socket()
    # Waiting for another process's snapshot when the reply's end is delivered (a stop).
    socket.held[MESSAGE] = []
    await socket._deliver_done(MESSAGE, done_event(MESSAGE, 4)["frame"])
    await socket.chat_snapshot(
        {
            "type": "chat.snapshot",
            "message": MESSAGE,
            "conversation": CONVERSATION,
            "seq": 4,
            "content": "late",
            "reasoning": "",
            "status": "streaming",
        }
    )
    assert [frame["type"] for frame in socket.sent] == ["done"]


async def test_deltas_after_a_delivered_delta_are_checked_against_it() -> None:
    socket = Socket()
    await socket._deliver_snapshot(snap(5))
    for seq in (6, 6, 7, 5):
        await socket.deliver(delta(seq))
    assert [(f["type"], f["seq"]) for f in socket.sent] == [
        ("snapshot", 5),
        ("delta", 6),
        ("delta", 7),
    ]
    # A gap after a delivered delta is noticed too.
    socket.manager.snapshots[MESSAGE] = snap(9)
    await socket.deliver(delta(9))
    assert [(f["type"], f["seq"]) for f in socket.sent][-1] == ("snapshot", 9)


async def test_a_socket_remembers_the_ends_of_its_latest_replies_and_forgets_older_ones() -> None:
    socket = Socket()
    newest = FINISHED_MEMORY + 1
    for message_id in range(1, newest + 1):
        await socket.deliver(done_event(message_id))
    assert len(socket.finished) == FINISHED_MEMORY
    # A late duplicate of any remembered end is dropped: the oldest kept and the newest.
    await socket.deliver(done_event(2))
    await socket.deliver(done_event(newest))
    assert ends(socket) == list(range(1, newest + 1))
    # The first one was let go to keep the memory bounded.
    await socket.deliver(done_event(1))
    assert ends(socket)[-1] == 1


# Flow control -------------------------------------------------------------------------------


async def test_a_client_exactly_at_the_unacknowledged_limit_still_gets_frames() -> None:
    socket = Socket()
    socket.max_unacked = 40
    socket.acked_chars = 10
    # Two frames of 25 characters: exactly 10 acknowledged + 40.
    for _ in range(2):
        await socket.send_text('"' + "a" * 23 + '"')
    assert socket.sent_chars == 50
    assert socket.closed_with == [] and len(socket.sent) == 2


async def test_one_character_past_the_unacknowledged_limit_closes_the_socket(
    caplog: pytest.LogCaptureFixture,
) -> None:
    socket = Socket()
    socket.max_unacked = 40
    socket.acked_chars = 10
    await socket.send_text('"' + "c" * 49 + '"')
    assert socket.closed_with == [CLOSE_TOO_SLOW] and socket.sent == []
    # Once closing, nothing more is written.
    socket.acked_chars = 10**6
    await socket.send_text('"late"')
    assert socket.sent == [] and socket.closed_with == [CLOSE_TOO_SLOW]
    assert [r.getMessage() for r in caplog.records] == [
        "closing a socket of user 1: the client is not reading"
    ]


async def test_acknowledgements_let_the_same_client_receive_on() -> None:
    socket = Socket()
    socket.max_unacked = 10
    for _ in range(5):
        await socket.send_text('"12345678"')
        socket.acked_chars = socket.sent_chars
    assert len(socket.sent) == 5 and socket.closed_with == []


async def test_a_connection_holding_exactly_its_buffer_limit_still_gets_frames() -> None:
    socket = Socket()
    socket.max_buffered = 1000
    socket.buffered = lambda: 1000
    await socket.send_text('"fits"')
    assert len(socket.sent) == 1 and socket.closed_with == []


async def test_a_connection_holding_more_than_its_buffer_limit_is_closed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    socket = Socket()
    socket.max_buffered = 1000
    socket.buffered = lambda: 1001
    await socket.send_text('"too much"')
    assert socket.sent == [] and socket.closed_with == [CLOSE_TOO_SLOW]
    assert [r.getMessage() for r in caplog.records] == [
        "closing a socket of user 1: its connection holds 1001 unsent bytes"
    ]


async def test_a_frame_written_directly_to_the_connection_is_not_sent_again() -> None:
    socket = Socket()
    written: list[str] = []

    def direct(text: str) -> bool:
        written.append(text)
        return True

    socket.write_text = direct
    await socket.send_text('"direct"')
    assert written == ['"direct"'] and socket.sent == []


async def test_a_frame_the_connection_could_not_take_directly_goes_the_usual_way() -> None:
    socket = Socket()
    socket.write_text = lambda text: False
    await socket.send_text('"usual"')
    assert socket.sent == ["usual"]


# Snapshots ----------------------------------------------------------------------------------


async def test_a_snapshot_from_another_process_arrives_field_for_field() -> None:
    socket = Socket()
    socket.held[MESSAGE] = []
    await socket.chat_snapshot(
        {
            "type": "chat.snapshot",
            "message": MESSAGE,
            "conversation": CONVERSATION,
            "seq": 8,
            "content": "the answer so far",
            "reasoning": "the thinking so far",
            "status": "streaming",
        }
    )
    assert socket.sent == [
        protocol.snapshot_frame(
            CONVERSATION, MESSAGE, 8, "the answer so far", "the thinking so far", "streaming"
        )
    ]
    assert socket.delivered[MESSAGE] == 8 and MESSAGE not in socket.held


async def test_a_lost_frame_of_a_local_reply_is_answered_with_its_exact_snapshot() -> None:
    socket = Socket()
    await socket._deliver_snapshot(snap(2))
    socket.manager.snapshots[MESSAGE] = snap(6, "exact", "thought")
    await socket.deliver(delta(4))
    assert socket.sent[-1] == protocol.snapshot_frame(
        CONVERSATION, MESSAGE, 6, "exact", "thought", "streaming"
    )
    assert socket.manager.requested == [] and MESSAGE not in socket.held


async def test_a_lost_frame_of_a_remote_reply_asks_for_a_snapshot_sent_to_this_socket() -> None:
    socket = Socket()
    socket.channel_name = "specific.socket!channel"
    await socket._deliver_snapshot(snap(2))
    await socket.deliver(delta(5))
    assert socket.manager.reply_to == [(MESSAGE, "specific.socket!channel")]
    assert MESSAGE in socket.held


async def test_an_end_delivered_while_a_snapshot_goes_out_is_the_last_frame() -> None:
    socket = Socket()
    end = done_event(MESSAGE, 3)["frame"]

    async def stopped_meanwhile(frame: dict[str, Any]) -> None:
        if frame["type"] == "snapshot":
            # A stop of the ended reply answers with its end while the snapshot is written.
            await socket._deliver_done(MESSAGE, end)

    socket.on_send = stopped_meanwhile
    await socket._deliver_snapshot(snap(3))
    assert [frame["type"] for frame in socket.sent] == ["snapshot", "done"]


def test_a_snapshot_exactly_one_piece_long_is_one_frame() -> None:
    frames = protocol.snapshot_frames(CONVERSATION, MESSAGE, 3, "abc", "de", "streaming", piece=5)
    assert frames == [protocol.snapshot_frame(CONVERSATION, MESSAGE, 3, "abc", "de", "streaming")]


def test_a_snapshot_one_character_longer_than_a_piece_goes_in_parts_content_first() -> None:
    frames = protocol.snapshot_frames(CONVERSATION, MESSAGE, 3, "abcd", "ef", "stopped", piece=5)
    assert frames == [
        {
            "type": "snapshot",
            "conversation": CONVERSATION,
            "message": MESSAGE,
            "seq": 3,
            "content": "abcd",
            "reasoning": "",
            "status": "stopped",
            "more": True,
        },
        {
            "type": "snapshot_part",
            "conversation": CONVERSATION,
            "message": MESSAGE,
            "seq": 3,
            "content": "",
            "reasoning": "ef",
            "more": False,
        },
    ]


def test_long_text_is_cut_into_whole_pieces_in_order() -> None:
    frames = protocol.snapshot_frames(CONVERSATION, MESSAGE, 9, "a" * 7, "r" * 3, "x", piece=3)
    assert [(f["type"], f["content"], f["reasoning"], f["more"]) for f in frames] == [
        ("snapshot", "aaa", "", True),
        ("snapshot_part", "aaa", "", True),
        ("snapshot_part", "a", "", True),
        ("snapshot_part", "", "rrr", False),
    ]


def test_a_long_snapshot_of_reasoning_alone_starts_with_it() -> None:
    frames = protocol.snapshot_frames(CONVERSATION, MESSAGE, 1, "", "r" * 4, "streaming", piece=3)
    assert [(f["type"], f["content"], f["reasoning"], f["more"]) for f in frames] == [
        ("snapshot", "", "rrr", True),
        ("snapshot_part", "", "r", False),
    ]


# Orphans ------------------------------------------------------------------------------------


NOW = datetime.datetime(2026, 1, 1, 12, 0, tzinfo=datetime.UTC)


@pytest.fixture
def frozen(monkeypatch: pytest.MonkeyPatch) -> datetime.datetime:
    monkeypatch.setattr(timezone, "now", lambda: NOW)
    return NOW


def test_with_one_process_a_reply_it_does_not_run_is_orphaned(frozen: datetime.datetime) -> None:
    socket = Socket()
    assert socket._orphaned(frozen) is True


def test_a_reply_of_another_process_is_orphaned_only_once_its_heartbeat_is_stale(
    frozen: datetime.datetime, settings: Any
) -> None:
    settings.STREAM_STALE_SECONDS = 30
    socket = Socket()
    socket.manager.remote = True
    stale = datetime.timedelta(seconds=30)
    assert socket._orphaned(frozen - stale) is False
    assert socket._orphaned(frozen - stale - datetime.timedelta(milliseconds=1)) is True
    assert socket._orphaned(frozen) is False
    # A reply that never beat is no process's.
    assert socket._orphaned(None) is True


def test_the_snapshot_frames_of_a_reply_carry_its_text_and_reasoning() -> None:
    [frame] = consumer.snapshot_frames(snap(4, "answer", "thought"))
    assert frame == protocol.snapshot_frame(
        CONVERSATION, MESSAGE, 4, "answer", "thought", "streaming"
    )
