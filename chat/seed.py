"""The catalogue the product ships with: the brief's 18 Chutes models at Lava's prices.

Prices are USD per 1M tokens, input and output alike. Context lengths are published third-party
figures; the catalogue sync (admin) corrects them from Chutes' own `/v1/models`.
"""

from __future__ import annotations

from typing import TypedDict


class SeedModel(TypedDict):
    model_id: str
    name: str
    description: str
    price: str
    context_length: int
    max_output_tokens: int
    reasoning: bool
    vision: bool


def _m(
    model_id: str,
    name: str,
    description: str,
    price: str,
    context_length: int,
    *,
    max_output_tokens: int = 16384,
    reasoning: bool = False,
    vision: bool = False,
) -> SeedModel:
    return SeedModel(
        model_id=model_id,
        name=name,
        description=description,
        price=price,
        context_length=context_length,
        max_output_tokens=max_output_tokens,
        reasoning=reasoning,
        vision=vision,
    )


SEED_MODELS: list[SeedModel] = [
    _m(
        "tngtech/DeepSeek-TNG-R1T2-Chimera",
        "DeepSeek TNG R1T2 Chimera",
        "TNG's merge of DeepSeek R1 and V3: reasons step by step, faster than R1.",
        "0.3024",
        163840,
        max_output_tokens=65536,
        reasoning=True,
    ),
    _m(
        "deepseek-ai/DeepSeek-V3-0324",
        "DeepSeek V3 0324",
        "DeepSeek's general chat model, March 2025 update.",
        "0.27216",
        163840,
    ),
    _m(
        "deepseek-ai/DeepSeek-R1-0528",
        "DeepSeek R1 0528",
        "DeepSeek's reasoning model: thinks before answering.",
        "0.27216",
        163840,
        max_output_tokens=65536,
        reasoning=True,
    ),
    _m(
        "deepseek-ai/DeepSeek-V3",
        "DeepSeek V3",
        "DeepSeek's general chat model.",
        "0.27216",
        163840,
    ),
    _m(
        "unsloth/gemma-3-27b-it",
        "Gemma 3 27B",
        "Google's Gemma 3, 27B instruction-tuned.",
        "0.1568",
        131072,
    ),
    _m(
        "Qwen/Qwen2.5-72B-Instruct",
        "Qwen2.5 72B Instruct",
        "Alibaba's Qwen2.5, 72B instruction-tuned.",
        "0.1008",
        131072,
    ),
    _m(
        "NousResearch/DeepHermes-3-Mistral-24B-Preview",
        "DeepHermes 3 Mistral 24B",
        "Nous Research's Hermes on Mistral 24B (preview).",
        "0.06552",
        131072,
    ),
    _m(
        "deepseek-ai/DeepSeek-R1-Distill-Llama-70B",
        "DeepSeek R1 Distill Llama 70B",
        "R1's reasoning distilled into Llama 70B.",
        "0.0504",
        163840,
        max_output_tokens=32768,
        reasoning=True,
    ),
    _m(
        "Qwen/Qwen3-30B-A3B",
        "Qwen3 30B A3B",
        "Qwen3 mixture of experts with hybrid thinking.",
        "0.03024",
        40960,
        max_output_tokens=16384,
        reasoning=True,
    ),
    _m(
        "chutesai/Mistral-Small-3.2-24B-Instruct-2506",
        "Mistral Small 3.2 24B",
        "Mistral Small 3.2, June 2025.",
        "0.03024",
        131072,
    ),
    _m(
        "Qwen/Qwen3-14B",
        "Qwen3 14B",
        "Qwen3 14B with hybrid thinking.",
        "0.03024",
        40960,
        max_output_tokens=16384,
        reasoning=True,
    ),
    _m(
        "Qwen/Qwen2.5-VL-32B-Instruct",
        "Qwen2.5 VL 32B",
        "Qwen2.5 vision-language model: reads images.",
        "0.03024",
        131072,
        vision=True,
    ),
    _m(
        "Qwen/Qwen2.5-Coder-32B-Instruct",
        "Qwen2.5 Coder 32B",
        "Qwen2.5 tuned for code.",
        "0.03024",
        131072,
    ),
    _m(
        "unsloth/gemma-3-12b-it",
        "Gemma 3 12B",
        "Google's Gemma 3, 12B instruction-tuned.",
        "0.03024",
        131072,
    ),
    _m(
        "unsloth/Mistral-Small-24B-Instruct-2501",
        "Mistral Small 24B 2501",
        "Mistral Small 3, January 2025.",
        "0.03024",
        131072,
    ),
    _m(
        "Qwen/Qwen3-32B",
        "Qwen3 32B",
        "Qwen3 32B with hybrid thinking.",
        "0.027216",
        40960,
        max_output_tokens=16384,
        reasoning=True,
    ),
    _m(
        "chutesai/Mistral-Small-3.1-24B-Instruct-2503",
        "Mistral Small 3.1 24B",
        "Mistral Small 3.1, March 2025.",
        "0.027216",
        131072,
    ),
    _m(
        "unsloth/Mistral-Nemo-Instruct-2407",
        "Mistral Nemo",
        "Mistral Nemo 12B, July 2024.",
        "0.01512",
        128000,
    ),
]
