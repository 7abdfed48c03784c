"""One chat completion from the upstream, streamed as typed events: `stream_chat()`.

Every failure becomes an `UpstreamError` with a stable `code` and a message that is safe to
show a user. About 500 lines: the stream's contract below is one piece of reading, from the
request to the last event; the HTTP plumbing is in `http.py`, the decoding in `sse.py`,
`reasoning.py` and `text.py`.

Streaming contract (the stand-in upstream, `chat/testing/fakeupstream`, plays each upstream
behaviour named here, quirks and failures included):

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
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import httpx

from chat.billing.prices import text_weight

from .config import UpstreamConfig
from .errors import UpstreamError
from .http import (
    _backoff,
    _read_capped,
    _retry_after,
    _retry_worthy,
    _short,
    _stream,
    _transport_error,
    error_for_status,
    get_client,
)
from .reasoning import Piece, ReasoningSplitter, delta_texts, infer_reasoning_model
from .settings import config_from_settings
from .sse import SSEDecoder, SSEEvent
from .text import _CONTROL_CHARS, _FieldText, clean_text

logger = logging.getLogger("chat.upstream")


_REASON_LIMIT = 64


# Token counts beyond this are not counts (and no database integer column holds them).
_MAX_TOKENS = 2**31 - 1


# After [DONE] the rest of the body (the chunked terminator) is read so the connection can be
# reused; a server that keeps the body open after [DONE] only costs this much.
_DRAIN_SECONDS = 2.0


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


def _streaming_body(body: Mapping[str, Any]) -> bytes:
    payload = dict(body)
    payload["stream"] = True
    options = payload.get("stream_options")
    payload["stream_options"] = {
        **(options if isinstance(options, dict) else {}),
        "include_usage": True,
    }
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


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
        # The reply's text, weighed as it arrives (chat.billing.prices.text_weight), before
        # anything is held back; past `token_limit` the reply is over (see stream_chat).
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
    `chat.upstream.reasoning`); None guesses from the model id and `chat_template_kwargs`.

    `token_limit`: once the reply's text (reasoning included, held-back text included) weighs
    more tokens than this by estimate, the reply ends there, as if its finish_reason were
    `length`: the request is closed, so a provider that ignores max_tokens neither produces
    more nor makes this process hold more.
    """
    cfg = config if config is not None else config_from_settings()
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
