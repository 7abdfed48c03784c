"""The upstream's HTTP plumbing: one shared client per event loop, failures mapped to
`UpstreamError`, and small JSON GETs (the catalogue, Lava's request records)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
import threading
import weakref
from http import HTTPStatus
from typing import Any

import httpx

from chutesweb.runtime import httpcore_pool

from .config import UpstreamConfig
from .errors import UpstreamError
from .settings import config_from_settings
from .text import _CONTROL_CHARS, clean_text

logger = logging.getLogger("chat.upstream")


USER_AGENT = "chutes-chat/0.1"


# Error bodies are read only this far: they are small, and an endless one must not hang us.
_ERROR_BODY_LIMIT = 64 * 1024


_DETAIL_LIMIT = 200


_FETCH_READ_TIMEOUT = 30.0


_KEEPALIVE_EXPIRY = 15.0


# At most this many idle connections are kept for reuse: the pool's bookkeeping looks at each
# idle connection on every request start and end (chutesweb/runtime/httpcore_pool.py).
_MAX_KEEPALIVE = 100


_MODEL_NOT_FOUND = re.compile(r"model not found:\s*(\S.*)", re.IGNORECASE)


# One client per event loop. Loops are weak keys, but a client with open connections refers
# back to its loop, so entries of closed loops are also dropped explicitly on every lookup.
_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
    weakref.WeakKeyDictionary()
)


_clients_lock = threading.Lock()


def _default_timeout(config: UpstreamConfig) -> httpx.Timeout:
    return httpx.Timeout(
        connect=config.connect_timeout,
        read=config.idle_timeout,
        write=config.connect_timeout,
        pool=config.connect_timeout,
    )


def get_client(config: UpstreamConfig | None = None) -> httpx.AsyncClient:
    """The shared client of the running event loop; the first call's config sizes its pool."""
    loop = asyncio.get_running_loop()
    with _clients_lock:
        for other in [other for other in _clients if other.is_closed()]:
            del _clients[other]
        client = _clients.get(loop)
        if client is None or client.is_closed:
            cfg = config if config is not None else config_from_settings()
            transport = httpx.AsyncHTTPTransport(
                limits=httpx.Limits(
                    max_connections=cfg.max_connections,
                    max_keepalive_connections=min(cfg.max_connections, _MAX_KEEPALIVE),
                    keepalive_expiry=_KEEPALIVE_EXPIRY,
                )
            )
            httpcore_pool.tune_transport(transport)
            client = httpx.AsyncClient(
                timeout=_default_timeout(cfg),
                transport=transport,
                headers={"User-Agent": USER_AGENT},
                follow_redirects=False,
            )
            _clients[loop] = client
        return client


# What a finished response's stream is replaced with (see `_stream`).
_SPENT = httpx.ByteStream(b"")


@contextlib.asynccontextmanager
async def _stream(client: httpx.AsyncClient, method: str, url: str, **kwargs: Any) -> Any:
    """`client.stream(...)`; once the response is closed, its link to its stream is cut.

    httpx's response and its stream refer to each other, and through the stream about forty
    more objects of the request (its request objects, headers, URL, the pool's stream wrappers).
    Left as a cycle, all of it waits for the garbage collector, and under load, for its full
    passes, which pause every reply at once. Without the link, reference counting frees it as
    soon as the reply is done. Nothing reads a closed response's stream.
    """
    response: httpx.Response | None = None
    try:
        async with client.stream(method, url, **kwargs) as response:
            yield response
    finally:
        if response is not None:
            response.stream = _SPENT


async def aclose_clients() -> None:
    """Close the running loop's client; forget the clients of loops that are already closed."""
    loop = asyncio.get_running_loop()
    with _clients_lock:
        client = _clients.pop(loop, None)
        for other in [other for other in _clients if other.is_closed()]:
            del _clients[other]
    if client is not None:
        await client.aclose()


def pool_stats(client: httpx.AsyncClient) -> dict[str, int]:
    """Connections and in-flight requests of a client's pool, for tests and benchmarks.

    Reads httpcore internals defensively: unknown layouts report zeros.
    """
    pool = getattr(getattr(client, "_transport", None), "_pool", None)
    connections = list(getattr(pool, "connections", []) or [])
    requests = list(getattr(pool, "_requests", []) or [])
    return {
        "connections": len(connections),
        "idle": sum(1 for conn in connections if conn.is_idle()),
        "requests": len(requests),
    }


def _redact(text: str, config: UpstreamConfig) -> str:
    for secret in config.secrets():
        text = text.replace(secret, "***")
    return text


def _short(text: str, config: UpstreamConfig, limit: int = _DETAIL_LIMIT) -> str:
    text = _CONTROL_CHARS.sub(" ", _redact(clean_text(text), config)).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _body_detail(raw: bytes) -> tuple[str | None, str | None]:
    """(plain `detail` string, any message found) from an error body of unknown shape."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        return None, None
    if not isinstance(body, dict):
        return None, None
    plain = body.get("detail") if isinstance(body.get("detail"), str) else None
    for key in ("detail", "error", "message"):
        value = body.get(key)
        if isinstance(value, dict):
            value = value.get("message") or value.get("detail")
        if isinstance(value, str) and value:
            return plain, value
    return plain, None


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def error_for_status(
    status: int, raw: bytes, config: UpstreamConfig, *, model: str = "", what: str = "chat"
) -> UpstreamError:
    """Map an HTTP error answer to an UpstreamError; the body shape is not trusted."""
    error = _error_for_status(status, raw, config, model=model, what=what)
    _plain, any_detail = _body_detail(raw)
    said = any_detail if any_detail is not None else raw.decode("utf-8", errors="replace")
    error.log_detail = _short(said, config) or None
    return error


def _error_for_status(
    status: int, raw: bytes, config: UpstreamConfig, *, model: str, what: str
) -> UpstreamError:
    plain, any_detail = _body_detail(raw)
    # Only a short plain `detail` may reach a user; everything else is for the log.
    shown = None
    if plain and len(plain) <= _DETAIL_LIMIT and not any(s in plain for s in config.secrets()):
        shown = _short(plain, config) or None
    if status in (HTTPStatus.UNAUTHORIZED, HTTPStatus.FORBIDDEN):
        return UpstreamError(
            "auth", "The model service rejected this server's credentials.", status=status
        )
    if status == HTTPStatus.PAYMENT_REQUIRED:
        return UpstreamError("payment", "The model service account is out of funds.", status=status)
    if status == HTTPStatus.NOT_FOUND and what == "chat":
        named = _MODEL_NOT_FOUND.search(any_detail or "")
        name = _short(named.group(1), config, 100) if named else _short(model, config, 100)
        text = f"The model {name} is not available." if name else "The model is not available."
        return UpstreamError("model_not_found", text, status=status)
    if status in (HTTPStatus.TOO_MANY_REQUESTS, HTTPStatus.SERVICE_UNAVAILABLE):
        text = "The model is busy right now; try again in a moment."
        return UpstreamError(
            "overloaded", f"{text} ({shown})" if shown else text, retryable=True, status=status
        )
    if status in (
        HTTPStatus.BAD_REQUEST,
        HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
        HTTPStatus.UNPROCESSABLE_ENTITY,
    ):
        text = "The model service refused the request"
        return UpstreamError(
            "bad_request", f"{text}: {shown}" if shown else f"{text}.", status=status
        )
    if status == HTTPStatus.NOT_FOUND:
        return UpstreamError(
            "upstream_error",
            "The model service has no such record (yet).",
            retryable=True,
            status=status,
        )
    return UpstreamError(
        "upstream_error",
        f"The model service failed (HTTP {status}).",
        retryable=status >= HTTPStatus.INTERNAL_SERVER_ERROR,
        status=status,
    )


def _transport_error(exc: httpx.TransportError) -> UpstreamError:
    if isinstance(exc, httpx.PoolTimeout):
        return UpstreamError(
            "overloaded", "Too many replies are in progress; try again shortly.", retryable=True
        )
    if isinstance(exc, httpx.ConnectTimeout):
        return UpstreamError(
            "timeout", "The model service did not accept the connection in time.", retryable=True
        )
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamError("timeout", "The model service did not answer in time.", retryable=True)
    if isinstance(exc, httpx.ConnectError):
        return UpstreamError("upstream_error", "Could not reach the model service.", retryable=True)
    if isinstance(exc, httpx.DecodingError):
        return UpstreamError("protocol", "The model service sent a malformed response.")
    return UpstreamError(
        "upstream_error", "The connection to the model service was lost.", retryable=True
    )


def _retry_worthy(exc: httpx.TransportError) -> bool:
    # Failures before any response: a refused connection, or a pooled keep-alive connection the
    # other end had already closed. A read timeout may mean the request is being served.
    return isinstance(
        exc,
        httpx.ConnectError
        | httpx.ConnectTimeout
        | httpx.RemoteProtocolError
        | httpx.ReadError
        | httpx.WriteError,
    )


def _backoff(config: UpstreamConfig, attempt: int, retry_after: float | None) -> float:
    ceiling = min(config.backoff_cap, config.backoff_base * 2 ** (attempt - 1))
    delay = random.uniform(0, ceiling)
    if retry_after is not None:
        delay = max(delay, min(retry_after, config.backoff_cap))
    return delay


async def _read_capped(response: httpx.Response) -> bytes:
    body = bytearray()
    try:
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) >= _ERROR_BODY_LIMIT:
                break
    except httpx.TransportError:
        pass
    return bytes(body[:_ERROR_BODY_LIMIT])


async def _get_json(
    url: str, config: UpstreamConfig, *, authorization: str | None, what: str
) -> Any:
    client = get_client(config)
    headers = {"Accept": "application/json"}
    if authorization:
        headers["Authorization"] = authorization
    timeout = httpx.Timeout(
        connect=config.connect_timeout,
        read=min(config.idle_timeout, _FETCH_READ_TIMEOUT),
        write=config.connect_timeout,
        pool=config.connect_timeout,
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        async with _stream(client, "GET", url, headers=headers, timeout=timeout) as response:
            raw = (
                await _read_capped(response)
                if response.status_code != HTTPStatus.OK
                else (await response.aread())
            )
    except httpx.TransportError as exc:
        error = _transport_error(exc)
        logger.warning(
            "upstream %s failed code=%s duration_ms=%.0f",
            what,
            error.code,
            (loop.time() - started) * 1000,
        )
        raise error from exc
    duration = (loop.time() - started) * 1000
    if response.status_code != HTTPStatus.OK:
        error = error_for_status(response.status_code, raw, config, what=what)
        logger.warning(
            "upstream %s failed status=%d code=%s duration_ms=%.0f detail=%s",
            what,
            response.status_code,
            error.code,
            duration,
            error.log_detail or "-",
        )
        raise error
    logger.info("upstream %s status=200 duration_ms=%.0f", what, duration)
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise UpstreamError(
            "protocol", "The model service sent a malformed response.", status=HTTPStatus.OK
        ) from None
