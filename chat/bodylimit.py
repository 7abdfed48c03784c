"""How many bytes a request may send, decided from its method, path and headers alone, so that
an oversized body is refused before it is read.

Without a session cookie a request is a log-in or sign-up form at most: a few kilobytes. With
one, an image upload may carry MAX_IMAGE_BYTES and an import MAX_IMPORT_BYTES (plus the
multipart wrapping), anything else Django's DATA_UPLOAD_MAX_MEMORY_SIZE. The cookie is not
checked against the sessions here (that needs the database): a forged one gets the logged-in
limits, which are still bounded.

Applied twice: `BodyLimit` wraps the HTTP application (uvicorn streams the body to it, so
nothing over the limit is ever read), and under daphne, which reads and queues a whole body
before the application sees any of it, `chutesweb/runtime/daphne_bodies.py` applies the same
rule as soon as the request's headers are in.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

from django.conf import settings
from django.http.cookie import parse_cookie

# A log-in or sign-up form, with its CSRF token, is well under a kilobyte.
ANONYMOUS_BODY_BYTES = 64 * 1024
# The multipart wrapping of an uploaded file: boundaries, part headers, the CSRF field.
MULTIPART_OVERHEAD_BYTES = 64 * 1024
# Django's own default, for when DATA_UPLOAD_MAX_MEMORY_SIZE is switched off (None).
DEFAULT_BODY_BYTES = 2_621_440

# As Django's ASGI handler takes them: the scope a dict, messages read-only mappings.
Scope = dict[str, Any]
Message = Mapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass(frozen=True)
class Rule:
    limit: int  # bytes of body
    message: str  # what a refused request is told


def _megabytes(size: int) -> str:
    return f"{size / (1024 * 1024):g} MB"


def has_session_cookie(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    name = settings.SESSION_COOKIE_NAME
    for key, value in headers:
        if key.lower() == b"cookie" and parse_cookie(value.decode("latin-1")).get(name):
            return True
    return False


def routed_path(path: str, root_path: str = "") -> str:
    """The path as Django routes it: without the site's root path."""
    if root_path and path.startswith(root_path):
        return path[len(root_path) :] or "/"
    return path


def target_path(target: bytes, root_path: str = "") -> str:
    """The routed path of a raw request target, decoded as daphne decodes it for the scope."""
    return routed_path(unquote(target.split(b"?", 1)[0].decode("latin-1")), root_path)


def rule_for(method: str, path: str, headers: Iterable[tuple[bytes, bytes]]) -> Rule:
    """The most body a request may send, and what it is told when it sends more."""
    if not has_session_cookie(headers):
        return Rule(
            ANONYMOUS_BODY_BYTES,
            f"Log in first: requests without a session carry at most "
            f"{ANONYMOUS_BODY_BYTES // 1024} KB.",
        )
    if method.upper() == "POST" and path == "/api/images":
        return Rule(
            settings.MAX_IMAGE_BYTES + MULTIPART_OVERHEAD_BYTES,
            f"Images are limited to {_megabytes(settings.MAX_IMAGE_BYTES)}.",
        )
    if method.upper() == "POST" and path == "/api/import":
        return Rule(
            settings.MAX_IMPORT_BYTES + MULTIPART_OVERHEAD_BYTES,
            f"Files to import are limited to {_megabytes(settings.MAX_IMPORT_BYTES)}.",
        )
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE or DEFAULT_BODY_BYTES
    return Rule(limit, f"Requests here are limited to {_megabytes(limit)}.")


def content_length(headers: Iterable[tuple[bytes, bytes]]) -> int | None:
    """The declared body size; None when there is none (chunked) or it is not a number (the
    server refuses those itself)."""
    for key, value in headers:
        if key.lower() == b"content-length":
            return int(value) if value.strip().isdigit() else None
    return None


def refusal(path: str, rule: Rule) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """The headers and body of a 413: JSON for the API (as its other errors), text elsewhere."""
    if path.startswith("/api/"):
        body = json.dumps({"error": {"code": "too_large", "message": rule.message}}).encode()
        kind = b"application/json"
    else:
        body = f"{rule.message}\n".encode()
        kind = b"text/plain; charset=utf-8"
    return [
        (b"content-type", kind),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ], body


class BodyLimit:
    """ASGI middleware for HTTP: a request whose Content-Length is over its rule's limit is
    answered 413 before anything is read; one without (chunked) is counted as it arrives and
    answered 413 once it passes the limit, the application told the client went away."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = scope.get("headers", [])
        path = routed_path(scope["path"], scope.get("root_path", ""))
        rule = rule_for(scope["method"], path, headers)
        declared = content_length(headers)
        if declared is not None and declared > rule.limit:
            await self._refuse(send, path, rule)
            return

        received = 0
        over = False
        started = False

        async def counted_receive() -> Message:
            nonlocal received, over
            if over:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > rule.limit:
                    # To the application this is a client that went away (Django drops the
                    # request without answering); the answer is ours.
                    over = True
                    return {"type": "http.disconnect"}
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, counted_receive, watched_send)
        if over and not started:
            await self._refuse(send, path, rule)

    async def _refuse(self, send: Send, path: str, rule: Rule) -> None:
        headers, body = refusal(path, rule)
        status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
