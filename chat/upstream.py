"""The only module that speaks HTTP to the upstream: Chutes, reached through the Lava forward proxy.

`stream_chat()` streams one chat completion as typed events; `fetch_models()` reads the Chutes
catalogue; `fetch_request_cost()` reads what Lava billed for a request. Every failure becomes an
`UpstreamError` with a stable `code` and a message that is safe to show a user.

Streaming contract (the stand-in upstream, `chat/fakeupstream`, plays each upstream behaviour
named here, quirks and failures included):

- `RequestIds` comes first, as soon as the response headers arrive (Chutes sends them with the
  first token), then `ReasoningDelta`/`TextDelta`, then `Usage` (only if the upstream reported
  it) and `Finish` last.
- 429/503 answers and connection failures are retried before any response arrived, with capped
  exponential backoff and full jitter; nothing is retried once a response started, so nothing
  is retried after a token.
- A stream that ends without `[DONE]` is accepted when a `finish_reason` had arrived (the reply is
  whole), however it ended: a clean end of the body, a closed or reset connection, a chunked
  body cut inside a chunk, or silence until a timeout. Otherwise it raises `upstream_error`
  ("cut off"), or `timeout` for silence. Everything received before the failure has been
  yielded by then.
- Cancelling the consuming task or calling `aclose()` on the iterator closes the response, which
  releases its pooled connection at once. A consumer that stops early should use
  `contextlib.aclosing()` so that happens without waiting for garbage collection.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import random
import re
import threading
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from http import HTTPStatus
from typing import Any
from urllib.parse import quote

import httpx

from chat.pricing import text_weight
from chat.reasoning import Piece, ReasoningSplitter, delta_texts, infer_reasoning_model
from chat.sse import SSEDecoder, SSEEvent
from chutesweb.runtime import httpcore_pool

logger = logging.getLogger("chat.upstream")

ERROR_CODES = frozenset(
    {
        "not_configured",
        "auth",
        "payment",
        "model_not_found",
        "overloaded",
        "bad_request",
        "upstream_error",
        "timeout",
        "protocol",
    }
)
NOT_CONFIGURED_MESSAGE = (
    "The model service is not configured: set LAVA_FORWARD_TOKEN or LAVA_SECRET_KEY."
)
USER_AGENT = "chutes-chat/0.1"
# Error bodies are read only this far: they are small, and an endless one must not hang us.
_ERROR_BODY_LIMIT = 64 * 1024
_DETAIL_LIMIT = 200
_REASON_LIMIT = 64
# Token counts beyond this are not counts (and no database integer column holds them).
_MAX_TOKENS = 2**31 - 1
# Lengths in the catalogue (context, output) beyond this are not lengths.
_MAX_CATALOGUE_NUMBER = 2**31 - 1
# After [DONE] the rest of the body (the chunked terminator) is read so the connection can be
# reused; a server that keeps the body open after [DONE] only costs this much.
_DRAIN_SECONDS = 2.0
_FETCH_READ_TIMEOUT = 30.0
_KEEPALIVE_EXPIRY = 15.0
# At most this many idle connections are kept for reuse: the pool's bookkeeping looks at each
# idle connection on every request start and end (chutesweb/runtime/httpcore_pool.py).
_MAX_KEEPALIVE = 100
_MODEL_NOT_FOUND = re.compile(r"model not found:\s*(\S.*)", re.IGNORECASE)
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]+")
# What no UTF-8 encoder writes and no database stores: UTF-16 surrogates, which JSON escapes
# such as "\ud83d" decode to, and NUL, which PostgreSQL refuses in text.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


class UpstreamError(Exception):
    """A failure talking to the upstream, with a stable code and a message safe for users."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        retryable: bool = False,
        status: int | None = None,
        after_tokens: bool = False,
    ) -> None:
        if code not in ERROR_CODES:
            raise ValueError(f"unknown upstream error code: {code}")
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable
        self.status = status
        self.after_tokens = after_tokens
        # What the upstream said, redacted and capped: for logs only, never for users.
        self.log_detail: str | None = None

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def __repr__(self) -> str:
        return (
            f"UpstreamError(code={self.code!r}, message={self.message!r}, "
            f"retryable={self.retryable}, status={self.status}, after_tokens={self.after_tokens})"
        )


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

    @classmethod
    def from_settings(cls) -> UpstreamConfig:
        from django.conf import settings

        def text(name: str, default: str = "") -> str:
            return str(getattr(settings, name, default) or default)

        return cls(
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


# Events yielded by stream_chat.
@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    text: str


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Finish:
    reason: str | None


@dataclass(frozen=True, slots=True)
class RequestIds:
    lava_request_id: str | None
    chutes_invocation_id: str | None


Event = TextDelta | ReasoningDelta | Usage | Finish | RequestIds


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


@dataclass
class LavaRequestCost:
    request_id: str
    input_tokens: int
    output_tokens: int
    total_cost: Decimal
    raw: dict[str, Any]


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
            cfg = config if config is not None else UpstreamConfig.from_settings()
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


def clean_text(text: str) -> str:
    """`text` with the two halves of each surrogate pair joined into their character, and lone
    halves and NUL replaced by U+FFFD: text that can be sent and stored."""
    if _UNSTORABLE.search(text) is None:
        return text
    text = text.replace("\x00", "\ufffd")
    # Through UTF-16 the halves of a pair become one character; its decoder replaces a lone one.
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


class _FieldText:
    """The text of one delta field as it streams in, made clean (`clean_text`).

    A server may cut its text between the two halves of a surrogate pair and send them as JSON
    escapes in two deltas. A first half at the end of a delta waits for the next delta of the
    same field (the other field's text is not its continuation); the end of the stream turns
    it into U+FFFD.
    """

    __slots__ = ("_held",)

    def __init__(self) -> None:
        self._held = ""

    def feed(self, text: str) -> str:
        if self._held:
            text = self._held + text
            self._held = ""
        elif _UNSTORABLE.search(text) is None:
            return text
        if text and "\ud800" <= text[-1] <= "\udbff":
            self._held = text[-1]
            text = text[:-1]
        return clean_text(text)

    def end(self) -> str:
        held, self._held = self._held, ""
        return "\ufffd" if held else ""


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


def _streaming_body(body: Mapping[str, Any]) -> bytes:
    payload = dict(body)
    payload["stream"] = True
    options = payload.get("stream_options")
    payload["stream_options"] = {
        **(options if isinstance(options, dict) else {}),
        "include_usage": True,
    }
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


def _as_int(value: Any) -> int:
    try:
        return max(0, int(value))
    except (TypeError, ValueError, OverflowError):
        return 0


def _token_count(value: Any) -> int | None:
    """A count of tokens as the upstream wrote it (a number, or digits in a string), if it is
    one: whole, not negative, and below what a database integer holds."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        if not (value.isascii() and value.isdigit() and len(value) <= 10):
            return None
        value = int(value)
    elif isinstance(value, float):
        if not value.is_integer():  # NaN and infinities included
            return None
        value = int(value)
    if isinstance(value, int) and 0 <= value <= _MAX_TOKENS:
        return value
    return None


def _parse_usage(usage: Mapping[str, Any]) -> Usage | None:
    """The usage the upstream reported, or None when its counts are not counts: the reply is
    then billed from an estimate, as without usage, rather than from a made-up number."""
    prompt = _token_count(usage.get("prompt_tokens"))
    completion = _token_count(usage.get("completion_tokens"))
    if prompt is None or completion is None:
        return None
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, Mapping) else None
    return Usage(
        prompt_tokens=prompt, completion_tokens=completion, cached_tokens=_token_count(cached) or 0
    )


def _finish_reason(value: Any) -> str | None:
    """The finish_reason of a choice, if the choice has one: non-empty text, kept short and
    clean (it is logged and stored)."""
    if not isinstance(value, str):
        return None
    reason = _CONTROL_CHARS.sub(" ", clean_text(value[: _REASON_LIMIT * 2])).strip()
    return reason[:_REASON_LIMIT] or None


class _Reply:
    """Turns the bytes of one streamed reply into events; holds the error to raise, if any."""

    def __init__(
        self,
        config: UpstreamConfig,
        *,
        split_think: bool,
        hold: bool,
        token_limit: float | None = None,
    ) -> None:
        self.config = config
        # The reply's text, weighed as it arrives (pricing.text_weight), before anything is
        # held back; past `token_limit` the reply is over (see stream_chat).
        self.token_limit = token_limit
        self.weight = 0.0
        self.cut = False
        self.decoder = SSEDecoder()
        self.splitter = ReasoningSplitter(split_think=split_think, hold_for_close=hold)
        # Each field is made clean before the splitter sees it.
        self._reasoning = _FieldText()
        self._content = _FieldText()
        self.produced = False
        self.finished = False
        self.finish_reason: str | None = None
        self.usage: Usage | None = None
        self.error: UpstreamError | None = None

    @property
    def over(self) -> bool:
        return self.decoder.done or self.error is not None or self.cut

    def feed(self, data: bytes) -> list[Event]:
        out: list[Event] = []
        self._handle_all(self.decoder.feed(data), out)
        if self.error is None and self.decoder.error is not None:
            self._fail("protocol", "The model service sent a malformed stream.", self.decoder.error)
        if self.error is not None:
            self._end_text(out)
        return out

    def close(self, broken: UpstreamError | None = None) -> list[Event]:
        """The end of the body: its last events, and the end of the reply. `broken` is the
        failure that ended the body early, if one did (a lost connection, a timeout)."""
        out: list[Event] = []
        if self.error is None:
            # A complete event whose blank line was lost still counts, as on a clean end.
            self._handle_all(self.decoder.close(), out)
        self._end_text(out)
        if self.error is not None:
            return out
        if self.decoder.done or self.finished:
            if not self.decoder.done:
                # The reply is whole: only its end (usage, [DONE]) may be missing.
                logger.warning(
                    "upstream stream ended without [DONE] after its finish_reason: %s",
                    "clean end of body" if broken is None else broken.code,
                )
            if self.usage is not None:
                out.append(self.usage)
            out.append(Finish(self.finish_reason))
        elif broken is not None and broken.code != "upstream_error":
            self.error = broken  # a timeout stays one
        else:
            self.error = UpstreamError(
                "upstream_error", "The reply was cut off before it finished.", retryable=True
            )
        return out

    def _handle_all(self, events: list[SSEEvent], out: list[Event]) -> None:
        for event in events:
            self._handle(event, out)
            if self.error is not None:
                return

    def _fail(self, code: str, message: str, detail: str) -> None:
        logger.warning("upstream stream error code=%s detail=%s", code, _short(detail, self.config))
        self.error = UpstreamError(code, message, retryable=code == "upstream_error")

    def _handle(self, event: SSEEvent, out: list[Event]) -> None:
        if event.is_error:
            self._fail("upstream_error", "The model failed while writing its reply.", event.data)
            return
        try:
            chunk = json.loads(event.data)
        except (ValueError, RecursionError):
            # RecursionError: JSON nested deeper than the decoder goes.
            self._fail("protocol", "The model service sent a malformed stream.", event.data)
            return
        if not isinstance(chunk, dict):
            self._fail("protocol", "The model service sent a malformed stream.", event.data)
            return
        choices = chunk.get("choices")
        if chunk.get("error") and not choices:
            self._fail("upstream_error", "The model failed while writing its reply.", event.data)
            return
        # JSON objects decode to dicts: `dict` checks stay in C, where the `Mapping` ABC's
        # check runs Python for every token.
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            parsed = _parse_usage(usage)
            if parsed is not None:
                self.usage = parsed
            elif usage:
                logger.warning("upstream usage ignored: %s", _short(json.dumps(usage), self.config))
        if not isinstance(choices, list):
            return
        for choice in choices:
            # Only the first choice is shown; n > 1 is never requested.
            if not isinstance(choice, dict) or choice.get("index", 0) not in (0, None):
                continue
            delta = choice.get("delta")
            if isinstance(delta, dict):
                self._delta(delta, out)
            reason = _finish_reason(choice.get("finish_reason"))
            if reason is not None:
                self.finished = True
                self.finish_reason = reason

    def _delta(self, delta: dict[str, Any], out: list[Event]) -> None:
        reasoning, content = delta_texts(delta)
        if self.token_limit is not None and not self.cut:
            self.weight += text_weight(reasoning) + text_weight(content)
            if self.weight > self.token_limit:
                # Past what the reply may be: nothing more is read, and what came is kept.
                self.cut = True
                self.finished = True
                self.finish_reason = "length"
        if reasoning:
            # Told even when all of it waits: reasoning in its own field means a reasoning
            # model's content is not held for a lone </think>.
            self._pieces(self.splitter.feed_reasoning(self._reasoning.feed(reasoning)), out)
        if content:
            content = self._content.feed(content)
            if content:
                self._pieces(self.splitter.feed_content(content), out)

    def _end_text(self, out: list[Event]) -> None:
        """Release what waits: half a surrogate pair, then the splitter's held text."""
        reasoning = self._reasoning.end()
        if reasoning:
            self._pieces(self.splitter.feed_reasoning(reasoning), out)
        content = self._content.end()
        if content:
            self._pieces(self.splitter.feed_content(content), out)
        self._pieces(self.splitter.finish(), out)

    def _pieces(self, pieces: list[Piece], out: list[Event]) -> None:
        for piece in pieces:
            self.produced = True
            out.append(
                TextDelta(piece.text) if piece.kind == "answer" else ReasoningDelta(piece.text)
            )


async def _next_chunk(
    chunks: AsyncIterator[bytes], deadline: float, config: UpstreamConfig
) -> bytes | None:
    loop = asyncio.get_running_loop()
    remaining = deadline - loop.time()
    try:
        # The idle timeout of httpx covers each read; the deadline only needs its own timer once
        # it is closer than that, which keeps the common path free of per-chunk timers.
        if remaining > config.idle_timeout:
            return await anext(chunks, None)
        if remaining <= 0:
            raise TimeoutError
        async with asyncio.timeout(remaining):
            return await anext(chunks, None)
    except TimeoutError:
        raise UpstreamError(
            "timeout", "The reply took longer than the time allowed.", retryable=True
        ) from None
    except httpx.ReadTimeout:
        raise UpstreamError(
            "timeout",
            f"The model sent nothing for {config.idle_timeout:g} seconds.",
            retryable=True,
        ) from None
    except httpx.TransportError as exc:
        raise _transport_error(exc) from exc


async def _drain(chunks: AsyncIterator[bytes]) -> None:
    try:
        async with asyncio.timeout(_DRAIN_SECONDS):
            async for _ in chunks:
                pass
    except (TimeoutError, httpx.TransportError):
        pass


def _log_failure(
    error: UpstreamError, *, model: str, attempt: int, started: float, retry_in: float | None = None
) -> None:
    duration = (asyncio.get_running_loop().time() - started) * 1000
    logger.warning(
        "upstream chat failed model=%s status=%s code=%s attempt=%d duration_ms=%.0f "
        "after_tokens=%s retry_in_ms=%s detail=%s",
        model,
        error.status,
        error.code,
        attempt,
        duration,
        error.after_tokens,
        "-" if retry_in is None else f"{retry_in * 1000:.0f}",
        error.log_detail or "-",
    )


async def stream_chat(
    body: Mapping[str, Any],
    *,
    config: UpstreamConfig | None = None,
    split_think: bool = True,
    reasoning_model: bool | None = None,
    token_limit: float | None = None,
) -> AsyncGenerator[Event, None]:
    """Stream one chat completion; see the module docstring for the contract.

    `reasoning_model` says whether text before a lone `</think>` is reasoning (see
    `chat.reasoning`); None guesses from the model id and `chat_template_kwargs`.

    `token_limit`: once the reply's text (reasoning included, held-back text included) weighs
    more tokens than this by estimate, the reply ends there, as if its finish_reason were
    `length`: the request is closed, so a provider that ignores max_tokens neither produces
    more nor makes this process hold more.
    """
    cfg = config if config is not None else UpstreamConfig.from_settings()
    headers = {
        "Authorization": cfg.authorization(),
        "Content-Type": "application/json",
        "Accept": "text/event-stream",
        # A compressed event stream could be buffered by the decompressor.
        "Accept-Encoding": "identity",
    }
    payload = _streaming_body(body)
    model = str(body.get("model") or "")
    hold = infer_reasoning_model(body) if reasoning_model is None else reasoning_model
    client = get_client(cfg)
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + cfg.total_timeout
    url = cfg.chat_url()
    attempt = 0
    while True:
        attempt += 1
        remaining = deadline - loop.time()
        timeout = httpx.Timeout(
            connect=min(cfg.connect_timeout, remaining),
            read=min(cfg.idle_timeout, remaining),
            write=min(cfg.connect_timeout, remaining),
            pool=min(cfg.connect_timeout, remaining),
        )
        retry_after: float | None = None
        reply: _Reply | None = None
        try:
            async with _stream(
                client, "POST", url, content=payload, headers=headers, timeout=timeout
            ) as response:
                if response.status_code != HTTPStatus.OK:
                    raw = await _read_capped(response)
                    error = error_for_status(response.status_code, raw, cfg, model=model)
                    retry_after = _retry_after(response)
                else:
                    reply = _Reply(cfg, split_think=split_think, hold=hold, token_limit=token_limit)
                    ttfb = loop.time() - started
                    yield RequestIds(
                        lava_request_id=response.headers.get("x-lava-request-id"),
                        chutes_invocation_id=response.headers.get("x-chutes-invocationid"),
                    )
                    # Asked for identity: the raw bytes are the body, without httpx's decoder
                    # layers per chunk, unless the server compressed it anyway (or the body
                    # was read already, as a test transport does).
                    encoding = response.headers.get("content-encoding", "identity").lower()
                    chunks = (
                        response.aiter_raw()
                        if encoding in ("", "identity") and not response.is_stream_consumed
                        else response.aiter_bytes()
                    )
                    broken: UpstreamError | None = None
                    while not reply.over:
                        try:
                            data = await _next_chunk(chunks, deadline, cfg)
                        except UpstreamError as exc:
                            # The body broke off or went silent: the reply decides whether it
                            # was whole (a finish_reason had arrived) or cut off.
                            broken = exc
                            break
                        if data is None:
                            break
                        for event in reply.feed(data):
                            yield event
                    if reply.cut:
                        logger.warning(
                            "upstream chat went past its token limit model=%s limit=%.0f; "
                            "the request is closed",
                            model,
                            token_limit or 0,
                        )
                    elif reply.error is None and broken is None:
                        await _drain(chunks)
                    final = reply.close(broken)
                    if reply.error is None:
                        # Logged before the last events: a consumer may stop at Finish.
                        logger.info(
                            "upstream chat done model=%s status=200 attempt=%d ttfb_ms=%.0f "
                            "duration_ms=%.0f finish=%s lava_request_id=%s",
                            model,
                            attempt,
                            ttfb * 1000,
                            (loop.time() - started) * 1000,
                            reply.finish_reason,
                            response.headers.get("x-lava-request-id"),
                        )
                    for event in final:
                        yield event
                    if reply.error is not None:
                        raise reply.error
                    return
        except UpstreamError as exc:
            if reply is not None:
                exc.after_tokens = reply.produced
            if exc.status is None and reply is not None:
                exc.status = int(HTTPStatus.OK)
            _log_failure(exc, model=model, attempt=attempt, started=started)
            raise
        except httpx.TransportError as exc:
            error = _transport_error(exc)
            if reply is not None:
                error.after_tokens = reply.produced
            # Once a response arrived nothing is retried: the request is being served and billed.
            if reply is not None or not _retry_worthy(exc):
                _log_failure(error, model=model, attempt=attempt, started=started)
                raise error from exc
        except (asyncio.CancelledError, GeneratorExit):
            logger.info(
                "upstream chat cancelled model=%s attempt=%d duration_ms=%.0f",
                model,
                attempt,
                (loop.time() - started) * 1000,
            )
            raise
        if error.code not in ("overloaded", "upstream_error", "timeout") or not error.retryable:
            _log_failure(error, model=model, attempt=attempt, started=started)
            raise error
        if error.status is not None and error.status not in (
            HTTPStatus.TOO_MANY_REQUESTS,
            HTTPStatus.SERVICE_UNAVAILABLE,
        ):
            _log_failure(error, model=model, attempt=attempt, started=started)
            raise error
        delay = _backoff(cfg, attempt, retry_after)
        if attempt > cfg.max_retries or loop.time() + delay >= deadline:
            _log_failure(error, model=model, attempt=attempt, started=started)
            raise error
        _log_failure(error, model=model, attempt=attempt, started=started, retry_in=delay)
        await asyncio.sleep(delay)


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


async def fetch_models(*, config: UpstreamConfig | None = None) -> list[CatalogueModel]:
    """The Chutes catalogue, fetched through the forward proxy.

    Should the proxy refuse to forward a GET (404/405), the catalogue is read from Chutes
    directly: it is public and needs no credentials.
    """
    cfg = config if config is not None else UpstreamConfig.from_settings()
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


async def fetch_request_cost(
    request_id: str, *, config: UpstreamConfig | None = None
) -> LavaRequestCost:
    """What Lava billed for a request it forwarded (recorded once the stream ended)."""
    cfg = config if config is not None else UpstreamConfig.from_settings()
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
