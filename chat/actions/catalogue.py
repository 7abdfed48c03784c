"""Changes to the model catalogue: prices and availability saved with their history row."""

from __future__ import annotations

from collections.abc import Iterable

from django.contrib.auth.models import User
from django.db import transaction

from chat.models import (
    ChatModel,
    PriceChange,
)

TRACKED_FIELDS = ("input_price", "output_price", "enabled")


def record_catalogue_change(
    before: ChatModel | None,
    after: ChatModel,
    *,
    user: User | None,
    source: str,
    note: str = "",
) -> PriceChange | None:
    """Write a history row when prices or availability differ between `before` and `after`.

    `before` is None for a model that did not exist yet.
    """
    old = {f: getattr(before, f) if before else None for f in TRACKED_FIELDS}
    new = {f: getattr(after, f) for f in TRACKED_FIELDS}
    if before is not None and old == new:
        return None
    return PriceChange.objects.create(
        chat_model=after,
        changed_by=user if user is not None and user.is_authenticated else None,
        source=source,
        old_input_price=old["input_price"],
        new_input_price=new["input_price"],
        old_output_price=old["output_price"],
        new_output_price=new["output_price"],
        old_enabled=old["enabled"],
        new_enabled=new["enabled"],
        note=note[:300],
    )


def save_catalogue_entry(obj: ChatModel, *, user: User | None, source: str, note: str = "") -> None:
    """Save a catalogue entry and record what changed in its price history."""
    with transaction.atomic():
        before = ChatModel.objects.filter(pk=obj.pk).first() if obj.pk else None
        obj.save()
        record_catalogue_change(before, obj, user=user, source=source, note=note)


def set_models_enabled(
    models: Iterable[ChatModel], enabled: bool, *, user: User | None
) -> tuple[list[ChatModel], list[ChatModel]]:
    """Enable or disable models; returns (changed, refused). A model without both prices is
    refused enabling rather than offered to users at an unknown price."""
    changed: list[ChatModel] = []
    refused: list[ChatModel] = []
    with transaction.atomic():
        for obj in models:
            if obj.enabled == enabled:
                continue
            if enabled and not obj.priced:
                refused.append(obj)
                continue
            obj.enabled = enabled
            save_catalogue_entry(obj, user=user, source=PriceChange.Source.ACTION)
            changed.append(obj)
    return changed, refused
