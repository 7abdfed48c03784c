"""Exact costs, budgets under concurrency, usage reports, catalogue sync, reconciliation."""

from __future__ import annotations

import asyncio
import csv
import io
from datetime import timedelta
from decimal import Decimal
from http import HTTPStatus
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from chat.actions import catalogue as catalogue_actions
from chat.actions import progress
from chat.billing import prices
from chat.models import Charge, ChatModel, Message, PriceChange, Profile
from chat.testing.fakeupstream import default_catalogue
from chat.testing.wsclient import MODEL, counts, message, open_socket, send_and_accept, send_frame

PRICE = Decimal("0.27216")


# Cost arithmetic, hand-computed ----------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "completion", "input_price", "output_price", "expected"),
    [
        # 1000 * 0.27216 + 500 * 0.27216 = 408.24 -> / 1e6
        (1000, 500, "0.27216", "0.27216", "0.000408240000"),
        # 7 * 0.027216 + 3 * 0.027216 = 0.27216 -> 0.00000027216
        (7, 3, "0.027216", "0.027216", "0.000000272160"),
        # one token at the cheapest price: 0.01512e-6
        (1, 0, "0.01512", "0.01512", "0.000000015120"),
        # 200k prompt and 65,536 completion tokens at R1T2 prices: 60480 + 19818.0864
        (200_000, 65_536, "0.3024", "0.3024", "0.080298086400"),
        # a billion tokens does not overflow or lose a digit: 1e9 * 1.23456789 = 1234567890
        (1_000_000_000, 0, "1.23456789", "0", "1234.567890000000"),
        # different input and output prices: 123 * 0.5 + 456 * 1.5 = 745.5
        (123, 456, "0.5", "1.5", "0.000745500000"),
        # half a unit of the last place rounds to even: 1 * 0.0000005 = 5e-13 -> 0
        (1, 0, "0.0000005", "0", "0.000000000000"),
        # and 3 * 0.0000005 = 1.5e-12 -> 2e-12
        (3, 0, "0.0000005", "0", "0.000000000002"),
        (0, 0, "0.3", "0.3", "0.000000000000"),
    ],
)
def test_cost_is_exact_to_the_last_decimal(
    prompt: int, completion: int, input_price: str, output_price: str, expected: str
) -> None:
    cost = prices.cost(prompt, completion, Decimal(input_price), Decimal(output_price))
    assert isinstance(cost, Decimal)
    assert prices.plain(cost) == expected


def test_token_estimates_round_the_character_weights_up() -> None:
    # Measured against real tokenizers in test_token_estimate.py; here, the arithmetic.
    assert prices.estimate_tokens("") == 0
    # Lowercase letters weigh 0.26: four are 1.04 tokens, billed as 2, never rounded down.
    assert prices.estimate_tokens("abc") == 1
    assert prices.estimate_tokens("abcd") == 2
    # Common ideographs weigh 0.62: 2.48 tokens, 3 (four bytes a token said 3 too).
    assert prices.estimate_tokens("漢字漢字") == 3
    # Cyrillic weighs 0.35: five letters are 1.75 tokens, 2, where four bytes a token said 3.
    assert prices.estimate_tokens("слово") == 2


# Costs of real replies ---------------------------------------------------------------------

streaming = pytest.mark.django_db(transaction=True, serialized_rollback=True)


@streaming
async def test_a_price_change_mid_stream_does_not_change_that_replys_cost(upstream, alice) -> None:
    upstream.push_script(tokens=40, interval_ms=15)
    socket = await open_socket(alice)
    accepted = await send_and_accept(socket, "slow answer")
    await socket.recv_until(lambda f: f["type"] == "delta")

    @database_sync_to_async
    def raise_price() -> None:
        model = ChatModel.objects.get(model_id=MODEL)
        model.input_price = model.output_price = Decimal("10")
        catalogue_actions.save_catalogue_entry(model, user=None, source="admin")

    await raise_price()
    done = (await socket.done(accepted["message"]))[-1]
    await socket.close()
    reply = await message(accepted["message"])
    assert reply.input_price == reply.output_price == PRICE
    expected = prices.cost(reply.prompt_tokens, reply.completion_tokens, PRICE, PRICE)
    assert reply.cost == expected
    assert Decimal(done["cost"]) == expected
    charge = await database_sync_to_async(Charge.objects.get)(message_id=reply.pk)
    assert charge.cost == expected


@streaming
async def test_a_stopped_reply_is_billed_from_an_estimate(upstream, alice) -> None:
    upstream.push_script(tokens=200, interval_ms=20)
    socket = await open_socket(alice)
    accepted = await send_and_accept(socket, "stop me")
    await socket.recv_until(lambda f: f["type"] == "delta" and f["seq"] >= 2)
    await socket.send({"type": "stop", "message": accepted["message"]})
    done = (await socket.done(accepted["message"]))[-1]
    await socket.close()
    reply = await message(accepted["message"])
    assert done["usage"]["estimated"] is True
    assert reply.usage_estimated
    # The prompt as estimated at accept time, the completion from the text the user saw.
    prompt = prices.estimate_prompt_tokens([{"role": "user", "content": "stop me"}])
    completion = prices.estimate_tokens(reply.content)
    assert (reply.prompt_tokens, reply.completion_tokens) == (prompt, completion)
    assert reply.cost == prices.cost(prompt, completion, PRICE, PRICE)
    charge = await database_sync_to_async(Charge.objects.get)(message_id=reply.pk)
    assert (charge.state, charge.cost, charge.estimated) == ("settled", reply.cost, True)


# Budgets -------------------------------------------------------------------------------------


@database_sync_to_async
def set_limit(user: Any, limit: str | None, mode: str = "custom") -> None:
    Profile.objects.filter(user=user).update(
        budget_mode=mode, monthly_limit=None if limit is None else Decimal(limit)
    )


@streaming
async def test_a_send_past_the_limit_is_refused_and_nothing_goes_upstream(upstream, alice) -> None:
    await set_limit(alice, "0.01")
    await database_sync_to_async(Charge.objects.create)(
        user=alice, model_id=MODEL, state="settled", cost=Decimal("0.0099")
    )
    socket = await open_socket(alice)
    before = await counts()
    await socket.send(send_frame("expensive", model=MODEL))
    answer = await socket.recv()
    await socket.close()
    assert answer["type"] == "error"
    assert answer["code"] == "budget_exceeded"
    assert "$0.01 monthly limit" in answer["message"]
    assert upstream.log == []
    assert await counts() == before


@streaming
async def test_the_site_default_limit_applies_and_an_admin_can_lift_it(
    upstream, alice, settings
) -> None:
    settings.MONTHLY_BUDGET_USD = Decimal("0")
    upstream.set_default_script(tokens=2, interval_ms=1)
    socket = await open_socket(alice)
    await socket.send(send_frame("hi", model=MODEL))
    assert (await socket.recv())["code"] == "budget_exceeded"
    await set_limit(alice, None, mode="unlimited")
    accepted = await send_and_accept(socket, "hi again")
    assert (await socket.done(accepted["message"]))[-1]["status"] == "complete"
    await socket.close()


@streaming
async def test_concurrent_sends_near_the_limit_never_end_above_it(
    upstream, alice, settings
) -> None:
    """Ten sockets send at once; the limit admits three worst cases, so three go through."""
    settings.MAX_CONCURRENT_GENERATIONS = 20
    max_tokens = 10_000
    frames = [
        send_frame(f"question {i}", model=MODEL, params={"max_tokens": max_tokens})
        for i in range(10)
    ]
    worst = prices.cost(
        prices.upper_prompt_tokens(
            prices.estimate_prompt_tokens([{"role": "user", "content": "question 0"}])
        ),
        max_tokens,
        PRICE,
        PRICE,
    )
    limit = Decimal("0.01")
    assert 3 * worst <= limit < 4 * worst
    await set_limit(alice, "0.01")
    upstream.set_default_script(tokens=20, interval_ms=10)
    sockets = [await open_socket(alice) for _ in frames]
    await asyncio.gather(*(s.send(f) for s, f in zip(sockets, frames, strict=True)))
    answers = await asyncio.gather(*(s.recv() for s in sockets))
    accepted = [(s, a) for s, a in zip(sockets, answers, strict=True) if a["type"] == "accepted"]
    refused = [a for a in answers if a["type"] == "error"]
    assert len(accepted) == 3
    assert {a["code"] for a in refused} == {"budget_exceeded"}
    await asyncio.gather(*(s.done(a["message"]) for s, a in accepted))
    for s in sockets:
        await s.close()

    @database_sync_to_async
    def spent() -> Decimal:
        return sum((c.cost for c in Charge.objects.filter(user=alice)), Decimal(0))

    assert await spent() <= limit
    assert len([r for r in upstream.log if r.path == "/v1/forward"]) == 3


def test_standing_counts_settled_costs_and_open_reservations(user) -> None:
    from chat.billing import budgets

    Profile.objects.filter(user=user).update(budget_mode="custom", monthly_limit=Decimal("1"))
    Charge.objects.create(user=user, model_id=MODEL, state="settled", cost=Decimal("0.25"))
    Charge.objects.create(user=user, model_id=MODEL, state="reserved", reserved=Decimal("0.5"))
    old = Charge.objects.create(user=user, model_id=MODEL, state="settled", cost=Decimal("5"))
    Charge.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=40))
    current = budgets.standing(user)
    assert (current.spent, current.reserved, current.limit) == (
        Decimal("0.25"),
        Decimal("0.5"),
        Decimal("1"),
    )
    assert current.remaining == Decimal("0.25")


# Usage page and CSV --------------------------------------------------------------------------


def billed_reply(user: Any, cost: str, model: str = MODEL, **extra: Any) -> Charge:
    return Charge.objects.create(
        user=user,
        model_id=model,
        state="settled",
        cost=Decimal(cost),
        prompt_tokens=100,
        completion_tokens=50,
        input_price=PRICE,
        output_price=PRICE,
        **extra,
    )


def test_the_usage_page_and_csv_totals_equal_the_billed_calls(
    user_client: Client, user, make_user
) -> None:
    costs = ["0.000123456789", "0.5", "0.000000000001", "1.25"]
    for cost in costs:
        billed_reply(user, cost)
    billed_reply(user, "0.75", model="Qwen/Qwen3-32B", kind="title")
    billed_reply(make_user("mallory"), "9")  # someone else's
    Charge.objects.create(user=user, model_id=MODEL, state="reserved", reserved=Decimal("3"))
    expected = sum((Decimal(c) for c in [*costs, "0.75"]), Decimal(0))

    page = user_client.get("/usage/")
    assert page.status_code == HTTPStatus.OK
    html = page.content.decode()
    assert f'id="usage-total">{prices.usd(expected)}<' in html
    assert prices.usd(expected) == "$2.50012345679"
    assert "Qwen/Qwen3-32B" in html

    response = user_client.get("/usage.csv")
    assert response["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert len(rows) == 5
    assert sum(Decimal(r["cost_usd"]) for r in rows) == expected
    assert {r["kind"] for r in rows} == {"reply", "title"}


def test_the_usage_page_shows_the_limit_and_what_remains(user_client: Client, user) -> None:
    Profile.objects.filter(user=user).update(budget_mode="custom", monthly_limit=Decimal("2"))
    billed_reply(user, "0.5")
    html = user_client.get("/usage/").content.decode()
    assert 'id="usage-remaining">$1.50<' in html


def test_the_budget_is_in_the_users_preferences(user_client: Client, user) -> None:
    Profile.objects.filter(user=user).update(budget_mode="custom", monthly_limit=Decimal("2"))
    billed_reply(user, "0.5")
    Charge.objects.create(user=user, model_id=MODEL, state="reserved", reserved=Decimal("0.25"))
    assert user_client.get("/api/me").json()["budget"] == {
        "limit": "2.000000000000",
        "spent": "0.500000000000",
        "reserved": "0.250000000000",
        "remaining": "1.250000000000",
    }


def test_usage_needs_login(client: Client) -> None:
    assert client.get("/usage/").status_code == HTTPStatus.FOUND
    assert client.get("/usage.csv").status_code == HTTPStatus.FOUND


def test_a_csv_cell_never_starts_a_formula(user_client: Client, user) -> None:
    billed_reply(user, "0.1", lava_request_id="=HYPERLINK(1)")
    rows = list(csv.DictReader(io.StringIO(user_client.get("/usage.csv").content.decode())))
    assert rows[0]["lava_request_id"] == "'=HYPERLINK(1)"


# Admin dashboard ------------------------------------------------------------------------------


def test_the_admin_dashboard_shows_spenders_models_limits_and_unpriced_usage(
    admin_client: Client, make_user
) -> None:
    heavy = make_user("heavy")
    light = make_user("light")
    Profile.objects.filter(user=heavy).update(budget_mode="custom", monthly_limit=Decimal("1"))
    billed_reply(heavy, "0.95")
    billed_reply(light, "0.01", model="Qwen/Qwen3-32B")
    Charge.objects.create(user=light, model_id="odd/Model", state="settled", cost=None)
    page = admin_client.get("/admin/chat/usagereport/")
    assert page.status_code == HTTPStatus.OK
    html = page.content.decode()
    assert 'id="dashboard-total">$0.96' in html
    spenders = html[html.index('id="top-spenders"') :]
    assert spenders.index("heavy") < spenders.index("light")
    near = html[html.index('id="near-limit"') :]
    assert "heavy" in near.split("</table>")[0]
    assert "light" not in near.split("</table>")[0]
    assert "odd/Model" in html[html.index('id="unpriced"') :]


def test_admins_edit_per_user_limits_in_one_list(admin_client: Client, make_user) -> None:
    someone = make_user("someone")
    response = admin_client.post(
        "/admin/chat/profile/",
        {
            "form-TOTAL_FORMS": "1",
            "form-INITIAL_FORMS": "1",
            "form-MIN_NUM_FORMS": "0",
            "form-MAX_NUM_FORMS": "1000",
            "form-0-user": someone.pk,
            "form-0-budget_mode": "custom",
            "form-0-monthly_limit": "12.50",
            "_save": "Save",
        },
        QUERY_STRING="q=someone",
    )
    assert response.status_code == HTTPStatus.FOUND, response.content.decode()[:2000]
    profile = Profile.objects.get(user=someone)
    assert (profile.budget_mode, profile.monthly_limit) == ("custom", Decimal("12.50"))


def test_a_custom_budget_needs_a_limit(admin_client: Client, make_user) -> None:
    someone = make_user("someone")
    response = admin_client.post(
        f"/admin/chat/profile/{someone.pk}/change/",
        {"budget_mode": "custom", "monthly_limit": ""},
    )
    assert response.status_code == HTTPStatus.OK
    assert "Set the limit for a custom budget" in response.content.decode()


# Catalogue sync -----------------------------------------------------------------------------


@pytest.fixture
def fake_in_thread(settings) -> Any:
    from chat.testing.fakeupstream import running_in_thread

    with running_in_thread(tokens=("test-token",)) as server:
        settings.LAVA_FORWARD_URL = server.forward_url
        settings.CHUTES_API_BASE = server.api_base
        settings.LAVA_FORWARD_TOKEN = "test-token"
        settings.LAVA_SECRET_KEY = ""
        yield server


def test_chutes_prices_with_the_markup_reproduce_the_seeded_lava_prices(
    admin_client: Client, fake_in_thread
) -> None:
    from chat.actions import catalogue_sync
    from chat.upstream.catalogue import parse_catalogue

    changes = catalogue_sync.preview(parse_catalogue({"data": default_catalogue()}), Decimal("0.8"))
    changed_fields = {name for change in changes for name in change.fields}
    assert changes  # the seed's output limits are corrected from the catalogue ...
    assert changed_fields == {"max_output_tokens"}  # ... and no price differs


def test_sync_previews_then_applies_new_gone_and_changed_models(
    admin_client: Client, admin_user, fake_in_thread
) -> None:
    catalogue = [m for m in default_catalogue() if m["id"] != "unsloth/Mistral-Nemo-Instruct-2407"]
    for entry in catalogue:
        if entry["id"] == "Qwen/Qwen3-32B":
            entry["pricing"] = {"prompt": 0.05, "completion": 0.2}
            entry["context_length"] = 131072
    catalogue.append(
        {
            "id": "moonshotai/Kimi-K2-Instruct-TEE",
            "context_length": 131072,
            "max_output_length": 16384,
            "input_modalities": ["text"],
            "supported_features": ["tools"],
            "pricing": {"prompt": 0.5, "completion": 2.0},
        }
    )
    fake_in_thread.set_catalogue(catalogue)

    preview = admin_client.get("/admin/chat/chatmodel/sync/").content.decode()
    assert "moonshotai/Kimi-K2-Instruct-TEE" in preview
    assert "unsloth/Mistral-Nemo-Instruct-2407" in preview
    assert "0.050400" in preview  # 0.05 with the 0.8% markup
    # Previewing changed nothing.
    assert not ChatModel.objects.filter(model_id="moonshotai/Kimi-K2-Instruct-TEE").exists()

    response = admin_client.post("/admin/chat/chatmodel/sync/", {"apply": "1"})
    assert response.status_code == HTTPStatus.FOUND
    kimi = ChatModel.objects.get(model_id="moonshotai/Kimi-K2-Instruct-TEE")
    assert not kimi.enabled
    assert (kimi.input_price, kimi.output_price) == (Decimal("0.504"), Decimal("2.016"))
    qwen = ChatModel.objects.get(model_id="Qwen/Qwen3-32B")
    assert (qwen.input_price, qwen.output_price) == (Decimal("0.0504"), Decimal("0.2016"))
    assert qwen.context_length == 131072
    assert qwen.enabled
    nemo = ChatModel.objects.get(model_id="unsloth/Mistral-Nemo-Instruct-2407")
    assert not nemo.enabled
    history = PriceChange.objects.filter(source="sync")
    assert history.count() == 3
    assert all(h.changed_by == admin_user for h in history)
    qwen_change = history.get(chat_model=qwen)
    assert (qwen_change.old_input_price, qwen_change.new_input_price) == (
        Decimal("0.027216"),
        Decimal("0.0504"),
    )
    # Applying again finds nothing left to do.
    assert "Nothing to change" in admin_client.get("/admin/chat/chatmodel/sync/").content.decode()


def test_sync_reports_an_unreachable_upstream(admin_client: Client, settings) -> None:
    settings.LAVA_FORWARD_URL = "http://127.0.0.1:1/v1/forward"
    settings.CHUTES_API_BASE = "http://127.0.0.1:1/v1"
    settings.LAVA_FORWARD_TOKEN = "t"
    settings.UPSTREAM_MAX_RETRIES = 0
    page = admin_client.get("/admin/chat/chatmodel/sync/").content.decode()
    assert "Could not read the Chutes catalogue" in page


# Reconciliation ----------------------------------------------------------------------------


@streaming
async def test_reconciliation_reports_a_planted_difference(upstream, alice, settings) -> None:
    upstream.set_default_script(tokens=5, interval_ms=1)
    socket = await open_socket(alice)
    replies = []
    for text in ("first", "second"):
        accepted = await send_and_accept(socket, text)
        await socket.done(accepted["message"])
        replies.append(await message(accepted["message"]))
    await socket.close()
    wrong = replies[1].lava_request_id
    upstream.set_request_cost(wrong, "0.5")

    out = io.StringIO()
    await database_sync_to_async(call_command)("reconcile", stdout=out)
    report = out.getvalue()
    assert f"DIFFERENCE {wrong}" in report
    assert replies[0].lava_request_id not in report
    assert "Checked 2 call(s): 1 difference(s)" in report

    @database_sync_to_async
    def charges() -> list[Charge]:
        return list(Charge.objects.order_by("id"))

    first, second = await charges()
    assert first.lava_cost == first.cost
    assert second.lava_cost == Decimal("0.5")
    assert first.reconciled_at is not None


@streaming
async def test_a_reply_the_reaper_settled_on_an_estimate_is_billed_as_it_really_ended(
    upstream, alice
) -> None:
    """A process that stalls past the stale limit has its reply interrupted and its charge
    settled on an estimate by the reaper; when the reply then ends, its real usage replaces the
    estimate on the charge as on the reply: the two never disagree."""
    upstream.push_script(tokens=40, interval_ms=20)
    socket = await open_socket(alice)
    accepted = await send_and_accept(socket, "a long one")
    await socket.recv_until(lambda f: f["type"] == "delta" and f["seq"] >= 3)
    # What the reaper does to a reply whose heartbeat is stale.
    interrupted = await database_sync_to_async(progress.interrupt)([accepted["message"]])
    assert [m.pk for m in interrupted] == [accepted["message"]]
    estimate = await database_sync_to_async(Charge.objects.get)(user=alice)
    assert estimate.state == "settled" and estimate.estimated
    done = (await socket.done(accepted["message"]))[-1]
    await socket.close()
    assert done["status"] == "complete"
    reply = await message(accepted["message"])
    charge = await database_sync_to_async(Charge.objects.get)(user=alice)
    assert (reply.status, reply.usage_estimated, charge.estimated) == ("complete", False, False)
    assert charge.cost == reply.cost is not None
    assert (charge.prompt_tokens, charge.completion_tokens) == (
        reply.prompt_tokens,
        reply.completion_tokens,
    )
    assert charge.completion_tokens > estimate.completion_tokens


@streaming
async def test_deleting_a_conversation_mid_reply_stops_it_and_still_bills_it(
    upstream, alice
) -> None:
    upstream.push_script(tokens=300, interval_ms=10)
    socket = await open_socket(alice)
    accepted = await send_and_accept(socket, "long one, then gone")
    await socket.recv_until(lambda f: f["type"] == "delta" and f["seq"] >= 3)

    @database_sync_to_async
    def delete() -> int:
        client = Client()
        client.force_login(alice)
        return client.delete(f"/api/conversations/{accepted['conversation']}").status_code

    assert await delete() == HTTPStatus.NO_CONTENT
    done = (await socket.done(accepted["message"]))[-1]
    await socket.close()
    assert done["status"] == "stopped"
    await upstream.wait_until(lambda: upstream.log[-1].outcome == "cancelled", timeout=5)
    charge = await database_sync_to_async(Charge.objects.get)(user=alice)
    assert charge.state == "settled"
    assert charge.message_id is None
    assert charge.cost is not None and charge.cost > 0
    assert not await database_sync_to_async(Message.objects.filter(user=alice).exists)()
