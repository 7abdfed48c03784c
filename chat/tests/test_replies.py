"""What goes upstream for a reply (history, trimming, parameters), edits and titles."""

from __future__ import annotations

import json
from decimal import Decimal
from http import HTTPStatus
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from chat.actions import conversations, prompts, replies, titles
from chat.errors import Refused
from chat.models import Charge, ChatModel, Conversation, Message
from chat.protocol import Params, parse_client_frame
from chat.testing.wsclient import (
    MODEL,
    message,
    open_socket,
    request_id,
    send_and_accept,
    streamed,
)

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)


def make_history(owner, model: ChatModel, turns: list[tuple[str, str]]) -> Conversation:
    conversation = Conversation.objects.create(owner=owner, title="t", model=model)
    parent = None
    for question, answer in turns:
        parent = Message.objects.create(
            conversation=conversation, user=owner, role="user", content=question, parent=parent
        )
        parent = Message.objects.create(
            conversation=conversation,
            user=owner,
            role="assistant",
            content=answer,
            reasoning="secret thoughts",
            parent=parent,
            model=model,
        )
    return conversation


def test_the_prompt_is_system_prompt_and_history_without_reasoning(user) -> None:
    model = ChatModel.objects.get(model_id=MODEL)
    conversation = make_history(user, model, [("q1", "a1"), ("q2", "a2")])
    conversation.system_prompt = "Be brief."
    conversation.params = {"temperature": 0.4}
    history = conversations.active_path(conversation)
    body, estimate = prompts.build_prompt(conversation, history, model, Params(), "r")
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q2"},
        {"role": "assistant", "content": "a2"},
    ]
    assert "secret thoughts" not in json.dumps(body)
    assert body["temperature"] == 0.4
    assert body["max_tokens"] == 8192
    assert estimate > 0


def test_old_turns_are_dropped_to_fit_the_context_and_the_system_prompt_stays(user) -> None:
    model = ChatModel.objects.create(
        model_id="test/Tiny",
        name="Tiny",
        enabled=True,
        input_price=Decimal("1"),
        output_price=Decimal("1"),
        context_length=1200,
        max_output_tokens=500,
    )
    long = "word " * 400  # about 500 tokens
    conversation = make_history(user, model, [(long, long), ("q2", "a2"), ("latest", "")])
    conversation.system_prompt = "System."
    history = [m for m in conversations.active_path(conversation) if m.content]
    body, estimate = prompts.build_prompt(conversation, history, model, Params(), "r")
    roles = [m["role"] for m in body["messages"]]
    assert roles[0] == "system"
    assert roles[1] == "user"  # a trimmed conversation still starts with a question
    assert body["messages"][-1]["content"] == "latest"
    assert all(m["content"] != long for m in body["messages"])
    assert body["max_tokens"] <= 500
    assert estimate + body["max_tokens"] <= 1200


def test_max_tokens_never_exceeds_the_models_maximum(user) -> None:
    model = ChatModel.objects.get(model_id=MODEL)
    conversation = make_history(user, model, [("q", "")])
    history = [m for m in conversations.active_path(conversation) if m.content]
    body, _ = prompts.build_prompt(conversation, history, model, Params(max_tokens=10**6), "r")
    assert body["max_tokens"] == model.max_output_tokens


def test_a_question_too_long_for_the_context_is_refused(user) -> None:
    model = ChatModel.objects.create(
        model_id="test/Tiny",
        name="Tiny",
        enabled=True,
        input_price=Decimal("1"),
        output_price=Decimal("1"),
        context_length=1000,
        max_output_tokens=500,
    )
    conversation = make_history(user, model, [("word " * 2000, "")])
    history = [m for m in conversations.active_path(conversation) if m.content]
    with pytest.raises(Refused) as refused:
        prompts.build_prompt(conversation, history, model, Params(), "r")
    assert refused.value.code == "content_too_long"
    assert "Tiny" in refused.value.message


async def test_send_params_are_saved_on_the_conversation_and_sent_upstream(upstream, alice) -> None:
    upstream.set_default_script(tokens=2, interval_ms=1)
    socket = await open_socket(alice)
    accepted = await send_and_accept(
        socket,
        "hello",
        params={"temperature": 0.2, "max_tokens": 300, "system_prompt": "Answer in French."},
    )
    await socket.done(accepted["message"])
    body = upstream.log[-1].body
    assert body["temperature"] == 0.2
    assert body["max_tokens"] == 300
    assert body["messages"][0] == {"role": "system", "content": "Answer in French."}
    # A later send without params uses the conversation's.
    again = await send_and_accept(socket, "encore", conversation=accepted["conversation"])
    await socket.done(again["message"])
    await socket.close()
    body = upstream.log[-1].body
    assert body["temperature"] == 0.2
    assert body["messages"][0]["content"] == "Answer in French."
    assert [m["role"] for m in body["messages"]] == [
        "system",
        "user",
        "assistant",
        "user",
    ]


async def test_edit_replaces_the_question_and_later_messages(upstream, alice) -> None:
    upstream.set_default_script(tokens=3, interval_ms=1)
    socket = await open_socket(alice)
    first = await send_and_accept(socket, "What is 2+2?")
    await socket.done(first["message"])
    second = await send_and_accept(socket, "And 3+3?", conversation=first["conversation"])
    await socket.done(second["message"])

    frame = {
        "type": "edit",
        "request_id": request_id(),
        "message": first["user_message"],
        "content": "What is 5+5?",
    }
    await socket.send(frame)
    accepted = await socket.recv()
    assert accepted["type"] == "accepted"
    assert (await socket.done(accepted["message"]))[-1]["status"] == "complete"
    await socket.close()
    assert upstream.log[-1].body["messages"] == [{"role": "user", "content": "What is 5+5?"}]

    @database_sync_to_async
    def active() -> list[str]:
        return list(
            Message.objects.filter(conversation_id=first["conversation"], active=True)
            .order_by("id")
            .values_list("content", flat=True)
        )

    assert await active() == ["What is 5+5?", streamed(upstream)]
    assert not (await message(second["message"])).active


async def test_editing_another_users_question_is_not_found(upstream, alice, bob) -> None:
    upstream.set_default_script(tokens=2, interval_ms=1)
    socket = await open_socket(alice)
    first = await send_and_accept(socket, "mine")
    await socket.done(first["message"])
    await socket.close()
    theirs = await open_socket(bob)
    await theirs.send(
        {
            "type": "edit",
            "request_id": request_id(),
            "message": first["user_message"],
            "content": "hijack",
        }
    )
    answer = await theirs.recv()
    await theirs.close()
    assert (answer["type"], answer["code"]) == ("error", "not_found")


async def test_the_first_exchange_gets_a_billed_model_title(upstream, alice, settings) -> None:
    settings.AUTO_TITLES = True
    upstream.push_script(tokens=4, interval_ms=1)
    upstream.push_script(text="Adding small numbers", tokens=3)
    socket = await open_socket(alice)
    accepted = await send_and_accept(socket, "What is 2+2? Please explain in detail.")
    await socket.done(accepted["message"])
    title = await socket.recv_until(lambda f: f["type"] == "title")
    await socket.close()
    assert title[-1] == {
        "type": "title",
        "conversation": accepted["conversation"],
        "title": "Adding small numbers",
    }
    conversation = await database_sync_to_async(Conversation.objects.get)(
        pk=accepted["conversation"]
    )
    assert conversation.title == "Adding small numbers"
    charge = await database_sync_to_async(Charge.objects.get)(kind="title")
    assert charge.state == "settled"
    assert charge.user_id == alice.pk
    assert charge.conversation_id == accepted["conversation"]
    title_request = upstream.log[-1]
    assert charge.prompt_tokens == title_request.prompt_tokens
    assert charge.cost == (
        (charge.prompt_tokens + charge.completion_tokens) * Decimal("0.27216") / 1_000_000
    )


async def test_without_a_model_title_the_first_line_stays(upstream, alice, settings) -> None:
    settings.AUTO_TITLES = True
    settings.UPSTREAM_MAX_RETRIES = 0
    upstream.push_script(tokens=2, interval_ms=1)
    upstream.push_script(status=500)
    socket = await open_socket(alice)
    accepted = await send_and_accept(socket, "Plan my trip\nto Lisbon in May")
    await socket.done(accepted["message"])
    await upstream.wait_until(
        lambda: len(upstream.log) == 2 and upstream.log[-1].outcome != "pending"
    )

    @database_sync_to_async
    def title_state() -> tuple[str, str | None]:
        charge = Charge.objects.filter(kind="title").first()
        return (
            Conversation.objects.get(pk=accepted["conversation"]).title,
            charge.state if charge else None,
        )

    for _ in range(50):
        title, state = await title_state()
        if state == "settled":
            break
        await socket.nothing_more(0.05)
    await socket.close()
    assert (title, state) == ("Plan my trip", "settled")


async def test_a_renamed_conversation_keeps_its_name(upstream, alice, settings) -> None:
    settings.AUTO_TITLES = True
    upstream.push_script(tokens=2, interval_ms=1)
    socket = await open_socket(alice)
    accepted = await send_and_accept(socket, "hello")
    await database_sync_to_async(Conversation.objects.filter(pk=accepted["conversation"]).update)(
        title="Mine", title_is_custom=True
    )
    await socket.done(accepted["message"])
    await socket.close()
    conversation = await database_sync_to_async(Conversation.objects.get)(
        pk=accepted["conversation"]
    )
    assert conversation.title == "Mine"
    assert await database_sync_to_async(Charge.objects.filter(kind="title").count)() == 0


def test_clean_title_strips_decoration() -> None:
    assert titles.clean_title('"Trip to Lisbon."\nmore') == "Trip to Lisbon"
    assert titles.clean_title("Title: **Rust lifetimes**") == "Rust lifetimes"
    assert titles.clean_title("\n\n") == ""
    assert len(titles.clean_title("x" * 300)) == 80


def test_the_default_model_is_a_user_preference(user_client: Client, user) -> None:
    assert user_client.get("/api/me").json() == {
        "username": "alice",
        "default_model": None,
        "budget": {
            "limit": None,
            "spent": "0.000000000000",
            "reserved": "0.000000000000",
            "remaining": None,
        },
    }
    response = user_client.patch(
        "/api/me", json.dumps({"default_model": "Qwen/Qwen3-32B"}), "application/json"
    )
    assert response.status_code == HTTPStatus.OK
    assert response.json()["default_model"] == "Qwen/Qwen3-32B"
    assert conversations.default_model_id(user) == "Qwen/Qwen3-32B"
    bad = user_client.patch(
        "/api/me", json.dumps({"default_model": "nobody/None"}), "application/json"
    )
    assert bad.status_code == HTTPStatus.BAD_REQUEST
    assert conversations.default_model_id(user) == "Qwen/Qwen3-32B"


async def test_a_send_without_a_model_uses_the_users_default(upstream, alice) -> None:
    @database_sync_to_async
    def set_default() -> None:
        profile = conversations.profile_for(alice)
        profile.default_model = ChatModel.objects.get(model_id="Qwen/Qwen3-32B")
        profile.save()

    await set_default()
    upstream.set_default_script(tokens=2, interval_ms=1)
    socket = await open_socket(alice)
    await socket.send(
        {"type": "send", "request_id": request_id(), "conversation": None, "content": "hi"}
    )
    accepted = await socket.recv()
    await socket.done(accepted["message"])
    await socket.close()
    assert upstream.log[-1].body["model"] == "Qwen/Qwen3-32B"


def test_conversation_total_includes_replaced_replies_and_titles(user_client: Client, user) -> None:
    model = ChatModel.objects.get(model_id=MODEL)
    conversation = make_history(user, model, [("q", "a")])
    for cost in ("0.001", "0.0005", "0.00002"):
        Charge.objects.create(
            user=user,
            conversation=conversation,
            model_id=MODEL,
            state="settled",
            cost=Decimal(cost),
        )
    data = user_client.get(f"/api/conversations/{conversation.pk}").json()
    assert Decimal(data["total_cost"]) == Decimal("0.00152")


@pytest.mark.skipif(
    connection.vendor != "sqlite", reason="reads SQLite's query plans (EXPLAIN QUERY PLAN)"
)
def test_accepting_a_question_reads_no_users_whole_history(user, settings) -> None:
    """Each lookup of a send goes through an index that narrows past the user: a user with a
    long history must not make every send slower."""
    settings.LAVA_FORWARD_TOKEN = "t"
    settings.MESSAGES_PER_MINUTE = 1000
    model = ChatModel.objects.get(model_id=MODEL)
    make_history(user, model, [(f"q{i}", f"a{i}") for i in range(30)])
    frame: Any = parse_client_frame(  # a "send" frame
        json.dumps(
            {
                "type": "send",
                "request_id": request_id(),
                "conversation": None,
                "model": MODEL,
                "content": "hello",
            }
        )
    )
    with CaptureQueriesContext(connection) as queries:
        replies.accept(user, frame)
    plans = []
    with connection.cursor() as cursor:
        for query in queries.captured_queries:
            if query["sql"].startswith("SELECT") and '"chat_message"' in query["sql"]:
                cursor.execute("EXPLAIN QUERY PLAN " + query["sql"])
                plans += [(row[-1], query["sql"]) for row in cursor.fetchall()]
    assert plans  # the replay and limit lookups read messages
    for step, sql in plans:
        assert not step.startswith("SCAN chat_message"), (step, sql)
        # Seeking by user alone would read every message the user ever had.
        assert not step.endswith("(user_id=?)"), (step, sql)


def _frame(**fields: Any) -> Any:
    return parse_client_frame(json.dumps({"request_id": request_id(), **fields}))


@pytest.mark.parametrize("finished", [False, True], ids=["streaming", "finished"])
@pytest.mark.parametrize("stale", ["regenerate", "edit"])
def test_a_stale_tab_cannot_regenerate_or_edit_what_an_edit_replaced(
    user, settings, stale, finished
) -> None:
    """Another tab edited the second question: its old question and reply are inactive, and the
    edited question's reply is streaming. A regenerate of the old reply, or an edit of the old
    question, from a tab that has not seen the edit is refused and changes nothing: it would
    otherwise send a prompt ending in an answer, stop showing the streaming reply (which would
    go on being written and billed out of sight) and hang the new reply under a hidden
    question. The same whether the edited question's reply is still streaming or finished."""
    settings.LAVA_FORWARD_TOKEN = "t"
    settings.MESSAGES_PER_MINUTE = 1000
    model = ChatModel.objects.get(model_id=MODEL)
    conversation = make_history(user, model, [("q1", "a1"), ("q2", "a2")])
    _, _, old_question, old_reply = conversations.active_path(conversation)
    edited = replies.accept(user, _frame(type="edit", message=old_question.pk, content="q2'"))
    status = Message.Status.COMPLETE if finished else Message.Status.STREAMING
    Message.objects.filter(pk=edited.message_id).update(status=status)
    before = list(conversation.messages.order_by("id").values_list("id", "active", "status"))

    if stale == "regenerate":
        frame = _frame(type="regenerate", message=old_reply.pk)
    else:
        frame = _frame(type="edit", message=old_question.pk, content="q2''")
    with pytest.raises(Refused) as refused:
        replies.accept(user, frame)

    assert refused.value.code == "conflict"
    assert "Reload the conversation" in refused.value.message
    assert (
        list(conversation.messages.order_by("id").values_list("id", "active", "status")) == before
    )
    path = conversations.active_path(conversation)
    assert [m.content for m in path] == ["q1", "a1", "q2'", ""]
    assert (path[-1].pk, path[-1].status) == (edited.message_id, status)
