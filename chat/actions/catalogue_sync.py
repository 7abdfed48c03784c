"""Catalogue sync: compare Chutes' `/v1/models` with ours, preview the differences, apply them.

Chutes' prices become the prices charged through PRICE_MARKUP_PERCENT (Lava's markup). New models
arrive disabled, so an admin decides what users may pick; models Chutes no longer lists are
disabled. Every applied change of a price or of availability is recorded in the price history.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from decimal import Decimal
from typing import Any

from django.contrib.auth.models import User
from django.db import transaction

from chat.models import ChatModel, PriceChange
from chat.upstream.catalogue import CatalogueModel

from .catalogue import save_catalogue_entry

PRICE_PLACES = Decimal("0.000001")
SYNCED_FIELDS = (
    "input_price",
    "output_price",
    "context_length",
    "max_output_tokens",
    "vision",
    "reasoning",
)


def charged_price(chutes_price: Decimal | None, markup_percent: Decimal) -> Decimal | None:
    """Chutes' price plus the markup, to six decimals like Lava's own price list."""
    if chutes_price is None:
        return None
    return (chutes_price * (1 + markup_percent / 100)).quantize(PRICE_PLACES)


def display_name(model_id: str) -> str:
    name = model_id.rsplit("/", 1)[-1]
    return name.replace("-", " ").replace("_", " ")


@dataclass
class Change:
    model_id: str
    kind: str  # "new", "gone" or "changed"
    fields: dict[str, tuple[Any, Any]] = field(default_factory=dict)

    @property
    def rows(self) -> list[tuple[str, Any, Any]]:
        return [(name, old, new) for name, (old, new) in self.fields.items()]


def target_values(entry: CatalogueModel, markup_percent: Decimal) -> dict[str, Any]:
    """What our catalogue entry should say, for the fields the upstream reports."""
    values: dict[str, Any] = {
        "input_price": charged_price(entry.prompt_price, markup_percent),
        "output_price": charged_price(entry.completion_price, markup_percent),
        "vision": entry.vision,
        "reasoning": entry.reasoning,
    }
    if entry.context_length:
        values["context_length"] = entry.context_length
        if entry.max_output_length:
            values["max_output_tokens"] = min(entry.max_output_length, entry.context_length)
    # A price the upstream did not state is not a change to "no price".
    return {k: v for k, v in values.items() if v is not None}


def preview(catalogue: list[CatalogueModel], markup_percent: Decimal) -> list[Change]:
    ours = {m.model_id: m for m in ChatModel.objects.all()}
    seen: set[str] = set()
    changes: list[Change] = []
    for entry in catalogue:
        seen.add(entry.id)
        target = target_values(entry, markup_percent)
        existing = ours.get(entry.id)
        if existing is None:
            changes.append(
                Change(entry.id, "new", {name: (None, value) for name, value in target.items()})
            )
            continue
        differences = {
            name: (getattr(existing, name), value)
            for name, value in target.items()
            if getattr(existing, name) != value
        }
        if differences:
            changes.append(Change(entry.id, "changed", differences))
    for model_id, existing in ours.items():
        if model_id not in seen and existing.enabled:
            changes.append(Change(model_id, "gone", {"enabled": (True, False)}))
    order = {"new": 0, "changed": 1, "gone": 2}
    return sorted(changes, key=lambda c: (order[c.kind], c.model_id))


def apply(changes: list[Change], *, user: User | None) -> dict[str, int]:
    """Apply a previewed set of changes in one transaction."""
    counts = {"new": 0, "changed": 0, "gone": 0}
    with transaction.atomic():
        for change in changes:
            obj: ChatModel | None
            if change.kind == "new":
                if ChatModel.objects.filter(model_id=change.model_id).exists():
                    continue
                obj = ChatModel(
                    model_id=change.model_id,
                    name=display_name(change.model_id),
                    enabled=False,
                    description="Added by catalogue sync.",
                )
            else:
                obj = ChatModel.objects.filter(model_id=change.model_id).first()
                if obj is None:
                    continue
            if change.kind == "gone":
                obj.enabled = False
            else:
                for name, (_, new) in change.fields.items():
                    setattr(obj, name, new)
            if obj.max_output_tokens > obj.context_length:
                obj.max_output_tokens = obj.context_length
            save_catalogue_entry(
                obj, user=user, source=PriceChange.Source.SYNC, note=f"sync: {change.kind}"
            )
            counts[change.kind] += 1
    return counts


def to_session(changes: list[Change]) -> list[dict[str, Any]]:
    """Changes as JSON-safe data, to apply exactly what the admin saw."""
    return [
        {
            "model_id": c.model_id,
            "kind": c.kind,
            "fields": {
                name: [_plain(old), _plain(new)] for name, (old, new) in asdict(c)["fields"].items()
            },
        }
        for c in changes
    ]


def from_session(data: list[dict[str, Any]]) -> list[Change]:
    changes = []
    for item in data:
        fields = {}
        for name, (old, new) in item["fields"].items():
            if name.endswith("_price"):
                old = None if old is None else Decimal(old)
                new = None if new is None else Decimal(new)
            fields[name] = (old, new)
        changes.append(Change(item["model_id"], item["kind"], fields))
    return changes


def _plain(value: Any) -> Any:
    return str(value) if isinstance(value, Decimal) else value
