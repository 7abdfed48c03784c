"""Reads and writes of single rows on the send path, without the ORM's query compiler.

Building a query (`filter(...).first()`, `objects.create()`, `filter(...).update()`) costs 0.1
to 0.3 ms of Python on this kind of machine, several times what the database takes to answer
it, and accepting and finishing a reply ran fourteen of them. Here each statement's SQL is written
once per model and field set; values still go through each field's own preparation for the
database, and reads through `Manager.raw()`, which applies Django's converters (prices come back
as exact `Decimal`s on every backend). Only for equality conditions and plain values.

Each call looks the connection up once and hands it to every field: `django.db.connection` is
a proxy that looks it up again on every attribute read (a thread-local lookup each time),
and a row's fields read it dozens of times.
"""

from __future__ import annotations

from functools import cache
from typing import Any, TypeVar, cast

from django.db import DEFAULT_DB_ALIAS, connections, models
from django.db.backends.base.base import BaseDatabaseWrapper

M = TypeVar("M", bound=models.Model)


@cache
def _select_by(model: type[models.Model], field_name: str) -> str:
    field = model._meta.get_field(field_name)
    assert isinstance(field, models.Field)
    # Unique, so at most one row: no ORDER BY or LIMIT needed.
    if not (field.primary_key or field.unique):
        raise ValueError(f"{model.__name__}.{field_name} is not unique")
    quote = _db().ops.quote_name
    table, column = quote(model._meta.db_table), quote(_column(field))
    return f"SELECT * FROM {table} WHERE {column} = %s"  # noqa: S608 - names from our models


def one_by(model: type[M], field_name: str, value: Any, /) -> M | None:
    """The row of `model` whose unique field `field_name` equals `value`, or None."""
    return next(iter(model._default_manager.raw(_select_by(model, field_name), [value])), None)


def _db() -> BaseDatabaseWrapper:
    return connections[DEFAULT_DB_ALIAS]


def _column(field: models.Field) -> str:
    # Every field used here is concrete, and a concrete field has a column (None is for the
    # fields that have none, such as a many-to-many).
    return cast(str, field.column)


@cache
def _insert(model: type[models.Model]) -> tuple[str, tuple[models.Field, ...], bool]:
    fields = tuple(f for f in model._meta.concrete_fields if not f.primary_key)
    for field in fields:
        # Values the database computes would need RETURNING and a read back: not supported.
        if field.generated or field.db_default is not models.NOT_PROVIDED:
            raise ValueError(f"{model.__name__}.{field.name} is computed by the database")
    db = _db()
    quote = db.ops.quote_name
    columns = ", ".join(quote(_column(f)) for f in fields)
    sql = (
        f"INSERT INTO {quote(model._meta.db_table)} ({columns}) "  # noqa: S608 - names from our models
        f"VALUES ({', '.join(['%s'] * len(fields))})"
    )
    returning = db.features.can_return_columns_from_insert
    if returning:
        sql += f" RETURNING {quote(_column(model._meta.pk))}"
    return sql, fields, returning


def create(model: type[M], /, **values: Any) -> M:
    """`model.objects.create(**values)` without the query compiler, for the send path's rows.

    The instance is built as Django builds it (defaults, `auto_now_add`), and every value goes
    through its field's own preparation for the database; only the SQL is written once. Models
    created this way must not rely on `save()` or on save signals (none are connected to them),
    and the row goes to the default database (there are no routers).
    """
    instance = model(**values)
    sql, fields, returning = _insert(model)
    db = _db()
    params = [f.get_db_prep_save(f.pre_save(instance, True), db) for f in fields]
    with db.cursor() as cursor:
        cursor.execute(sql, params)
        pk = cursor.fetchone()[0] if returning else cursor.lastrowid
    instance.pk = pk
    instance._state.adding = False
    instance._state.db = db.alias
    return instance


def _field(model: type[models.Model], name: str) -> models.Field:
    field = model._meta.pk if name == "pk" else model._meta.get_field(name)
    assert isinstance(field, models.Field)
    return field


@cache
def _update(model: type[models.Model], where: tuple[str, ...], names: tuple[str, ...]) -> str:
    quote = _db().ops.quote_name
    assignments = ", ".join(f"{quote(_column(_field(model, n)))} = %s" for n in names)
    conditions = " AND ".join(f"{quote(_column(_field(model, n)))} = %s" for n in where)
    table = quote(model._meta.db_table)
    return f"UPDATE {table} SET {assignments} WHERE {conditions}"  # noqa: S608 - names from our models


def update(model: type[models.Model], where: dict[str, Any], /, **values: Any) -> int:
    """`model.objects.filter(**where).update(**values)` for equality conditions and plain
    values (no expressions, no related instances), with SQL written once; returns the number
    of rows changed."""
    sql = _update(model, tuple(where), tuple(values))
    db = _db()
    params = [_field(model, n).get_db_prep_save(v, db) for n, v in values.items()]
    params += [_field(model, n).get_db_prep_value(v, db) for n, v in where.items()]
    with db.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount
