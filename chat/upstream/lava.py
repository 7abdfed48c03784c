"""What Lava billed for a request it forwarded: `fetch_request_cost()`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from urllib.parse import quote

from .catalogue import _decimal
from .config import UpstreamConfig
from .errors import NOT_CONFIGURED_MESSAGE, UpstreamError
from .http import _get_json
from .settings import config_from_settings


@dataclass
class LavaRequestCost:
    request_id: str
    input_tokens: int
    output_tokens: int
    total_cost: Decimal
    raw: dict[str, Any]


async def fetch_request_cost(
    request_id: str, *, config: UpstreamConfig | None = None
) -> LavaRequestCost:
    """What Lava billed for a request it forwarded (recorded once the stream ended)."""
    cfg = config if config is not None else config_from_settings()
    secret = cfg.secret_key or cfg.forward_token
    if not secret:
        raise UpstreamError("not_configured", NOT_CONFIGURED_MESSAGE)
    url = f"{cfg.lava_api_root()}/requests/{quote(request_id, safe='')}"
    data = await _get_json(url, cfg, authorization=f"Bearer {secret}", what="request cost")
    record = data.get("data") if isinstance(data, Mapping) and "data" in data else data
    if not isinstance(record, Mapping):
        raise UpstreamError("protocol", "Lava sent a malformed request record.")
    usage = record.get("model_usage")
    usage = usage if isinstance(usage, Mapping) else {}
    total = _decimal(record.get("total_request_cost"))
    if total is None:
        total = _decimal(usage.get("total_cost"))
    if total is None:
        raise UpstreamError("protocol", "Lava's request record has no cost.")
    return LavaRequestCost(
        request_id=str(record.get("request_id") or record.get("id") or request_id),
        input_tokens=_as_int(usage.get("input_tokens")),
        output_tokens=_as_int(usage.get("output_tokens")),
        total_cost=total,
        raw=dict(record),
    )


def _as_int(value: Any) -> int:
    try:
        return max(0, int(value))
    except (TypeError, ValueError, OverflowError):
        return 0
