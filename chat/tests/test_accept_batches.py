"""Requests accepted in batches (`replies.accept_many`, `chat/realtime/accepting.py`): every
guarantee of a lone accept holds for each request of a batch, and one request's refusal or
failure changes nothing for the others."""

from __future__ import annotations

import asyncio
import json
import threading
from decimal import Decimal
from typing import Any

import pytest
from django.db import DatabaseError, IntegrityError, OperationalError, connection

from chat import errors
from chat.actions import replies
from chat.errors import Refused
from chat.models import Charge, Conversation, Message, Profile
from chat.protocol import parse_client_frame
from chat.realtime import accepting
from chat.realtime.accepting import AcceptQueue
from chat.testing.wsclient import MODEL, open_socket, request_id, send_frame

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)


def send(content: str = "hello", *, rid: str | None = None, model: str = MODEL) -> Any:
    return parse_client_frame(
        json.dumps(
            {
                "type": "send",
                "request_id": rid or request_id(),
                "conversation": None,
                "model": model,
                "content": content,
            }
        )
    )


@pytest.fixture
def configured(settings: Any) -> None:
    settings.LAVA_FORWARD_TOKEN = "t"
    settings.MESSAGES_PER_MINUTE = 1000
    settings.MAX_CONCURRENT_GENERATIONS = 100


def test_a_batch_accepts_each_request_as_alone_and_answers_in_order(make_user, configured) -> None:
    users = [make_user() for _ in range(3)]
    # Given in an order other than the users' (the batch locks users in id order).
    requests = [(users[2], send("c")), (users[0], send("a")), (users[1], send("b"))]
    results = replies.accept_many(requests)
    assert all(isinstance(result, replies.GenerationPlan) for result in results)
    plans: list[replies.GenerationPlan] = results  # type: ignore[assignment]
    for (user, frame), plan in zip(requests, plans, strict=True):
        assert plan.user_id == user.pk
        assert plan.request_id == frame.request_id
        assert plan.user_message is not None
        assert plan.user_message["content"] == frame.content
        reply = Message.objects.get(pk=plan.message_id)
        assert (reply.status, reply.user_id) == ("streaming", user.pk)
        charge = Charge.objects.get(pk=plan.charge_id)
        assert charge.reserved == plan.reserved > 0
    assert Conversation.objects.count() == 3


def test_a_refused_request_writes_nothing_and_the_others_are_accepted(
    make_user, configured
) -> None:
    alice, bob, carol = make_user(), make_user(), make_user()
    results = replies.accept_many(
        [(alice, send("a")), (bob, send("b", model="no/such-model")), (carol, send("c"))]
    )
    assert isinstance(results[0], replies.GenerationPlan)
    assert isinstance(results[1], Refused)
    assert results[1].code == errors.MODEL_UNAVAILABLE
    assert isinstance(results[2], replies.GenerationPlan)
    assert not Message.objects.filter(user=bob).exists()
    assert not Conversation.objects.filter(owner=bob).exists()
    assert Message.objects.filter(user__in=[alice, carol]).count() == 4


def test_a_request_id_repeated_in_one_batch_is_accepted_once(make_user, configured) -> None:
    alice = make_user()
    rid = request_id()
    first, second = replies.accept_many([(alice, send(rid=rid)), (alice, send(rid=rid))])
    assert isinstance(first, replies.GenerationPlan) and not first.duplicate
    assert isinstance(second, replies.GenerationPlan) and second.duplicate
    assert second.message_id == first.message_id
    assert Message.objects.filter(user=alice, role="assistant").count() == 1
    assert Charge.objects.filter(user=alice).count() == 1


def test_the_budget_holds_across_the_requests_of_one_batch(make_user, configured, settings) -> None:
    """Two sends of one user in one batch: the second sees the first's reservation."""
    probe = make_user()
    Profile.objects.update_or_create(user=probe, defaults={"budget_mode": "unlimited"})
    reserved = replies.accept(probe, send("hello")).reserved
    alice = make_user()
    settings.MONTHLY_BUDGET_USD = reserved * Decimal("1.5")
    first, second = replies.accept_many([(alice, send("hello")), (alice, send("hello"))])
    assert isinstance(first, replies.GenerationPlan)
    assert isinstance(second, Refused) and second.code == errors.BUDGET_EXCEEDED
    assert Charge.objects.filter(user=alice).count() == 1


def test_a_failure_other_than_a_refusal_is_that_requests_alone(
    make_user, configured, monkeypatch
) -> None:
    alice, bob = make_user(), make_user()
    real = replies._accept_send

    def failing_for_bob(user, frame, state):
        if user.pk == bob.pk:
            raise IntegrityError("a value the database refuses")
        return real(user, frame, state)

    monkeypatch.setattr(replies, "_accept_send", failing_for_bob)
    first, second = replies.accept_many([(alice, send("a")), (bob, send("b"))])
    assert isinstance(first, replies.GenerationPlan)
    assert isinstance(second, IntegrityError)
    assert Message.objects.filter(user=alice).count() == 2
    assert not Message.objects.filter(user=bob).exists()


class Recorder:
    """Stands in for `replies.accept_many`: records each batch, answers after `release`."""

    def __init__(self, answer: Any = None) -> None:
        self.batches: list[list[str]] = []
        self.answer = answer

    def __call__(self, requests: list[tuple[Any, Any]]) -> list[Any]:
        self.batches.append([frame.content for _, frame in requests])
        if self.answer is not None:
            raise self.answer
        return [f"plan of {frame.content}" for _, frame in requests]


async def test_a_lone_request_goes_at_once_and_a_burst_goes_in_batches(monkeypatch) -> None:
    recorder = Recorder()
    monkeypatch.setattr(replies, "accept_many", recorder)
    monkeypatch.setattr(accepting, "MAX_BATCH", 4)
    queue: Any = AcceptQueue()
    assert await queue.accept(None, send("lone")) == "plan of lone"
    assert recorder.batches == [["lone"]]
    # Ten in one turn of the loop: in batches of at most MAX_BATCH, in order, each answered
    # with its own plan.
    names = [f"q{i}" for i in range(10)]
    answers = await asyncio.gather(*(queue.accept(None, send(n)) for n in names))
    assert answers == [f"plan of {n}" for n in names]
    assert recorder.batches[1:] == [
        ["q0", "q1", "q2", "q3"],
        ["q4", "q5", "q6", "q7"],
        ["q8", "q9"],
    ]


async def test_a_batch_that_fails_as_a_whole_fails_each_request(monkeypatch) -> None:
    monkeypatch.setattr(replies, "accept_many", Recorder(answer=RuntimeError("database away")))
    queue: Any = AcceptQueue()
    results = await asyncio.gather(
        *(queue.accept(None, send(n)) for n in ("a", "b", "c")),
        return_exceptions=True,
    )
    assert [str(r) for r in results] == ["database away"] * 3
    # The queue goes on: the next request is accepted.
    monkeypatch.setattr(replies, "accept_many", Recorder())
    assert await queue.accept(None, send("d")) == "plan of d"


async def test_a_waiter_that_goes_away_leaves_the_others_answered(monkeypatch) -> None:
    monkeypatch.setattr(replies, "accept_many", Recorder())
    queue: Any = AcceptQueue()
    first = asyncio.ensure_future(queue.accept(None, send("a")))
    gone = asyncio.ensure_future(queue.accept(None, send("b")))
    last = asyncio.ensure_future(queue.accept(None, send("c")))
    await asyncio.sleep(0)
    gone.cancel()
    assert await first == "plan of a"
    assert await last == "plan of c"
    assert gone.cancelled()


async def test_a_request_whose_socket_went_away_while_waiting_is_not_accepted(
    monkeypatch,
) -> None:
    running, release = threading.Event(), threading.Event()
    recorder = Recorder()

    def first_blocks(requests: list[tuple[Any, Any]]) -> list[Any]:
        if not recorder.batches:
            running.set()
            release.wait(10)
        return recorder(requests)

    monkeypatch.setattr(replies, "accept_many", first_blocks)
    queue: Any = AcceptQueue()
    first = asyncio.ensure_future(queue.accept(None, send("a")))
    assert await asyncio.to_thread(running.wait, 10)  # "a" is on the database thread
    gone = asyncio.ensure_future(queue.accept(None, send("b")))
    last = asyncio.ensure_future(queue.accept(None, send("c")))
    await asyncio.sleep(0)
    gone.cancel()
    release.set()
    assert await first == "plan of a"
    assert await last == "plan of c"
    assert recorder.batches == [["a"], ["c"]]


def test_a_batch_whose_transaction_broke_fails_whole(make_user, configured, monkeypatch) -> None:
    """A request fails and its savepoint cannot be rolled back (the connection was lost): the
    other requests' plans must not be handed out, since nothing of the batch is written."""
    alice, bob = make_user(), make_user()
    real_send = replies._accept_send
    real_rollback = connection.savepoint_rollback

    def failing_for_bob(user, frame, state):
        if user.pk == bob.pk:
            raise OperationalError("server closed the connection unexpectedly")
        return real_send(user, frame, state)

    def rollback_fails(sid: str) -> None:
        real_rollback(sid)
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(replies, "_accept_send", failing_for_bob)
    monkeypatch.setattr(connection, "savepoint_rollback", rollback_fails)
    with pytest.raises(DatabaseError):
        replies.accept_many([(alice, send("a")), (bob, send("b"))])
    monkeypatch.undo()
    assert not Message.objects.exists()
    assert not Charge.objects.exists()


async def test_a_burst_of_sends_over_sockets_is_accepted_in_batches(
    upstream, make_user, settings, monkeypatch
) -> None:
    settings.MESSAGES_PER_MINUTE = 1000
    upstream.set_default_script(tokens=2, interval_ms=1)
    sizes: list[int] = []
    real = replies.accept_many

    def recording(requests: list[tuple[Any, Any]]) -> list[Any]:
        sizes.append(len(requests))
        return real(requests)

    monkeypatch.setattr(replies, "accept_many", recording)
    users = [await asyncio.to_thread(make_user) for _ in range(12)]
    sockets = [await open_socket(user) for user in users]
    await asyncio.gather(*(s.send(send_frame("hello", model=MODEL)) for s in sockets))
    accepted = [
        (await s.recv_until(lambda frame: frame["type"] == "accepted"))[-1] for s in sockets
    ]
    done = [await s.done(frame["message"]) for s, frame in zip(sockets, accepted, strict=True)]
    for socket in sockets:
        await socket.close()
    assert sum(sizes) == 12
    assert max(sizes) > 1  # some arrived while an earlier batch was being accepted
    assert all(frames[-1]["status"] == "complete" for frames in done)
    replies_made = await asyncio.to_thread(
        lambda: sorted(Message.objects.filter(role="assistant").values_list("user_id", flat=True))
    )
    assert replies_made == sorted(user.pk for user in users)
