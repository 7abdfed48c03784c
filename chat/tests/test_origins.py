"""Websocket handshakes come from this site's own pages: scheme, host and port must match the
site the handshake was made to (or a trusted origin)."""

from __future__ import annotations

from typing import Any

import pytest

from chat.realtime.origins import allowed, parse_origin
from chat.testing.wsclient import connect

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)


def scope(origin: str | None, host: str = "127.0.0.1:8000", **extra: Any) -> dict[str, Any]:
    headers = [(b"host", host.encode())]
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    headers += [(k.encode(), v.encode()) for k, v in extra.pop("headers", {}).items()]
    return {"type": "websocket", "scheme": extra.pop("scheme", "ws"), "headers": headers}


@pytest.mark.parametrize(
    "origin",
    [
        "http://127.0.0.1:8080",  # the same host on another port
        "https://127.0.0.1:8000",  # another scheme
        "http://127.0.0.1",  # the default port is another port
        "http://localhost:8000",  # another allowed host is another site
        "https://evil.example",
        "null",
        "http://127.0.0.1:8000/path",
        "not an origin",
    ],
)
def test_an_origin_other_than_the_sites_own_is_refused(origin: str) -> None:
    assert not allowed(scope(origin))


def test_the_sites_own_origin_is_accepted_and_a_missing_one_refused() -> None:
    assert allowed(scope("http://127.0.0.1:8000"))
    assert allowed(scope("HTTP://127.0.0.1:8000/"))
    assert allowed(scope("http://localhost", host="localhost"))
    assert allowed(scope("https://localhost", host="localhost", scheme="wss"))
    assert not allowed(scope(None))


def test_a_host_that_is_not_allowed_is_refused_whatever_the_origin() -> None:
    assert not allowed(scope("http://evil.example:8000", host="evil.example:8000"))


def test_behind_a_tls_proxy_the_scheme_is_the_one_it_reports(settings) -> None:
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    proxied = {"x-forwarded-proto": "https"}
    assert allowed(scope("https://localhost", host="localhost", headers=proxied))
    assert not allowed(scope("http://localhost", host="localhost", headers=proxied))
    # Without the setting the header is not believed.
    settings.SECURE_PROXY_SSL_HEADER = None
    assert not allowed(scope("https://localhost", host="localhost", headers=proxied))


def test_trusted_origins_are_accepted_with_their_scheme_and_port(settings) -> None:
    settings.CSRF_TRUSTED_ORIGINS = ["https://chat.example.com:8443", "https://*.example.org"]
    assert allowed(scope("https://chat.example.com:8443"))
    assert not allowed(scope("https://chat.example.com"))
    assert not allowed(scope("http://chat.example.com:8443"))
    assert allowed(scope("https://a.example.org"))
    assert not allowed(scope("https://example.org.evil.net"))


def test_origins_are_parsed_with_their_default_ports() -> None:
    assert parse_origin("https://Example.com") == ("https", "example.com", 443)
    assert parse_origin("http://example.com:80") == ("http", "example.com", 80)
    assert parse_origin("ftp://example.com") is None
    assert parse_origin("http://example.com:99999") is None


async def test_a_handshake_from_another_port_of_the_same_host_is_refused(alice) -> None:
    for origin, expected in (("http://127.0.0.1:8080", False), ("http://127.0.0.1:8000", True)):
        connected, _, socket = await connect(alice, origin=origin)
        assert connected is expected
        if connected:
            await socket.close()
