"""The Content-Security-Policy header (chat.middleware) on the pages and the static files."""

from __future__ import annotations

import asyncio
from http import HTTPStatus

import pytest
from django.http import HttpRequest, HttpResponse
from django.test import AsyncClient, Client, RequestFactory

from chat.middleware import HEADER, content_security_policy

pytestmark = pytest.mark.django_db


def directives(header: str) -> dict[str, list[str]]:
    parsed: dict[str, list[str]] = {}
    for part in header.split(";"):
        name, *sources = part.split()
        parsed[name] = sources
    return parsed


def test_the_chat_page_allows_no_inline_or_foreign_script_style_or_image(
    user_client: Client,
) -> None:
    response = user_client.get("/")
    assert response.status_code == HTTPStatus.OK
    policy = directives(response[HEADER])
    assert policy["default-src"] == ["'self'"]
    assert policy["script-src"] == ["'self'"]
    assert policy["style-src"] == ["'self'"]
    assert policy["img-src"] == ["'self'", "data:"]
    assert policy["object-src"] == ["'none'"]
    assert policy["base-uri"] == ["'none'"]
    assert policy["form-action"] == ["'self'"]
    assert policy["frame-ancestors"] == ["'none'"]


def test_websockets_may_reach_this_host_only(user_client: Client) -> None:
    response = user_client.get("/", HTTP_HOST="localhost")
    assert directives(response[HEADER])["connect-src"] == ["'self'", "ws://localhost"]


def test_under_https_the_websocket_source_is_wss(user_client: Client) -> None:
    response = user_client.get("/", HTTP_HOST="localhost", secure=True)
    assert directives(response[HEADER])["connect-src"] == ["'self'", "wss://localhost"]


def test_the_login_page_has_the_policy(client: Client) -> None:
    response = client.get("/accounts/login/")
    assert response.status_code == HTTPStatus.OK
    assert directives(response[HEADER])["script-src"] == ["'self'"]


def test_a_refused_host_gets_the_policy_without_echoing_the_host(client: Client) -> None:
    response = client.get("/accounts/login/", HTTP_HOST="evil.example")
    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert directives(response[HEADER])["connect-src"] == ["'self'"]


def test_json_answers_and_async_views_have_the_policy_too(client: Client) -> None:
    assert HEADER in client.get("/api/models")
    assert HEADER in client.get("/healthz")


def test_the_chat_page_has_no_inline_script_or_style(user_client: Client) -> None:
    html = user_client.get("/").content.decode()
    assert "<script>" not in html
    assert " style=" not in html
    assert "<style" not in html


def test_a_relaxation_applies_only_under_its_prefix(user_client: Client, settings) -> None:
    settings.CONTENT_SECURITY_POLICY_RELAXED = {"/admin/": {"style-src": ["'unsafe-inline'"]}}
    assert directives(user_client.get("/")[HEADER])["style-src"] == ["'self'"]
    admin = user_client.get("/admin/login/")
    assert directives(admin[HEADER])["style-src"] == ["'self'", "'unsafe-inline'"]


async def test_the_policy_is_set_when_the_middleware_runs_asynchronously() -> None:
    """Under an ASGI server the middleware chain runs asynchronously: the policy's async path
    (not only the sync one the test Client takes) sets the header."""
    calls: list[str] = []

    async def view(request: HttpRequest) -> HttpResponse:
        calls.append("async")
        return HttpResponse("ok")

    middleware = content_security_policy(view)
    assert asyncio.iscoroutinefunction(middleware)
    response = await middleware(RequestFactory().get("/", HTTP_HOST="localhost"))
    assert calls == ["async"]
    assert directives(response[HEADER])["connect-src"] == ["'self'", "ws://localhost"]
    through_the_stack = await AsyncClient().get("/accounts/login/")
    assert directives(through_the_stack[HEADER])["script-src"] == ["'self'"]
