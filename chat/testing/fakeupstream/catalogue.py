"""The stand-in's model catalogue: the product brief's 18 models, shaped like Chutes' `/v1/models`.

Like the real services, the catalogue carries Chutes' prices and the stand-in's Lava side bills
Lava's: Chutes' price plus Lava's markup of 0.8%, to six decimals. The brief's table lists Lava's
prices, so each model below is declared with that price and serves it divided by 1.008.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

MILLION = Decimal(1_000_000)
LAVA_MARKUP = Decimal("1.008")
SIX_PLACES = Decimal("0.000001")


def chutes_price(lava_price: Decimal) -> Decimal:
    return (lava_price / LAVA_MARKUP).quantize(SIX_PLACES)


def lava_price(chutes: Decimal) -> Decimal:
    return (chutes * LAVA_MARKUP).quantize(SIX_PLACES)


@dataclass(frozen=True)
class FakeModel:
    id: str
    price: Decimal  # Lava's, as in the brief's table
    context_length: int
    reasoning: bool = False
    vision: bool = False

    def as_chutes(self) -> dict[str, Any]:
        features = ["json_mode", "tools", "structured_outputs"]
        if self.reasoning:
            features.append("reasoning")
        return {
            "id": self.id,
            "object": "model",
            "created": 1_750_000_000,
            "owned_by": "chutes",
            "root": self.id,
            "context_length": self.context_length,
            "max_model_len": self.context_length,
            "max_output_length": 65536 if self.reasoning else 16384,
            "input_modalities": ["text", "image"] if self.vision else ["text"],
            "output_modalities": ["text"],
            "supported_features": features,
            "supported_sampling_parameters": ["temperature", "top_p", "max_tokens", "seed"],
            "quantization": "fp8",
            "confidential_compute": False,
            # Chutes writes JSON numbers; float() of these short decimals round-trips via str().
            "pricing": {
                "prompt": float(chutes_price(self.price)),
                "completion": float(chutes_price(self.price)),
                "input_cache_read": float(chutes_price(self.price) / 2),
            },
        }


def _model(model_id: str, price: str, context: int, **flags: bool) -> FakeModel:
    return FakeModel(model_id, Decimal(price), context, **flags)


MODELS: tuple[FakeModel, ...] = (
    _model("tngtech/DeepSeek-TNG-R1T2-Chimera", "0.3024", 163840, reasoning=True),
    _model("deepseek-ai/DeepSeek-V3-0324", "0.27216", 163840),
    _model("deepseek-ai/DeepSeek-R1-0528", "0.27216", 163840, reasoning=True),
    _model("deepseek-ai/DeepSeek-V3", "0.27216", 163840),
    _model("unsloth/gemma-3-27b-it", "0.1568", 131072),
    _model("Qwen/Qwen2.5-72B-Instruct", "0.1008", 131072),
    _model("NousResearch/DeepHermes-3-Mistral-24B-Preview", "0.06552", 131072),
    _model("deepseek-ai/DeepSeek-R1-Distill-Llama-70B", "0.0504", 163840, reasoning=True),
    _model("Qwen/Qwen3-30B-A3B", "0.03024", 40960, reasoning=True),
    _model("chutesai/Mistral-Small-3.2-24B-Instruct-2506", "0.03024", 131072),
    _model("Qwen/Qwen3-14B", "0.03024", 40960, reasoning=True),
    _model("Qwen/Qwen2.5-VL-32B-Instruct", "0.03024", 131072, vision=True),
    _model("Qwen/Qwen2.5-Coder-32B-Instruct", "0.03024", 131072),
    _model("unsloth/gemma-3-12b-it", "0.03024", 131072),
    _model("unsloth/Mistral-Small-24B-Instruct-2501", "0.03024", 131072),
    _model("Qwen/Qwen3-32B", "0.027216", 40960, reasoning=True),
    _model("chutesai/Mistral-Small-3.1-24B-Instruct-2503", "0.027216", 131072),
    _model("unsloth/Mistral-Nemo-Instruct-2407", "0.01512", 128000),
)


def default_catalogue() -> list[dict[str, Any]]:
    return [model.as_chutes() for model in MODELS]


def price_of(entry: dict[str, Any]) -> tuple[Decimal, Decimal]:
    """(prompt, completion) Chutes USD per 1M tokens of a catalogue entry; zero when unknown."""
    pricing = entry.get("pricing")
    if not isinstance(pricing, dict):
        pricing = {}
    prices = []
    for key in ("prompt", "completion"):
        try:
            prices.append(Decimal(str(pricing.get(key, 0))))
        except ArithmeticError:
            prices.append(Decimal(0))
    return prices[0], prices[1]
