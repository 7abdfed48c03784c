"""Security headers the framework does not set: the Content-Security-Policy.

The chat page renders text written by a model, which a prompt injection can steer. The policy is
the second line of defence behind the sanitiser: no inline or foreign script, no foreign
images (a markdown image is a way to send data to another host), no framing, no plugins, and
connections (fetch and the websocket) to this site only.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import cast

from asgiref.sync import iscoroutinefunction
from django.conf import settings
from django.core.exceptions import DisallowedHost
from django.http import HttpRequest, HttpResponseBase
from django.utils.decorators import sync_and_async_middleware

HEADER = "Content-Security-Policy"

GetResponse = Callable[[HttpRequest], HttpResponseBase]
AsyncGetResponse = Callable[[HttpRequest], Awaitable[HttpResponseBase]]


def _websocket_sources(request: HttpRequest) -> list[str]:
    """This host's websocket origin, spelled out.

    CSP Level 3 lets 'self' match ws: and wss: on the same host, but older Safari does not, so
    the origin is named too. Only a host that passed ALLOWED_HOSTS is echoed.
    """
    try:
        host = request.get_host()
    except DisallowedHost:
        return []
    scheme = "wss" if request.is_secure() else "ws"
    return [f"{scheme}://{host}"]


def policy_for(request: HttpRequest) -> str:
    directives: dict[str, list[str]] = {
        name: list(sources) for name, sources in settings.CONTENT_SECURITY_POLICY.items()
    }
    directives.setdefault("connect-src", ["'self'"]).extend(_websocket_sources(request))
    for prefix, extra in settings.CONTENT_SECURITY_POLICY_RELAXED.items():
        if request.path.startswith(prefix):
            for name, sources in extra.items():
                directives.setdefault(name, []).extend(sources)
    return "; ".join(f"{name} {' '.join(sources)}".strip() for name, sources in directives.items())


def _add_headers(request: HttpRequest, response: HttpResponseBase) -> None:
    # A view that set its own policy knows better.
    if HEADER not in response:
        response[HEADER] = policy_for(request)


@sync_and_async_middleware
def content_security_policy(
    get_response: GetResponse | AsyncGetResponse,
) -> Callable[[HttpRequest], HttpResponseBase | Awaitable[HttpResponseBase]]:
    """Set the Content-Security-Policy header on every response."""
    if iscoroutinefunction(get_response):
        async_get_response: AsyncGetResponse = get_response

        async def async_middleware(request: HttpRequest) -> HttpResponseBase:
            response = await async_get_response(request)
            _add_headers(request, response)
            return response

        return async_middleware

    # Not a coroutine function, so the synchronous kind (iscoroutinefunction narrows one way only).
    sync_get_response = cast(GetResponse, get_response)

    def middleware(request: HttpRequest) -> HttpResponseBase:
        response = sync_get_response(request)
        _add_headers(request, response)
        return response

    return middleware
