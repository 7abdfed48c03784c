"""Single-row reads for the send path, without the ORM's query compiler.

Building a query (`filter(...).first()`) costs about 0.2 ms of Python on this kind of machine,
four times what the database takes to answer it; a send runs several. `Manager.raw()` with SQL
written once per lookup skips the building and still returns model instances through Django's
own converters (prices come back as exact `Decimal`s on every backend).
"""

from __future__ import annotations

from functools import cache
from typing import Any, TypeVar

from django.db import connection, models

M = TypeVar("M", bound=models.Model)


@cache
def _select_by(model: type[models.Model], field_name: str) -> str:
    field = model._meta.get_field(field_name)
    assert isinstance(field, models.Field)
    # Unique, so at most one row: no ORDER BY or LIMIT needed.
    if not (field.primary_key or field.unique):
        raise ValueError(f"{model.__name__}.{field_name} is not unique")
    table, column = (
        connection.ops.quote_name(model._meta.db_table),
        connection.ops.quote_name(field.column),
    )
    return f"SELECT * FROM {table} WHERE {column} = %s"  # noqa: S608 - names from our models


def one_by(model: type[M], field_name: str, value: Any) -> M | None:
    """The row of `model` whose unique field `field_name` equals `value`, or None."""
    return next(iter(model._default_manager.raw(_select_by(model, field_name), [value])), None)
