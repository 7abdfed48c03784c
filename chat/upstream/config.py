"""Where the upstream is and how to reach it: `UpstreamConfig` (URLs, credentials, timeouts).

Built from Django settings by `chat.upstream.settings`; everything else here is plain Python."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from urllib.parse import quote

from .errors import NOT_CONFIGURED_MESSAGE, UpstreamError


@dataclass(frozen=True)
class UpstreamConfig:
    forward_url: str
    api_base: str
    forward_token: str = field(default="", repr=False)
    secret_key: str = field(default="", repr=False)
    chutes_api_key: str = field(default="", repr=False)
    customer_id: str = ""
    meter_slug: str = ""
    connect_timeout: float = 10.0
    # Longest silence between chunks: reasoning models can think for minutes.
    idle_timeout: float = 300.0
    total_timeout: float = 1800.0
    # Attempts after the first, and only before any response arrived.
    max_retries: int = 3
    backoff_base: float = 0.5
    backoff_cap: float = 8.0
    max_connections: int = 1000

    def __repr__(self) -> str:
        def shown(value: str) -> str:
            return "'<set>'" if value else "''"

        return (
            f"UpstreamConfig(forward_url={self.forward_url!r}, api_base={self.api_base!r}, "
            f"forward_token={shown(self.forward_token)}, secret_key={shown(self.secret_key)}, "
            f"chutes_api_key={shown(self.chutes_api_key)}, customer_id={self.customer_id!r}, "
            f"meter_slug={self.meter_slug!r}, connect_timeout={self.connect_timeout}, "
            f"idle_timeout={self.idle_timeout}, total_timeout={self.total_timeout}, "
            f"max_retries={self.max_retries})"
        )

    @property
    def configured(self) -> bool:
        return bool(self.forward_url and self.api_base and (self.forward_token or self.secret_key))

    def forward(self, target: str) -> str:
        """The forward proxy URL that reaches `target`."""
        separator = "&" if "?" in self.forward_url else "?"
        return f"{self.forward_url}{separator}u={quote(target, safe='')}"

    def chat_url(self) -> str:
        return self.forward(self.api_base.rstrip("/") + "/chat/completions")

    def models_url(self) -> str:
        return self.forward(self.api_base.rstrip("/") + "/models")

    def lava_api_root(self) -> str:
        """`https://api.lava.so/v1` for a forward URL of `https://api.lava.so/v1/forward`."""
        root = self.forward_url.split("?", 1)[0].rstrip("/")
        return root.removesuffix("/forward")

    def forward_token_value(self) -> str:
        """The bearer value: the given forward token, else one built from the secret key."""
        if self.forward_token:
            return self.forward_token
        if not self.secret_key:
            raise UpstreamError("not_configured", NOT_CONFIGURED_MESSAGE)
        claims = {"secret_key": self.secret_key}
        if self.chutes_api_key:
            claims["provider_key"] = self.chutes_api_key
        if self.customer_id:
            claims["customer_id"] = self.customer_id
        if self.meter_slug:
            claims["meter_slug"] = self.meter_slug
        raw = json.dumps(claims, separators=(",", ":")).encode()
        return base64.b64encode(raw).decode("ascii")

    def authorization(self) -> str:
        return f"Bearer {self.forward_token_value()}"

    def secrets(self) -> list[str]:
        """Every credential this config could put on the wire, for redaction."""
        values = [self.forward_token, self.secret_key, self.chutes_api_key]
        if self.secret_key or self.forward_token:
            values.append(self.forward_token_value())
        return [value for value in values if value]
