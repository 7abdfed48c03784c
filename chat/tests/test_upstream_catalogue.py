"""The catalogue and Lava's billing records (chat/upstream/catalogue.py, lava.py): fetched
through the forward proxy or directly, parsed defensively; a request's billed cost."""

from __future__ import annotations

from decimal import Decimal

import pytest

from chat.testing.fakeupstream import FakeUpstream
from chat.tests.fixtures_upstream import (
    MODEL,
    TOKEN,
    chat_body,
    collect,
    config_for,
)
from chat.upstream.catalogue import fetch_models, parse_catalogue
from chat.upstream.client import Usage
from chat.upstream.config import UpstreamConfig
from chat.upstream.errors import UpstreamError
from chat.upstream.http import aclose_clients
from chat.upstream.lava import fetch_request_cost


async def test_the_catalogue_is_fetched_through_the_forward_proxy(
    bare_upstream: FakeUpstream, config: UpstreamConfig
) -> None:
    models = {model.id: model for model in await fetch_models(config=config)}
    assert len(models) == 18
    assert bare_upstream.last.via_forward and bare_upstream.last.method == "GET"
    qwen = models["Qwen/Qwen3-32B"]
    assert qwen.prompt_price == Decimal("0.027")
    assert qwen.completion_price == Decimal("0.027")
    assert qwen.context_length == 40960
    assert models["Qwen/Qwen2.5-VL-32B-Instruct"].vision
    assert models["deepseek-ai/DeepSeek-R1-0528"].reasoning
    assert not models[MODEL].reasoning


async def test_the_catalogue_is_read_directly_when_the_proxy_refuses_a_get() -> None:
    async with FakeUpstream(tokens=(TOKEN,), forward_get=False) as fake:
        config = config_for(fake, api_base=fake.api_base)
        try:
            models = await fetch_models(config=config)
        finally:
            await aclose_clients()
        assert len(models) == 18
        assert [(e.path, e.status) for e in fake.log] == [("/v1/forward", 405), ("/v1/models", 200)]


def test_catalogue_entries_are_parsed_defensively() -> None:
    models = parse_catalogue(
        {
            "data": [
                {
                    "id": "a",
                    "max_model_len": "8192",
                    "pricing": {"prompt": "0.1", "completion": 0.2},
                },
                {"id": "b", "context_length": None, "pricing": {"prompt": "free"}},
                {"id": "c", "input_modalities": "text", "supported_features": ["x", 3]},
                {"no_id": True},
                "junk",
                {"id": ""},
            ]
        }
    )
    assert [m.id for m in models] == ["a", "b", "c"]
    assert models[0].context_length == 8192
    assert models[0].prompt_price == Decimal("0.1")
    assert models[0].completion_price == Decimal("0.2")
    assert models[1].prompt_price is None and models[1].context_length is None
    assert models[2].input_modalities == [] and models[2].supported_features == ["x"]
    assert parse_catalogue({"object": "error"}) == []


async def test_the_billed_cost_of_a_request_is_fetched(
    bare_upstream: FakeUpstream, config: UpstreamConfig
) -> None:
    result = await collect(chat_body(model="Qwen/Qwen3-32B"), config)
    request_id = result.events[0].lava_request_id
    usage = result.of(Usage)[0]
    cost = await fetch_request_cost(request_id, config=config)
    assert (cost.input_tokens, cost.output_tokens) == (usage.prompt_tokens, 12)
    expected = Decimal("0.027216") * (usage.prompt_tokens + 12) / Decimal(1_000_000)
    assert cost.total_cost == expected
    bare_upstream.set_request_cost(request_id, "0.00123")
    assert (await fetch_request_cost(request_id, config=config)).total_cost == Decimal("0.00123")
    assert bare_upstream.last.path == f"/v1/requests/{request_id}"


async def test_an_unknown_request_has_no_cost(config: UpstreamConfig) -> None:
    with pytest.raises(UpstreamError) as caught:
        await fetch_request_cost("req_missing", config=config)
    assert (caught.value.code, caught.value.status) == ("upstream_error", 404)
