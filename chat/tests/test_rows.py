"""Single-row reads of the send path (chat/rows.py) return what the ORM returns."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.db import models
from django.db.models.functions import Now
from django.test.utils import isolate_apps

from chat import rows
from chat.models import Charge, ChatModel, Conversation, Message, Profile

pytestmark = pytest.mark.django_db

MODEL = "deepseek-ai/DeepSeek-V3-0324"


def test_a_model_read_by_its_id_carries_exact_decimal_prices() -> None:
    # Prices with every decimal place used: a float on the way would lose the last digits.
    ChatModel.objects.filter(model_id=MODEL).update(
        input_price=Decimal("123456.12345678"), output_price=Decimal("0.00000001")
    )
    model = rows.one_by(ChatModel, "model_id", MODEL)
    assert isinstance(model, ChatModel)
    assert model == ChatModel.objects.get(model_id=MODEL)
    assert (model.input_price, model.output_price) == (
        Decimal("123456.12345678"),
        Decimal("0.00000001"),
    )
    assert isinstance(model.input_price, Decimal)
    assert model.enabled and model.priced


def test_a_profile_read_by_its_user_has_the_admins_limit(user) -> None:
    Profile.objects.update_or_create(
        user=user,
        defaults={"budget_mode": Profile.BudgetMode.CUSTOM, "monthly_limit": Decimal("12.34")},
    )
    profile = rows.one_by(Profile, "user", user.pk)
    assert profile is not None
    assert (profile.budget_mode, profile.monthly_limit) == ("custom", Decimal("12.34"))


def test_a_row_that_is_not_there_is_none() -> None:
    assert rows.one_by(ChatModel, "model_id", "no/such-model") is None


def test_a_field_that_is_not_unique_is_refused() -> None:
    with pytest.raises(ValueError, match="not unique"):
        rows.one_by(Message, "role", "user")


def test_a_created_row_is_stored_as_the_orm_would_store_it(user) -> None:
    model = ChatModel.objects.get(model_id=MODEL)
    conversation = rows.create(
        Conversation, owner=user, title="t", model=model, params={"temperature": 0.5}
    )
    reply = rows.create(
        Message,
        conversation=conversation,
        user=user,
        role=Message.Role.ASSISTANT,
        status=Message.Status.STREAMING,
        request_id="r-1",
        model=model,
        input_price=model.input_price,
        output_price=model.output_price,
    )
    charge = rows.create(
        Charge, user=user, message=reply, model_id=MODEL, reserved=Decimal("0.000000000123")
    )
    by_orm = Message.objects.create(conversation=conversation, user=user, role="user")
    stored = Message.objects.get(pk=reply.pk)
    # Defaults and auto_now_add filled as the ORM fills them.
    assert (stored.active, stored.seq, stored.params, stored.content) == (True, 0, {}, "")
    assert by_orm.created_at >= stored.created_at == reply.created_at is not None
    assert stored.input_price == model.input_price
    assert (stored.status, stored.request_id, stored.model_id) == ("streaming", "r-1", model.pk)
    assert Conversation.objects.get(pk=conversation.pk).params == {"temperature": 0.5}
    assert Charge.objects.get(pk=charge.pk).reserved == Decimal("0.000000000123")
    # The instances behave as saved ones.
    assert not reply._state.adding and reply.pk and charge.pk and conversation.pk
    assert by_orm.pk > reply.pk


def test_an_update_changes_only_matching_rows_and_counts_them(user) -> None:
    reserved = Charge.objects.create(user=user, model_id=MODEL, reserved=Decimal("0.5"))
    settled = Charge.objects.create(user=user, model_id=MODEL, state=Charge.State.SETTLED)
    values = {"state": "settled", "cost": Decimal("0.000000000001"), "estimated": True}
    assert rows.update(Charge, {"pk": reserved.pk, "state": "reserved"}, **values) == 1
    # Already settled: the condition on the state keeps it as it was.
    assert rows.update(Charge, {"pk": settled.pk, "state": "reserved"}, **values) == 0
    assert rows.update(Charge, {"pk": 10**9}, **values) == 0
    reserved.refresh_from_db()
    settled.refresh_from_db()
    assert (reserved.state, reserved.cost, reserved.estimated) == (
        "settled",
        Decimal("0.000000000001"),
        True,
    )
    assert (settled.cost, settled.estimated) == (None, False)


@isolate_apps("chat")
def test_a_model_with_a_value_computed_by_the_database_is_refused() -> None:
    class Stamped(models.Model):
        created = models.DateTimeField(db_default=Now())

        def __str__(self) -> str:
            return str(self.pk)

    with pytest.raises(ValueError, match="computed by the database"):
        rows.create(Stamped)
