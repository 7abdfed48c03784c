"""Chutes' model catalogue (`/v1/models`), fetched through the forward proxy and read into
`CatalogueModel` records."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from http import HTTPStatus
from typing import Any

from .config import UpstreamConfig
from .errors import UpstreamError
from .http import _get_json
from .settings import config_from_settings

# Lengths in the catalogue (context, output) beyond this are not lengths.
_MAX_CATALOGUE_NUMBER = 2**31 - 1


@dataclass
class CatalogueModel:
    id: str
    context_length: int | None = None
    max_output_length: int | None = None
    input_modalities: list[str] = field(default_factory=list)
    output_modalities: list[str] = field(default_factory=list)
    supported_features: list[str] = field(default_factory=list)
    prompt_price: Decimal | None = None
    completion_price: Decimal | None = None
    cache_read_price: Decimal | None = None

    @property
    def reasoning(self) -> bool:
        return "reasoning" in self.supported_features

    @property
    def vision(self) -> bool:
        return "image" in self.input_modalities


def parse_catalogue(data: Any) -> list[CatalogueModel]:
    """Chutes' `/v1/models` answer as records; entries that make no sense are skipped."""
    items = data.get("data") if isinstance(data, Mapping) else data
    if not isinstance(items, list):
        return []
    models: list[CatalogueModel] = []
    for item in items:
        if not isinstance(item, Mapping):
            continue
        model_id = item.get("id")
        if not isinstance(model_id, str) or not model_id.strip():
            continue
        pricing = item.get("pricing")
        pricing = pricing if isinstance(pricing, Mapping) else {}
        models.append(
            CatalogueModel(
                id=model_id.strip(),
                context_length=_optional_int(item.get("context_length"))
                or _optional_int(item.get("max_model_len")),
                max_output_length=_optional_int(item.get("max_output_length")),
                input_modalities=_strings(item.get("input_modalities")),
                output_modalities=_strings(item.get("output_modalities")),
                supported_features=_strings(item.get("supported_features")),
                prompt_price=_decimal(pricing.get("prompt")),
                completion_price=_decimal(pricing.get("completion")),
                cache_read_price=_decimal(pricing.get("input_cache_read")),
            )
        )
    return models


def _optional_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        return None
    # Checked before int(): an infinity has no int, and 1e999999999 would take minutes.
    if not number.is_finite() or not 1 <= number <= _MAX_CATALOGUE_NUMBER:
        return None
    return int(number)


def _strings(value: Any) -> list[str]:
    if not isinstance(value, list | tuple):
        return []
    return [item for item in value if isinstance(item, str)]


def _decimal(value: Any) -> Decimal | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        # str() first: a float like 0.027216 must become Decimal("0.027216"), not its binary twin.
        number = Decimal(str(value).strip())
    except InvalidOperation:
        return None
    return number if number.is_finite() else None


async def fetch_models(*, config: UpstreamConfig | None = None) -> list[CatalogueModel]:
    """The Chutes catalogue, fetched through the forward proxy.

    Should the proxy refuse to forward a GET (404/405), the catalogue is read from Chutes
    directly: it is public and needs no credentials.
    """
    cfg = config if config is not None else config_from_settings()
    try:
        data = await _get_json(
            cfg.models_url(), cfg, authorization=cfg.authorization(), what="models"
        )
    except UpstreamError as exc:
        if exc.status not in (HTTPStatus.NOT_FOUND, HTTPStatus.METHOD_NOT_ALLOWED):
            raise
        data = await _get_json(
            cfg.api_base.rstrip("/") + "/models", cfg, authorization=None, what="models"
        )
    return parse_catalogue(data)
