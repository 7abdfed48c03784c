"""Single-row reads of the send path (chat/rows.py) return what the ORM returns."""

from __future__ import annotations

from decimal import Decimal

import pytest

from chat import rows
from chat.models import ChatModel, Message, Profile

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
