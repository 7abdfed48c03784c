from __future__ import annotations

from decimal import Decimal
from http import HTTPStatus

import pytest
from django.test import Client

from chat.models import ChatModel, PriceChange

pytestmark = pytest.mark.django_db


def test_the_seed_catalogue_has_the_briefs_18_models_enabled_at_lava_prices() -> None:
    models = ChatModel.objects.all()
    assert models.count() == 18
    assert all(m.enabled for m in models)
    prices = {m.model_id: (m.input_price, m.output_price) for m in models}
    assert prices["tngtech/DeepSeek-TNG-R1T2-Chimera"] == (Decimal("0.3024"), Decimal("0.3024"))
    assert prices["deepseek-ai/DeepSeek-V3-0324"] == (Decimal("0.27216"), Decimal("0.27216"))
    assert prices["Qwen/Qwen3-32B"] == (Decimal("0.027216"), Decimal("0.027216"))
    assert prices["unsloth/Mistral-Nemo-Instruct-2407"] == (Decimal("0.01512"), Decimal("0.01512"))
    assert prices["NousResearch/DeepHermes-3-Mistral-24B-Preview"] == (
        Decimal("0.06552"),
        Decimal("0.06552"),
    )


def test_the_seed_marks_capabilities() -> None:
    assert ChatModel.objects.get(model_id="Qwen/Qwen2.5-VL-32B-Instruct").vision
    assert ChatModel.objects.get(model_id="deepseek-ai/DeepSeek-R1-0528").reasoning
    assert not ChatModel.objects.get(model_id="deepseek-ai/DeepSeek-V3").reasoning


def test_the_seed_is_recorded_in_the_price_history() -> None:
    assert PriceChange.objects.filter(source="seed").count() == 18


def test_api_models_lists_enabled_models_with_decimal_string_prices(user_client: Client) -> None:
    ChatModel.objects.filter(model_id="deepseek-ai/DeepSeek-V3").update(enabled=False)
    response = user_client.get("/api/models")
    assert response.status_code == HTTPStatus.OK
    models = response.json()["models"]
    ids = [m["id"] for m in models]
    assert len(ids) == 17
    assert "deepseek-ai/DeepSeek-V3" not in ids
    qwen = next(m for m in models if m["id"] == "Qwen/Qwen3-32B")
    assert qwen == {
        "id": "Qwen/Qwen3-32B",
        "name": "Qwen3 32B",
        "description": "Qwen3 32B with hybrid thinking.",
        "input_price_per_million": "0.02721600",
        "output_price_per_million": "0.02721600",
        "context_length": 40960,
        "max_output_tokens": 16384,
        "capabilities": ["reasoning"],
    }
    vl = next(m for m in models if m["id"] == "Qwen/Qwen2.5-VL-32B-Instruct")
    assert vl["capabilities"] == ["vision"]


def test_api_models_follows_the_admins_sort_order(user_client: Client) -> None:
    ChatModel.objects.filter(model_id="unsloth/Mistral-Nemo-Instruct-2407").update(sort_order=-1)
    models = user_client.get("/api/models").json()["models"]
    assert models[0]["id"] == "unsloth/Mistral-Nemo-Instruct-2407"
