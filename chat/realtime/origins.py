"""Websocket handshakes are accepted only from this site's own pages.

A browser sends the page's origin (scheme, host and port) with every websocket handshake, and a
page of another origin can open one to us carrying our user's cookies. Channels' own validator
compares the Origin's host name with ALLOWED_HOSTS only: a page on another port of the same host
(`http://127.0.0.1:8080` for a site on `:8000`), or served over plain HTTP for a site on HTTPS,
passed. Here the Origin must be exactly the origin the handshake was made to (the scheme the
client used, behind a TLS proxy the one it reports, and the Host with its port, itself one of
ALLOWED_HOSTS) or one of CSRF_TRUSTED_ORIGINS, which the forms already trust.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.http.request import split_domain_port, validate_host

Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]
DEFAULT_PORTS = {"http": 80, "https": 443}

Origin = tuple[str, str, int]


def parse_origin(value: str) -> Origin | None:
    """(scheme, host, port) of an origin, the port filled in; None for anything else."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname or parts.path not in ("", "/"):
        return None
    return scheme, parts.hostname.lower(), port or DEFAULT_PORTS[scheme]


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def handshake_origin(scope: Scope) -> Origin | None:
    """The origin the client made the handshake to: its Host (an allowed host) and scheme."""
    host = _header(scope, b"host")
    if host is None:
        return None
    domain, _port = split_domain_port(host)
    if not domain or not validate_host(domain, settings.ALLOWED_HOSTS):
        return None
    secure = scope.get("scheme") == "wss"
    proxy_header = getattr(settings, "SECURE_PROXY_SSL_HEADER", None)
    if proxy_header is not None:
        # A proxy we run terminates TLS and says so (BEHIND_TLS_PROXY).
        name, value = proxy_header
        header = name.lower().removeprefix("http_").replace("_", "-").encode()
        forwarded = _header(scope, header)
        if forwarded is not None:
            secure = forwarded.split(",")[0].strip() == value
    return parse_origin(f"{'https' if secure else 'http'}://{host}")


def _trusted(origin: Origin) -> bool:
    scheme, host, port = origin
    for entry in settings.CSRF_TRUSTED_ORIGINS:
        wildcard = "://*." in entry
        trusted = parse_origin(entry.replace("://*.", "://", 1))
        if trusted is None or trusted[0] != scheme or trusted[2] != port:
            continue
        if host == trusted[1] or (wildcard and host.endswith("." + trusted[1])):
            return True
    return False


def allowed(scope: Scope) -> bool:
    raw = _header(scope, b"origin")
    origin = parse_origin(raw) if raw is not None else None
    if origin is None:
        return False
    return origin == handshake_origin(scope) or _trusted(origin)


class SameOriginValidator:
    """Refuses (HTTP 403 at the handshake) a websocket whose Origin is not this site's."""

    def __init__(self, application: ASGIApp) -> None:
        self.application = application

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "websocket" and not allowed(scope):
            await WebsocketDenier()(scope, receive, send)  # type: ignore[arg-type]  # stub: a TypedDict
            return
        await self.application(scope, receive, send)
