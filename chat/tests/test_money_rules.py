"""The money rules one boundary at a time: character weights, prompt estimates, amounts as
text, budgets, reservations and settlements. Each test pins a rule a mutation of the code
showed unprotected (docs/reliability.md, "Mutation testing")."""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Callable
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.utils import timezone

from chat import errors
from chat.actions import progress, prompts, replies, titles
from chat.billing import budgets, prices, settlement
from chat.errors import Refused
from chat.models import Charge, ChatModel, Conversation, Message, Profile
from chat.protocol import Params, Send
from chat.testing.wsclient import MODEL, request_id

# Character weights -------------------------------------------------------------------------


def _expected_class(code_point: int) -> int:
    """The class a code point falls in, read from the declarations: the last class that lists
    it (later classes are carved out of earlier ones), else the first ("other")."""
    found = 0
    for index, cls in enumerate(prices.CHAR_CLASSES):
        if any(first <= code_point <= last for first, last in cls.ranges):
            found = index
    return found


def _boundaries() -> list[int]:
    points = {0, 0x7F, 0x80, 0xFF, 0x10FFFF}
    for cls in prices.CHAR_CLASSES:
        for first, last in cls.ranges:
            points |= {first - 1, first, last, last + 1}
    return sorted(p for p in points if 0 <= p <= 0x10FFFF)


def test_the_weight_tables_give_every_range_boundary_its_class_weight() -> None:
    # The tables are built once at import; building them again here is what runs the code.
    classes, units, ascii_units = prices._tables()
    assert len(classes) == len(units) == 0x110000
    # A bytes.translate table is 256 entries long; ASCII text only reads the first 128.
    assert len(ascii_units) == 256
    for code_point in _boundaries():
        expected = _expected_class(code_point)
        weight = prices.CHAR_CLASSES[expected].units
        assert classes[code_point] == expected, hex(code_point)
        assert ord(units[code_point]) == weight, hex(code_point)
        if code_point < 0x80:
            assert ascii_units[code_point] == weight, hex(code_point)


@pytest.mark.parametrize("units", [0, 256])
def test_a_class_that_weighs_nothing_or_more_than_a_byte_holds_is_refused(
    monkeypatch: pytest.MonkeyPatch, units: int
) -> None:
    broken = prices.CharClass("broken", units, ((0x41, 0x41),))
    monkeypatch.setattr(prices, "CHAR_CLASSES", (*prices.CHAR_CLASSES, broken))
    with pytest.raises(ValueError, match="broken"):
        prices._tables()


@pytest.mark.parametrize("units", [1, 255])
def test_the_lightest_and_heaviest_weights_a_byte_holds_are_accepted(
    monkeypatch: pytest.MonkeyPatch, units: int
) -> None:
    edge = prices.CharClass("edge", units, ((0x41, 0x41),))
    monkeypatch.setattr(prices, "CHAR_CLASSES", (*prices.CHAR_CLASSES, edge))
    _, weights, _ = prices._tables()
    assert ord(weights[0x41]) == units


# Costs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "completion", "input_price", "output_price", "expected"),
    [
        # 123 * 0.5 + 456 * 1.5 = 745.5, per million
        (123, 456, "0.5", "1.5", "0.0007455"),
        # 1000 * 0.27216 + 500 * 0.27216 = 408.24, per million
        (1000, 500, "0.27216", "0.27216", "0.00040824"),
        # each side alone
        (2_000_000, 0, "0.25", "4", "0.5"),
        (0, 2_000_000, "0.25", "4", "8"),
    ],
)
def test_a_call_costs_its_tokens_times_the_prices_per_million(
    prompt: int, completion: int, input_price: str, output_price: str, expected: str
) -> None:
    # Hand-computed: a comparison with prices.cost itself would follow any change to it.
    assert prices.cost(prompt, completion, Decimal(input_price), Decimal(output_price)) == (
        Decimal(expected)
    )


def test_usage_that_could_not_be_priced_stays_unpriced_whatever_was_reserved() -> None:
    assert settlement.bounded(None, Decimal("1")) is None
    assert settlement.bounded(None, None) is None
    assert settlement.bounded(Decimal("2"), None) == Decimal("2")


# Prompt estimates --------------------------------------------------------------------------


def test_a_message_without_text_counts_its_overhead_only() -> None:
    assert prices.estimate_prompt_tokens([{"role": "assistant"}]) == (
        prices.MESSAGE_OVERHEAD_TOKENS
    )
    assert prices.estimate_prompt_tokens([{"role": "user", "content": []}]) == (
        prices.MESSAGE_OVERHEAD_TOKENS
    )


def test_the_text_parts_of_a_message_count_and_its_image_parts_add_no_text() -> None:
    text = {"type": "text", "text": "hello world"}
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    alone = prices.estimate_prompt_tokens([{"role": "user", "content": [text]}])
    assert alone == prices.estimate_tokens("hello world") + prices.MESSAGE_OVERHEAD_TOKENS
    assert prices.estimate_prompt_tokens([{"role": "user", "content": [text, image]}]) == alone


# The reply's room: max_tokens and the context ------------------------------------------------

LETTERS = "a" * 100  # 26 tokens by estimate, and 4 of overhead a message: 30
TURN = prices.estimate_tokens(LETTERS) + prices.MESSAGE_OVERHEAD_TOKENS


def _model(context: int = 100_000, max_output: int = 8192) -> ChatModel:
    return ChatModel(
        model_id="org/model", name="Model", context_length=context, max_output_tokens=max_output
    )


def _exchange(conversation: Conversation, *roles: str) -> list[Message]:
    return [Message(conversation=conversation, role=role, content=LETTERS) for role in roles]


def _prompt(
    conversation: Conversation,
    history: list[Message],
    model: ChatModel,
    params: Params | None = None,
) -> tuple[dict[str, Any], int]:
    return prompts.build_prompt(conversation, history, model, params or Params(), "rid")


def test_a_reply_gets_the_max_tokens_asked_for_when_it_fits() -> None:
    conversation = Conversation(params={"max_tokens": 300})
    body, estimate = _prompt(
        conversation, _exchange(conversation, "user"), _model(), Params(max_tokens=100)
    )
    assert (body["max_tokens"], estimate) == (100, TURN)


def test_without_a_max_tokens_the_conversations_then_the_sites_default_applies(
    settings: Any,
) -> None:
    settings.DEFAULT_MAX_TOKENS = 500
    stored = Conversation(params={"max_tokens": 300})
    body, _ = _prompt(stored, _exchange(stored, "user"), _model())
    assert body["max_tokens"] == 300
    plain = Conversation(params={})
    body, _ = _prompt(plain, _exchange(plain, "user"), _model())
    assert body["max_tokens"] == 500


def test_max_tokens_is_capped_at_the_models_maximum_output() -> None:
    conversation = Conversation()
    history = _exchange(conversation, "user")
    body, _ = _prompt(conversation, history, _model(max_output=400), Params(max_tokens=401))
    assert body["max_tokens"] == 400
    body, _ = _prompt(conversation, history, _model(max_output=400), Params(max_tokens=399))
    assert body["max_tokens"] == 399


def test_a_conversation_that_exactly_fits_with_its_reply_keeps_every_turn() -> None:
    conversation = Conversation()
    history = _exchange(conversation, "user", "assistant", "user")
    body, estimate = _prompt(
        conversation, history, _model(context=3 * TURN + 10), Params(max_tokens=10)
    )
    assert len(body["messages"]) == 3
    assert (body["max_tokens"], estimate) == (10, 3 * TURN)


def test_one_token_too_many_drops_the_oldest_exchange_and_starts_with_a_question() -> None:
    conversation = Conversation()
    history = _exchange(conversation, "user", "assistant", "user")
    body, estimate = _prompt(
        conversation, history, _model(context=3 * TURN + 9), Params(max_tokens=10)
    )
    assert [m["role"] for m in body["messages"]] == ["user"]
    assert (body["max_tokens"], estimate) == (10, TURN)


def test_the_reply_gets_the_room_left_in_the_context_down_to_its_minimum() -> None:
    conversation = Conversation()
    history = _exchange(conversation, "user")
    room = prompts.MIN_REPLY_TOKENS
    body, _ = _prompt(conversation, history, _model(context=TURN + room), Params(max_tokens=5000))
    assert body["max_tokens"] == room
    with pytest.raises(Refused) as refused:
        _prompt(conversation, history, _model(context=TURN + room - 1), Params(max_tokens=5000))
    assert refused.value.code == errors.CONTENT_TOO_LONG


def test_a_small_max_tokens_needs_only_its_own_room() -> None:
    conversation = Conversation()
    history = _exchange(conversation, "user")
    body, _ = _prompt(conversation, history, _model(context=TURN + 10), Params(max_tokens=10))
    assert body["max_tokens"] == 10
    with pytest.raises(Refused) as refused:
        _prompt(conversation, history, _model(context=TURN + 9), Params(max_tokens=10))
    assert refused.value.code == errors.CONTENT_TOO_LONG


def _turns(conversation: Conversation, *turns: tuple[str, int]) -> list[Message]:
    return [
        Message(conversation=conversation, role=role, content="a" * length)
        for role, length in turns
    ]


def _size(length: int) -> int:
    return prices.estimate_tokens("a" * length) + prices.MESSAGE_OVERHEAD_TOKENS


def test_only_the_oldest_exchange_is_dropped_when_that_makes_room() -> None:
    conversation = Conversation()
    lengths = [("user", 100), ("assistant", 300), ("user", 200), ("assistant", 400), ("user", 50)]
    kept = sum(_size(n) for _, n in lengths[2:])
    context = kept + 10
    body, estimate = _prompt(
        conversation, _turns(conversation, *lengths), _model(context=context), Params(max_tokens=10)
    )
    assert [(m["role"], len(m["content"])) for m in body["messages"]] == lengths[2:]
    assert estimate == kept


def test_a_question_after_a_question_is_dropped_alone_when_that_makes_room() -> None:
    conversation = Conversation()
    # A question whose reply failed without text, then the question asked again.
    lengths = [("user", 300), ("user", 100)]
    body, estimate = _prompt(
        conversation,
        _turns(conversation, *lengths),
        _model(context=_size(100) + 10),
        Params(max_tokens=10),
    )
    assert [len(m["content"]) for m in body["messages"]] == [100]
    assert estimate == _size(100)


def test_a_question_too_long_for_the_context_is_refused_saying_so() -> None:
    conversation = Conversation()
    model = _model(context=2000)
    model.name = "Tiny"
    with pytest.raises(Refused) as refused:
        _prompt(conversation, _turns(conversation, ("user", 10_000)), model)
    assert (refused.value.code, refused.value.request_id) == (errors.CONTENT_TOO_LONG, "rid")
    assert refused.value.message == (
        "The message is too long for Tiny's context of 2,000 tokens. "
        "Shorten it or pick a model with a longer context."
    )


def test_sampling_settings_come_from_the_send_then_the_conversation_or_are_left_out() -> None:
    stored = Conversation(params={"temperature": 0.3, "top_p": 0.5})
    history = _exchange(stored, "user")
    body, _ = _prompt(stored, history, _model())
    assert (body["temperature"], body["top_p"]) == (0.3, 0.5)
    body, _ = _prompt(stored, history, _model(), Params(temperature=1.2, top_p=0.9))
    assert (body["temperature"], body["top_p"]) == (1.2, 0.9)
    plain = Conversation(params={})
    body, _ = _prompt(plain, _exchange(plain, "user"), _model())
    assert "temperature" not in body and "top_p" not in body
    body, _ = _prompt(plain, _exchange(plain, "user"), _model(), Params(temperature=0.0))
    assert body["temperature"] == 0.0


def test_the_system_prompt_sent_is_the_sends_own_then_the_conversations() -> None:
    conversation = Conversation(system_prompt="Be brief.")
    history = _exchange(conversation, "user")
    body, estimate = _prompt(conversation, history, _model())
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}
    system = prices.estimate_prompt_tokens([{"content": "Be brief."}])
    assert estimate == system + TURN
    body, _ = _prompt(conversation, history, _model(), Params(system_prompt="Be long."))
    assert body["messages"][0] == {"role": "system", "content": "Be long."}
    # A blank one is none at all, even over the conversation's.
    body, estimate = _prompt(conversation, history, _model(), Params(system_prompt="  \n"))
    assert [m["role"] for m in body["messages"]] == ["user"] and estimate == TURN


def test_empty_messages_and_replies_still_being_written_are_not_sent() -> None:
    conversation = Conversation()
    question, empty, streaming, last = _exchange(
        conversation, "user", "assistant", "assistant", "user"
    )
    empty.content = ""
    streaming.status = Message.Status.STREAMING
    body, estimate = _prompt(conversation, [question, empty, streaming, last], _model())
    assert body["messages"] == [
        {"role": "user", "content": LETTERS},
        {"role": "user", "content": LETTERS},
    ]
    assert estimate == 2 * TURN


# Limits on sends -----------------------------------------------------------------------------


def _state(streaming: int = 0, recent: int = 0) -> replies.SenderState:
    return replies.SenderState(replayed=None, streaming=streaming, recent=recent)


def test_replies_in_progress_are_limited_at_exactly_the_setting(settings: Any) -> None:
    settings.MAX_CONCURRENT_GENERATIONS = 3
    replies._check_limits(_state(streaming=2), "rid")
    with pytest.raises(Refused) as refused:
        replies._check_limits(_state(streaming=3), "rid")
    assert (refused.value.code, refused.value.request_id) == (
        errors.TOO_MANY_GENERATIONS,
        "rid",
    )
    assert refused.value.message == (
        "You already have 3 replies in progress. Wait for one to finish or stop it."
    )


def test_sends_a_minute_are_limited_at_exactly_the_setting(settings: Any) -> None:
    settings.MESSAGES_PER_MINUTE = 5
    replies._check_limits(_state(recent=4), "rid")
    with pytest.raises(Refused) as refused:
        replies._check_limits(_state(recent=5), "rid")
    assert (refused.value.code, refused.value.request_id) == (errors.RATE_LIMITED, "rid")
    assert refused.value.message == "You can send 5 messages a minute. Try again shortly."


# Settling a reply ----------------------------------------------------------------------------

PRICE = Decimal("0.27216")


@pytest.fixture
def user(db: None) -> User:
    """A user without a password: hashing one takes most of a test's second."""
    return get_user_model().objects.create(username="member")


@pytest.fixture
def configured(settings: Any) -> None:
    settings.LAVA_FORWARD_URL = "http://127.0.0.1:9/v1/forward"
    settings.CHUTES_API_BASE = "http://127.0.0.1:9/v1"
    settings.LAVA_FORWARD_TOKEN = "test-token"


@pytest.fixture
def accept(configured: None, user: User) -> Callable[..., replies.GenerationPlan]:
    def accepted(content: str = "a question", max_tokens: int = 100) -> replies.GenerationPlan:
        frame = Send(
            request_id=request_id(),
            conversation=None,
            model=MODEL,
            content=content,
            params=Params(max_tokens=max_tokens),
        )
        return replies.accept(user, frame)

    return accepted


def _outcome(plan: replies.GenerationPlan, **changes: Any) -> progress.Outcome:
    fields: dict[str, Any] = {
        "plan": plan,
        "status": "complete",
        "content": "the answer",
        "reasoning": "",
        "seq": 3,
        "prompt_tokens": 40,
        "completion_tokens": 7,
        "cached_tokens": 2,
        "finish_reason": "stop",
        "error_code": "",
        "error_message": "",
        "lava_request_id": "lava-1",
        "chutes_invocation_id": "inv-1",
        "reasoning_ms": None,
    }
    return progress.Outcome(**{**fields, **changes})


def _charge(plan: replies.GenerationPlan) -> Charge:
    return Charge.objects.get(pk=plan.charge_id)


def test_a_reply_with_usage_is_billed_its_usage_on_the_reply_and_its_charge(
    accept: Callable[..., replies.GenerationPlan],
) -> None:
    plan = accept()
    reply = progress.finish_generation(_outcome(plan))
    assert reply is not None
    stored = Message.objects.get(pk=plan.message_id)
    charge = _charge(plan)
    cost = prices.cost(40, 7, PRICE, PRICE)
    assert (stored.prompt_tokens, stored.completion_tokens, stored.cached_tokens) == (40, 7, 2)
    assert (stored.usage_estimated, stored.cost, stored.status) == (False, cost, "complete")
    assert (charge.state, charge.prompt_tokens, charge.completion_tokens) == ("settled", 40, 7)
    assert (charge.cached_tokens, charge.estimated, charge.lava_request_id) == (2, False, "lava-1")
    assert charge.cost == charge.usage_cost == cost
    assert charge.settled_at is not None and stored.finished_at is not None
    conversation = Conversation.objects.get(pk=plan.conversation_id)
    assert conversation.updated_at == stored.finished_at


@pytest.mark.parametrize(("prompt", "completion"), [(None, 7), (40, None), (None, None)])
def test_a_reply_missing_either_count_is_billed_from_estimates(
    accept: Callable[..., replies.GenerationPlan], prompt: int | None, completion: int | None
) -> None:
    plan = accept()
    progress.finish_generation(
        _outcome(
            plan,
            prompt_tokens=prompt,
            completion_tokens=completion,
            content="the answer",
            reasoning="the thought",
        )
    )
    stored = Message.objects.get(pk=plan.message_id)
    completion_estimate = prices.estimate_tokens("the answer" + "the thought")
    assert (stored.prompt_tokens, stored.completion_tokens) == (
        plan.prompt_estimate,
        completion_estimate,
    )
    assert stored.usage_estimated is True and stored.cached_tokens == 0
    cost = prices.cost(plan.prompt_estimate, completion_estimate, PRICE, PRICE)
    charge = _charge(plan)
    assert stored.cost == charge.cost == charge.usage_cost == cost
    assert charge.estimated is True


def test_usage_above_the_reservation_is_billed_the_reservation_and_kept_whole(
    accept: Callable[..., replies.GenerationPlan],
) -> None:
    plan = accept()
    progress.finish_generation(_outcome(plan, completion_tokens=1_000_000))
    charge = _charge(plan)
    assert charge.usage_cost == prices.cost(40, 1_000_000, PRICE, PRICE)
    assert charge.cost == plan.reserved == Message.objects.get(pk=plan.message_id).cost


def test_usage_exactly_at_the_reservation_is_billed_whole(
    accept: Callable[..., replies.GenerationPlan],
) -> None:
    plan = accept()
    at = dataclasses.replace(plan, reserved=prices.cost(40, 7, PRICE, PRICE))
    progress.finish_generation(_outcome(at))
    charge = _charge(plan)
    assert charge.cost == charge.usage_cost == at.reserved


def test_an_end_over_the_saved_text_is_billed_at_most_the_reservation_too(
    accept: Callable[..., replies.GenerationPlan],
) -> None:
    plan = accept()
    progress.finish_generation(_outcome(plan, completion_tokens=1_000_000, keep_saved_text=True))
    charge = _charge(plan)
    assert charge.cost == plan.reserved == Message.objects.get(pk=plan.message_id).cost
    assert charge.usage_cost == prices.cost(40, 1_000_000, PRICE, PRICE)


def test_a_call_that_reserved_nothing_is_billed_its_usage(
    accept: Callable[..., replies.GenerationPlan],
) -> None:
    plan = dataclasses.replace(accept(), reserved=Decimal(0))
    progress.finish_generation(_outcome(plan))
    assert _charge(plan).cost == prices.cost(40, 7, PRICE, PRICE)


def test_usage_at_an_unknown_price_is_not_given_a_cost() -> None:
    for input_price, output_price in ((None, PRICE), (PRICE, None)):
        reply = Message(
            content="x", input_price=input_price, output_price=output_price, usage_estimated=False
        )
        assert settlement.price_reply(reply) is None and reply.cost is None


def test_the_end_written_over_the_saved_text_is_billed_for_that_text(
    accept: Callable[..., replies.GenerationPlan],
) -> None:
    plan = accept()
    Message.objects.filter(pk=plan.message_id).update(content="saved so far", reasoning="hmm")
    progress.finish_generation(
        _outcome(
            plan,
            content="text no database stores",
            prompt_tokens=None,
            completion_tokens=None,
            keep_saved_text=True,
        )
    )
    stored = Message.objects.get(pk=plan.message_id)
    assert (stored.content, stored.reasoning) == ("saved so far", "hmm")
    estimate = prices.estimate_tokens("saved so far" + "hmm")
    assert stored.completion_tokens == estimate
    assert _charge(plan).cost == prices.cost(plan.prompt_estimate, estimate, PRICE, PRICE)


def test_a_reply_deleted_meanwhile_is_still_settled(
    accept: Callable[..., replies.GenerationPlan],
) -> None:
    plan = accept()
    Message.objects.filter(pk=plan.message_id).delete()
    assert progress.finish_generation(_outcome(plan)) is None
    charge = _charge(plan)
    assert (charge.state, charge.cost) == ("settled", prices.cost(40, 7, PRICE, PRICE))


def test_the_end_of_a_reply_is_stored_field_for_field(
    accept: Callable[..., replies.GenerationPlan],
) -> None:
    plan = accept()
    progress.finish_generation(
        _outcome(
            plan,
            status="error",
            content="partial",
            reasoning="why",
            seq=17,
            finish_reason="",
            error_code="timeout",
            error_message="The model did not answer in time.",
            reasoning_ms=1234,
        )
    )
    stored = Message.objects.get(pk=plan.message_id)
    assert (stored.status, stored.content, stored.reasoning, stored.seq) == (
        "error",
        "partial",
        "why",
        17,
    )
    assert (stored.error_code, stored.error_message, stored.reasoning_ms) == (
        "timeout",
        "The model did not answer in time.",
        1234,
    )
    assert (stored.lava_request_id, stored.chutes_invocation_id) == ("lava-1", "inv-1")


def test_an_end_over_the_saved_text_of_a_reply_deleted_meanwhile_is_billed_for_no_text(
    accept: Callable[..., replies.GenerationPlan],
) -> None:
    plan = accept()
    Message.objects.filter(pk=plan.message_id).delete()
    ended = progress.finish_generation(
        _outcome(plan, prompt_tokens=None, completion_tokens=None, keep_saved_text=True)
    )
    assert ended is None
    charge = _charge(plan)
    assert (charge.state, charge.completion_tokens) == ("settled", 0)
    assert charge.cost == prices.cost(plan.prompt_estimate, 0, PRICE, PRICE)


def test_long_upstream_strings_are_stored_cut_to_their_columns(
    accept: Callable[..., replies.GenerationPlan],
) -> None:
    plan = accept()
    progress.finish_generation(
        _outcome(
            plan,
            finish_reason="f" * 40,
            error_message="e" * 600,
            lava_request_id="l" * 150,
            chutes_invocation_id="c" * 150,
        )
    )
    stored = Message.objects.get(pk=plan.message_id)
    assert [
        len(stored.finish_reason),
        len(stored.error_message),
        len(stored.lava_request_id),
        len(stored.chutes_invocation_id),
    ] == [30, 500, 100, 100]


# Settling a title ----------------------------------------------------------------------------


def _title_plan(user: User, reserved: Decimal = Decimal("1")) -> titles.TitlePlan:
    conversation = Conversation.objects.create(owner=user, title="first line")
    charge = Charge.objects.create(
        user=user,
        conversation=conversation,
        model_id=MODEL,
        kind=Charge.Kind.TITLE,
        input_price=PRICE,
        output_price=PRICE,
        reserved=reserved,
        prompt_tokens=50,
        estimated=True,
    )
    return titles.TitlePlan(
        conversation_id=conversation.pk,
        charge_id=charge.pk,
        reserved=reserved,
        body={},
        model_id=MODEL,
        reasoning_model=False,
        prompt_estimate=50,
    )


@pytest.mark.django_db
def test_a_title_with_usage_is_billed_its_usage(user: User) -> None:
    plan = _title_plan(user)
    assert titles.finish_title(plan, "A Title", "", 60, 5, "lava-t") == "A Title"
    charge = Charge.objects.get(pk=plan.charge_id)
    assert (charge.prompt_tokens, charge.completion_tokens, charge.estimated) == (60, 5, False)
    assert charge.cost == charge.usage_cost == prices.cost(60, 5, PRICE, PRICE)
    assert (charge.state, charge.lava_request_id) == ("settled", "lava-t")
    assert charge.settled_at is not None


@pytest.mark.django_db
@pytest.mark.parametrize(("prompt", "completion"), [(None, 5), (60, None), (None, None)])
def test_a_title_missing_either_count_is_billed_from_estimates(
    user: User, prompt: int | None, completion: int | None
) -> None:
    plan = _title_plan(user)
    titles.finish_title(plan, "A Title", "some thought", prompt, completion, "")
    charge = Charge.objects.get(pk=plan.charge_id)
    estimate = prices.estimate_tokens("A Title" + "some thought")
    assert (charge.prompt_tokens, charge.completion_tokens, charge.estimated) == (
        50,
        estimate,
        True,
    )
    assert charge.cost == charge.usage_cost == prices.cost(50, estimate, PRICE, PRICE)


@pytest.mark.django_db
def test_a_title_is_written_on_its_own_conversation_only(user: User) -> None:
    other = Conversation.objects.create(owner=user, title="another chat")
    plan = _title_plan(user)
    titles.finish_title(plan, "A Title", "", 60, 5, "l" * 150)
    assert Conversation.objects.get(pk=plan.conversation_id).title == "A Title"
    assert Conversation.objects.get(pk=other.pk).title == "another chat"
    assert len(Charge.objects.get(pk=plan.charge_id).lava_request_id) == 100


@pytest.mark.django_db
def test_a_title_never_replaces_one_the_user_set_meanwhile_and_is_still_billed(
    user: User,
) -> None:
    plan = _title_plan(user)
    Conversation.objects.filter(pk=plan.conversation_id).update(
        title="my name", title_is_custom=True
    )
    assert titles.finish_title(plan, "A Title", "", 60, 5, "") is None
    assert Conversation.objects.get(pk=plan.conversation_id).title == "my name"
    assert Charge.objects.get(pk=plan.charge_id).state == "settled"


@pytest.mark.django_db
def test_a_title_is_billed_at_most_its_reservation(user: User) -> None:
    plan = _title_plan(user, reserved=Decimal("0.000001"))
    titles.finish_title(plan, "A Title", "", 60, 100_000, "")
    charge = Charge.objects.get(pk=plan.charge_id)
    assert charge.cost == Decimal("0.000001") < charge.usage_cost


# Budgets -------------------------------------------------------------------------------------


def test_a_month_starts_at_midnight_of_its_first_day_in_the_servers_time_zone(
    settings: Any,
) -> None:
    settings.TIME_ZONE = "America/New_York"
    # 03:00 on 1 March in UTC is still 28 February in New York.
    moment = datetime.datetime(2026, 3, 1, 3, 0, tzinfo=datetime.UTC)
    start = budgets.month_start(moment)
    assert start == datetime.datetime(2026, 2, 1, tzinfo=ZoneInfo("America/New_York"))
    assert budgets.month_start() == budgets.month_start(timezone.now())


def test_the_month_after_december_is_january_of_the_next_year() -> None:
    december = timezone.make_aware(datetime.datetime(2026, 12, 1))
    assert budgets.next_month_start(december) == timezone.make_aware(datetime.datetime(2027, 1, 1))
    january = timezone.make_aware(datetime.datetime(2027, 1, 1))
    assert budgets.next_month_start(january) == timezone.make_aware(datetime.datetime(2027, 2, 1))


@pytest.mark.django_db
def test_each_budget_mode_gives_its_limit(user: User, settings: Any) -> None:
    settings.MONTHLY_BUDGET_USD = Decimal("7")
    assert budgets.limit_for(user) == Decimal("7")
    Profile.objects.filter(user=user).update(budget_mode="custom", monthly_limit=Decimal("3"))
    assert budgets.limit_for(user) == Decimal("3")
    Profile.objects.filter(user=user).update(budget_mode="unlimited")
    assert budgets.limit_for(user) is None
    Profile.objects.filter(user=user).delete()
    assert budgets.limit_for(user) == Decimal("7")


@pytest.mark.django_db
def test_what_was_spent_counts_from_the_first_instant_of_the_month(user: User) -> None:
    start = budgets.month_start()
    for cost, at in (("0.25", start), ("5", start - datetime.timedelta(microseconds=1))):
        charge = Charge.objects.create(user=user, model_id=MODEL, state="settled", cost=cost)
        Charge.objects.filter(pk=charge.pk).update(created_at=at)
    assert budgets.standing(user).spent == Decimal("0.25")
    earlier = budgets.standing(user, start - datetime.timedelta(days=1))
    assert (earlier.spent, earlier.reserved) == (Decimal("5.25"), Decimal(0))


@pytest.mark.django_db
def test_a_standing_counts_the_users_own_settled_costs_and_open_reservations(
    user: User, settings: Any
) -> None:
    settings.MONTHLY_BUDGET_USD = Decimal("9")
    # A settled charge keeps the reservation it was accepted with: only its cost counts.
    Charge.objects.create(
        user=user, model_id=MODEL, state="settled", cost=Decimal("0.25"), reserved=Decimal("2")
    )
    Charge.objects.create(user=user, model_id=MODEL, state="reserved", reserved=Decimal("0.5"))
    other = get_user_model().objects.create(username="other")
    Charge.objects.create(user=other, model_id=MODEL, state="settled", cost=Decimal("3"))
    Charge.objects.create(user=other, model_id=MODEL, state="reserved", reserved=Decimal("4"))
    current = budgets.standing(user)
    assert (current.limit, current.spent, current.reserved) == (
        Decimal("9"),
        Decimal("0.25"),
        Decimal("0.5"),
    )


@pytest.mark.django_db
def test_a_worst_case_exactly_equal_to_what_is_left_passes_the_check(
    user: User, settings: Any
) -> None:
    settings.MONTHLY_BUDGET_USD = Decimal("1")
    Charge.objects.create(user=user, model_id=MODEL, state="settled", cost=Decimal("0.25"))
    Charge.objects.create(user=user, model_id=MODEL, state="reserved", reserved=Decimal("0.5"))
    budgets.check_budget(user, Decimal("0.25"), "rid")
    with pytest.raises(Refused) as refused:
        budgets.check_budget(user, Decimal("0.25") + prices.COST_QUANTUM, "rid")
    assert (refused.value.code, refused.value.request_id) == (errors.BUDGET_EXCEEDED, "rid")
    assert refused.value.message == (
        "This reply could cost up to $0.250000000001, and $0.25 is left of your $1.00 "
        "monthly limit ($0.50 is held for replies still being written). Pick a cheaper "
        "model, lower the maximum reply length, or ask an admin to raise your limit."
    )


@pytest.mark.django_db
def test_a_refusal_with_nothing_running_and_nothing_left_says_so(user: User, settings: Any) -> None:
    settings.MONTHLY_BUDGET_USD = Decimal("1")
    Charge.objects.create(user=user, model_id=MODEL, state="settled", cost=Decimal("1.5"))
    with pytest.raises(Refused) as refused:
        budgets.check_budget(user, Decimal("0.01"), "")
    assert refused.value.request_id is None
    assert refused.value.message.startswith(
        "This reply could cost up to $0.01, and $0.00 is left of your $1.00 monthly limit. "
    )


@pytest.mark.django_db
def test_without_a_limit_any_worst_case_passes(user: User) -> None:
    Profile.objects.filter(user=user).update(budget_mode="unlimited")
    Charge.objects.create(user=user, model_id=MODEL, state="settled", cost=Decimal("1000"))
    budgets.check_budget(user, Decimal("1000000"), "rid")
