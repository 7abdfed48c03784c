"""Seed the catalogue with the product brief's 18 models at Lava's prices, enabled."""

from decimal import Decimal

from django.db import migrations
from django.db.backends.base.schema import BaseDatabaseSchemaEditor
from django.db.migrations.state import StateApps


def seed(apps: StateApps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    from chat.seed import SEED_MODELS

    ChatModel = apps.get_model("chat", "ChatModel")
    PriceChange = apps.get_model("chat", "PriceChange")
    for order, entry in enumerate(SEED_MODELS, start=1):
        price = Decimal(entry["price"])
        model, created = ChatModel.objects.get_or_create(
            model_id=entry["model_id"],
            defaults={
                "name": entry["name"],
                "description": entry["description"],
                "enabled": True,
                "input_price": price,
                "output_price": price,
                "context_length": entry["context_length"],
                "max_output_tokens": entry["max_output_tokens"],
                "reasoning": entry["reasoning"],
                "vision": entry["vision"],
                "sort_order": order * 10,
            },
        )
        if created:
            PriceChange.objects.create(
                chat_model=model,
                source="seed",
                new_input_price=price,
                new_output_price=price,
                new_enabled=True,
                note="initial catalogue",
            )


class Migration(migrations.Migration):
    dependencies = [("chat", "0001_initial")]

    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
