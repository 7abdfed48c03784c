"""The one adapter between the upstream package and Django: an `UpstreamConfig` from settings.

Settings are read when a config is asked for, not on import, so importing this package never
imports Django."""

from __future__ import annotations

from .config import UpstreamConfig


def config_from_settings() -> UpstreamConfig:
    from django.conf import settings

    def text(name: str, default: str = "") -> str:
        return str(getattr(settings, name, default) or default)

    return UpstreamConfig(
        forward_url=text("LAVA_FORWARD_URL", "https://api.lava.so/v1/forward"),
        api_base=text("CHUTES_API_BASE", "https://llm.chutes.ai/v1"),
        forward_token=text("LAVA_FORWARD_TOKEN"),
        secret_key=text("LAVA_SECRET_KEY"),
        chutes_api_key=text("CHUTES_API_KEY"),
        customer_id=text("LAVA_CUSTOMER_ID"),
        meter_slug=text("LAVA_METER_SLUG"),
        connect_timeout=float(getattr(settings, "UPSTREAM_CONNECT_TIMEOUT", 10.0)),
        idle_timeout=float(getattr(settings, "UPSTREAM_IDLE_TIMEOUT", 300.0)),
        total_timeout=float(getattr(settings, "UPSTREAM_TOTAL_TIMEOUT", 1800.0)),
        max_retries=int(getattr(settings, "UPSTREAM_MAX_RETRIES", 3)),
    )
