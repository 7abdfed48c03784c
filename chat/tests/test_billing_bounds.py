"""Budgets hold on every path: a reply is billed at most what was reserved for it, a reply the
provider does not end at its max_tokens is cut, every kind of send is checked against the
limit, the reservation bounds the prompt, and a conversation pays for one title."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from channels.db import database_sync_to_async

from chat.actions import replies as replies_actions
from chat.billing import budgets, prices
from chat.models import Charge, Conversation
from chat.testing.wsclient import (
    MODEL,
    message,
    open_socket,
    request_id,
    send_and_accept,
    send_frame,
    text_of,
)

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)

PRICE = Decimal("0.27216")


@database_sync_to_async
def charges_of(reply_id: int) -> list[Charge]:
    return list(Charge.objects.filter(message_id=reply_id))


@database_sync_to_async
def standing_of(user: Any) -> budgets.Standing:
    return budgets.standing(user)


async def test_a_reply_is_billed_at_most_what_was_reserved_for_it(
    upstream, alice, settings
) -> None:
    # The provider reports far more tokens than the reply was allowed.
    upstream.push_script(tokens=4, usage={"completion_tokens": 50_000})
    socket = await open_socket(alice)
    accepted = await send_and_accept(socket, "short please", params={"max_tokens": 20})
    frames = await socket.done(accepted["message"])
    await socket.close()
    [charge] = await charges_of(accepted["message"])
    reply = await message(accepted["message"])
    assert (reply.prompt_tokens, reply.completion_tokens) == (
        upstream.log[-1].prompt_tokens,
        50_000,
    )
    true_cost = prices.cost(reply.prompt_tokens, 50_000, PRICE, PRICE)
    assert charge.usage_cost == true_cost > charge.reserved > 0
    assert charge.cost == charge.reserved == reply.cost
    assert Decimal(frames[-1]["cost"]) == charge.reserved
    assert (await standing_of(alice)).spent == charge.reserved


async def test_a_reply_within_its_reservation_is_billed_its_real_cost(upstream, alice) -> None:
    upstream.push_script(tokens=4, usage={"completion_tokens": 3})
    socket = await open_socket(alice)
    accepted = await send_and_accept(socket, "short please", params={"max_tokens": 20})
    await socket.done(accepted["message"])
    await socket.close()
    [charge] = await charges_of(accepted["message"])
    reply = await message(accepted["message"])
    real = prices.cost(reply.prompt_tokens, 3, PRICE, PRICE)
    assert charge.cost == charge.usage_cost == reply.cost == real < charge.reserved


async def test_a_reply_the_provider_does_not_end_at_max_tokens_is_cut(upstream, alice) -> None:
    upstream.push_script(tokens=2000, text="word " * 2000, interval_ms=1, usage=False)
    socket = await open_socket(alice)
    accepted = await send_and_accept(socket, "go on forever", params={"max_tokens": 20})
    frames = await socket.done(accepted["message"])
    await socket.close()
    entry = upstream.log[-1]
    await upstream.wait_until(lambda: entry.finished is not None)
    # Reading stopped and the request was closed long before the provider's 2000 tokens.
    assert entry.client_gone and entry.tokens_sent < 200
    limit = 20 * prices.MAX_OVERCOUNT + 16
    reply = await message(accepted["message"])
    assert (reply.status, reply.finish_reason) == ("complete", "length")
    assert reply.content == text_of(frames, accepted["message"])
    assert limit < prices.text_weight(reply.content) <= limit + 2
    [charge] = await charges_of(accepted["message"])
    assert charge.cost is not None and charge.cost <= charge.reserved


@database_sync_to_async
def worst_case_of_next_send(user: Any, content: str, max_tokens: int) -> Decimal:
    """What a send of `content` into a new conversation reserves, read from a send that is
    then rolled back."""
    from django.db import transaction

    from chat.protocol import Params, Send

    with transaction.atomic():
        plan = replies_actions.accept(
            user,
            Send(
                request_id=request_id(),
                conversation=None,
                model=MODEL,
                content=content,
                params=Params(max_tokens=max_tokens),
            ),
        )
        reserved = Charge.objects.get(pk=plan.charge_id).reserved
        transaction.set_rollback(True)
    return reserved


async def test_a_worst_case_exactly_equal_to_what_is_left_is_accepted(upstream, alice, settings):
    worst = await worst_case_of_next_send(alice, "exactly enough", 100)
    upstream.push_script(tokens=2, usage={"completion_tokens": 2})
    settings.MONTHLY_BUDGET_USD = worst
    socket = await open_socket(alice)
    accepted = await send_and_accept(socket, "exactly enough", params={"max_tokens": 100})
    await socket.done(accepted["message"])
    # One smallest amount less and the same send is refused.
    settings.MONTHLY_BUDGET_USD = worst - prices.COST_QUANTUM + (await standing_of(alice)).spent
    await socket.send(send_frame("exactly enough", model=MODEL, params={"max_tokens": 100}))
    refused = await socket.recv()
    await socket.close()
    assert (refused["type"], refused["code"]) == ("error", "budget_exceeded")


async def test_the_reservation_covers_the_prompt_at_its_upper_bound(upstream, alice) -> None:
    upstream.push_script(tokens=2)
    socket = await open_socket(alice)
    accepted = await send_and_accept(socket, "how big is my prompt? " * 50)
    await socket.done(accepted["message"])
    await socket.close()
    [charge] = await charges_of(accepted["message"])
    estimate = prices.estimate_prompt_tokens(
        [{"role": "user", "content": "how big is my prompt? " * 50}]
    )
    max_tokens = upstream.log[-1].body["max_tokens"]
    assert charge.reserved == prices.cost(
        prices.upper_prompt_tokens(estimate), max_tokens, PRICE, PRICE
    )
    assert prices.upper_prompt_tokens(estimate) > estimate


@pytest.mark.parametrize("kind", ["regenerate", "edit"])
async def test_regenerate_and_edit_are_checked_against_the_limit(
    upstream, alice, settings, kind: str
) -> None:
    upstream.push_script(tokens=2, usage={"completion_tokens": 2})
    socket = await open_socket(alice)
    accepted = await send_and_accept(socket, "first")
    await socket.done(accepted["message"])
    # Whatever was spent, and a little: no room for another reply's worst case.
    settings.MONTHLY_BUDGET_USD = (await standing_of(alice)).spent + Decimal("0.0000001")
    frame: dict[str, Any] = {"type": kind, "request_id": request_id()}
    if kind == "regenerate":
        frame["message"] = accepted["message"]
    else:
        frame.update(message=accepted["user_message"], content="first, again")
    await socket.send(frame)
    refused = await socket.recv()
    await socket.close()
    assert (refused["type"], refused["code"]) == ("error", "budget_exceeded")
    assert len(upstream.chat_log()) == 1


@database_sync_to_async
def title_charges(conversation_id: int) -> int:
    return Charge.objects.filter(conversation_id=conversation_id, kind=Charge.Kind.TITLE).count()


async def test_a_conversation_is_titled_once_whatever_is_regenerated_or_edited(
    upstream, alice, settings
) -> None:
    settings.AUTO_TITLES = True
    upstream.set_default_script(tokens=3, text="A fine title")
    socket = await open_socket(alice)
    accepted = await send_and_accept(socket, "first question")
    await socket.recv_until(lambda f: f["type"] == "title")
    assert await title_charges(accepted["conversation"]) == 1
    requests = len(upstream.chat_log())
    # Regenerate the first reply, then edit the first question: no new title is paid for.
    await socket.send(
        {"type": "regenerate", "request_id": request_id(), "message": accepted["message"]}
    )
    again = await socket.recv_until(lambda f: f["type"] == "accepted")
    await socket.done(again[-1]["message"])
    await socket.send(
        {
            "type": "edit",
            "request_id": request_id(),
            "message": accepted["user_message"],
            "content": "first question, edited",
        }
    )
    edited = await socket.recv_until(lambda f: f["type"] == "accepted")
    await socket.done(edited[-1]["message"])
    await upstream.wait_until(lambda: all(e.finished is not None for e in upstream.chat_log()))
    assert len(upstream.chat_log()) == requests + 2  # the two replies, no title
    assert await title_charges(accepted["conversation"]) == 1
    # Asked for, a new title is written (and paid for).
    await socket.send({"type": "retitle", "conversation": accepted["conversation"]})
    title = await socket.recv_until(lambda f: f["type"] == "title")
    await socket.close()
    assert title[-1]["title"] == "A fine title"
    assert await title_charges(accepted["conversation"]) == 2


@database_sync_to_async
def import_conversation_with_replies(user: Any, replies: int) -> None:
    from chat.actions import transfer

    messages: list[dict[str, Any]] = []
    for index in range(replies):
        messages.append({"id": 2 * index, "role": "user", "content": f"question {index}"})
        messages.append(
            {"id": 2 * index + 1, "parent": 2 * index, "role": "assistant", "content": "answer"}
        )
    transfer.import_payload(
        user,
        {"format": transfer.FORMAT, "conversations": [{"title": "old", "messages": messages}]},
    )


async def test_an_import_does_not_count_against_the_sends_per_minute(
    upstream, alice, settings
) -> None:
    settings.MESSAGES_PER_MINUTE = 3
    await import_conversation_with_replies(alice, 10)
    upstream.push_script(tokens=2)
    socket = await open_socket(alice)
    accepted = await send_and_accept(socket, "hello after importing")
    frames = await socket.done(accepted["message"])
    await socket.close()
    assert frames[-1]["status"] == "complete"


async def test_text_held_for_a_closing_think_tag_counts_towards_the_cut(upstream, alice) -> None:
    """A reasoning model's answer is held back until its lone </think> (chat.upstream.reasoning); a
    provider that never sends one nor stops is cut all the same, and what it sent is kept."""
    model = "deepseek-ai/DeepSeek-R1-0528"
    upstream.push_script(
        tokens=2000, text="word " * 2000, interval_ms=1, usage=False, reasoning=None
    )
    socket = await open_socket(alice)
    accepted = await send_and_accept(
        socket, "go on forever", model=model, params={"max_tokens": 20}
    )
    frames = await socket.done(accepted["message"])
    await socket.close()
    entry = upstream.log[-1]
    await upstream.wait_until(lambda: entry.finished is not None)
    assert entry.client_gone and entry.tokens_sent < 200
    reply = await message(accepted["message"])
    assert (reply.status, reply.finish_reason) == ("complete", "length")
    # Without a </think>, the held text is the answer.
    assert reply.content == text_of(frames, accepted["message"])
    assert reply.content.startswith("word word") and reply.reasoning == ""
    assert prices.text_weight(reply.content) > 20 * prices.MAX_OVERCOUNT


@pytest.mark.parametrize("bad", [-1_000_000_000, "8192", 1e9, None, [], True])
async def test_stored_params_that_break_the_rules_cannot_move_the_reservation(
    upstream, alice, bad: Any
) -> None:
    """A conversation saved before params were checked (or by hand): its bad max_tokens is
    ignored, the reservation is the usual one, and the socket stays open."""
    upstream.set_default_script(tokens=2, usage={"completion_tokens": 2})
    socket = await open_socket(alice)
    accepted = await send_and_accept(socket, "first")
    await socket.done(accepted["message"])

    @database_sync_to_async
    def spoil() -> None:
        Conversation.objects.filter(pk=accepted["conversation"]).update(
            params={"max_tokens": bad, "temperature": "hot"}
        )

    await spoil()
    second = await send_and_accept(socket, "second", conversation=accepted["conversation"])
    await socket.done(second["message"])
    await socket.close()
    [charge] = await charges_of(second["message"])
    first, body = upstream.chat_log()[-2].body, upstream.chat_log()[-1].body
    # The defaults, as for the first reply; the bad temperature is not sent at all.
    assert body["max_tokens"] == first["max_tokens"] > 0
    assert "temperature" not in body
    assert charge.reserved > 0
