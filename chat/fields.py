"""Money in the database.

SQLite keeps DECIMAL columns as binary floats, and sums them as floats: a cost with twelve
decimals would come back rounded, and a month's total would drift. Amounts of money are
therefore stored as integers of 1e-12 USD (exact in SQLite and PostgreSQL alike, and summed
exactly by the database) and are `Decimal` everywhere in Python.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models.expressions import Combinable

PLACES = 12
QUANTUM = Decimal(1).scaleb(-PLACES)


class MoneyField(models.BigIntegerField):
    """USD as Decimal with twelve decimals, stored as an integer count of 1e-12 USD.

    The largest amount is about 9.2 million USD, per row and for any sum the database makes.
    """

    description = "Amount of money in USD (twelve decimals, stored exactly)"

    # The Python types of the column for django-stubs' plugin, which reads these private
    # attributes (annotations only, nothing at run time): Decimal out, what to_python takes in.
    # They differ from the integer column's on purpose, hence the ignores.
    _pyi_private_set_type: Decimal | int | str | Combinable  # type: ignore[assignment]  # Decimal in
    _pyi_private_get_type: Decimal  # type: ignore[assignment]  # Decimal out

    def from_db_value(self, value: Any, expression: Any, connection: Any) -> Decimal | None:
        if value is None:
            return None
        return Decimal(int(value)).scaleb(-PLACES).quantize(QUANTUM)

    def to_python(self, value: Any) -> Decimal | None:
        if value is None or isinstance(value, Decimal):
            return value
        try:
            return Decimal(str(value))
        except InvalidOperation:
            raise ValidationError("Enter an amount in USD.", code="invalid") from None

    def get_prep_value(self, value: Any) -> int | None:
        amount = self.to_python(value)
        if amount is None:
            return None
        return int(amount.quantize(QUANTUM, rounding=ROUND_HALF_EVEN).scaleb(PLACES))

    def get_db_prep_value(self, value: Any, connection: Any, prepared: bool = False) -> Any:
        if not prepared:
            value = self.get_prep_value(value)
        return value

    def formfield(self, **kwargs: Any) -> forms.Field:
        return forms.DecimalField(
            **{"decimal_places": PLACES, "max_digits": 19, "required": not self.blank, **kwargs}
        )
