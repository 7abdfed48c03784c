"""Upstream failures (chat/upstream/errors.py, http.py): error statuses and their codes,
retries, timeouts, failures before and after the first token, and no secret in errors or logs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import AsyncIterator

import httpx
import pytest

from chat.testing.fakeupstream import FakeUpstream, expected_text, plan_reply
from chat.testing.fakeupstream.script import make_script
from chat.tests.fixtures_upstream import (
    TOKEN,
    chat_body,
    collect,
    config_for,
)
from chat.upstream import http as upstream_http
from chat.upstream.client import Finish, TextDelta
from chat.upstream.config import UpstreamConfig
from chat.upstream.errors import UpstreamError
from chat.upstream.http import aclose_clients, error_for_status


@pytest.mark.parametrize(
    ("status", "code", "retryable"),
    [
        (400, "bad_request", False),
        (401, "auth", False),
        (402, "payment", False),
        (403, "auth", False),
        (404, "model_not_found", False),
        (413, "bad_request", False),
        (422, "bad_request", False),
        (429, "overloaded", True),
        (500, "upstream_error", True),
        (502, "upstream_error", True),
        (503, "overloaded", True),
    ],
)
async def test_each_error_status_maps_to_its_code(
    bare_upstream: FakeUpstream, status: int, code: str, retryable: bool
) -> None:
    bare_upstream.push_script(status=status)
    result = await collect(chat_body(), config_for(bare_upstream, max_retries=0))
    assert result.error is not None
    assert (result.error.code, result.error.status) == (code, status)
    assert result.error.retryable is retryable
    assert not result.error.after_tokens
    assert result.events == []


async def test_an_unknown_model_is_named_in_the_message(
    bare_upstream: FakeUpstream, config: UpstreamConfig
) -> None:
    result = await collect(chat_body(model="acme/NoSuchModel-7B"), config)
    assert result.error is not None
    assert result.error.code == "model_not_found"
    assert "acme/NoSuchModel-7B" in result.error.message


async def test_a_short_plain_detail_reaches_the_message(
    bare_upstream: FakeUpstream, config: UpstreamConfig
) -> None:
    bare_upstream.push_script(status=400, detail="max_tokens is too large")
    result = await collect(chat_body(), config)
    assert result.error is not None
    assert "max_tokens is too large" in result.error.message


@pytest.mark.parametrize(
    "raw",
    [
        b"<html>502 Bad Gateway</html>",
        json.dumps({"detail": "x" * 5000}).encode(),
        json.dumps({"detail": {"message": "internal trace at /srv/app.py"}}).encode(),
        json.dumps({"error": {"message": "internal trace at /srv/app.py"}}).encode(),
        json.dumps(["unexpected"]).encode(),
        b"",
    ],
)
def test_other_bodies_never_reach_the_message(raw: bytes) -> None:
    config = UpstreamConfig("https://lava/v1/forward", "https://c/v1", secret_key="s")
    error = error_for_status(400, raw, config)
    assert error.code == "bad_request"
    assert error.message == "The model service refused the request."


def test_a_detail_holding_a_secret_never_reaches_the_message() -> None:
    config = UpstreamConfig("https://lava/v1/forward", "https://c/v1", secret_key="aks_live_zz")
    error = error_for_status(400, b'{"detail": "bad key aks_live_zz"}', config)
    assert "aks_live_zz" not in error.message


async def test_busy_answers_are_retried_until_one_succeeds(
    bare_upstream: FakeUpstream, config: UpstreamConfig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="chat.upstream")
    body = chat_body()
    bare_upstream.push_script(status=503, fail_times=2)
    result = await collect(body, config)
    assert result.error is None
    assert result.text(TextDelta) == expected_text(None, body["messages"])
    assert [entry.status for entry in bare_upstream.chat_log()] == [503, 503, 200]
    retries = [r for r in caplog.records if "retry_in_ms=" in r.getMessage()
               and "retry_in_ms=-" not in r.getMessage()]  # fmt: skip
    assert len(retries) == 2
    assert "attempt=3" in caplog.records[-1].getMessage()


async def test_retries_stop_after_max_retries(bare_upstream: FakeUpstream) -> None:
    bare_upstream.push_script(status=429, fail_times=10)
    result = await collect(chat_body(), config_for(bare_upstream, max_retries=2))
    assert result.error is not None and result.error.code == "overloaded"
    assert len(bare_upstream.chat_log()) == 3


async def test_retries_use_the_directive_in_the_message_too(
    bare_upstream: FakeUpstream, config: UpstreamConfig
) -> None:
    body = chat_body('Hi [[fake {"status": 429, "fail_times": 1}]]')
    result = await collect(body, config)
    assert result.error is None
    assert [entry.status for entry in bare_upstream.chat_log()] == [429, 200]


async def test_a_server_error_is_not_retried(
    bare_upstream: FakeUpstream, config: UpstreamConfig
) -> None:
    bare_upstream.push_script(status=500)
    result = await collect(chat_body(), config)
    assert result.error is not None and result.error.code == "upstream_error"
    assert len(bare_upstream.chat_log()) == 1


async def test_an_unreachable_upstream_is_retried_then_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="chat.upstream")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Nothing listens on the port any more: every connection is refused.
    config = UpstreamConfig(
        f"http://127.0.0.1:{port}/v1/forward", "https://c/v1", secret_key=TOKEN,
        max_retries=2, backoff_base=0.001, backoff_cap=0.002,
    )  # fmt: skip
    try:
        result = await collect(chat_body(), config)
    finally:
        await aclose_clients()
    assert result.error is not None
    assert (result.error.code, result.error.retryable) == ("upstream_error", True)
    attempts = [r.getMessage() for r in caplog.records if "upstream chat failed" in r.getMessage()]
    assert len(attempts) == 3


async def test_a_slow_first_token_beyond_the_idle_timeout_is_a_timeout(
    bare_upstream: FakeUpstream,
) -> None:
    bare_upstream.push_script(ttft_ms=2000)
    result = await collect(chat_body(), config_for(bare_upstream, idle_timeout=0.2))
    assert result.error is not None and result.error.code == "timeout"
    assert len(bare_upstream.chat_log()) == 1


async def test_a_bare_error_line_mid_stream_is_an_error_after_tokens(
    bare_upstream: FakeUpstream, config: UpstreamConfig
) -> None:
    body = chat_body()
    bare_upstream.push_script(mid="error_line", after=3)
    result = await collect(body, config)
    assert result.error is not None
    assert (result.error.code, result.error.after_tokens) == ("upstream_error", True)
    plan = plan_reply(make_script(), body["messages"])
    assert result.text(TextDelta) == "".join(t.text for t in plan.tokens[:3]).lstrip("\n")
    # Never retried once a token was out.
    assert len(bare_upstream.chat_log()) == 1
    assert "Unhandled" not in result.error.message


async def test_a_bare_error_line_before_any_token_is_not_after_tokens(
    bare_upstream: FakeUpstream, config: UpstreamConfig
) -> None:
    bare_upstream.push_script(mid="error_line", after=0)
    result = await collect(chat_body(), config)
    assert result.error is not None
    assert (result.error.code, result.error.after_tokens) == ("upstream_error", False)
    assert len(bare_upstream.chat_log()) == 1


@pytest.mark.parametrize("mid", ["cut", "drop", "reset"])
async def test_a_stream_that_breaks_off_is_an_upstream_error(
    bare_upstream: FakeUpstream, config: UpstreamConfig, mid: str
) -> None:
    bare_upstream.push_script(mid=mid, after=2)
    result = await collect(chat_body(), config)
    assert result.error is not None
    assert result.error.code == "upstream_error"
    assert not any(isinstance(event, Finish) for event in result.events)
    assert len(bare_upstream.chat_log()) == 1


async def test_a_stall_hits_the_idle_timeout(bare_upstream: FakeUpstream) -> None:
    bare_upstream.push_script(mid="stall", after=2)
    result = await collect(chat_body(), config_for(bare_upstream, idle_timeout=0.2))
    assert result.error is not None
    assert (result.error.code, result.error.after_tokens) == ("timeout", True)
    # Giving up closes the connection, which the stand-in sees.
    await bare_upstream.wait_until(lambda: bare_upstream.last.outcome == "cancelled")


async def test_a_reply_slower_than_the_total_deadline_times_out(
    bare_upstream: FakeUpstream,
) -> None:
    bare_upstream.push_script(tokens=50, interval_ms=20)
    result = await collect(
        chat_body(), config_for(bare_upstream, total_timeout=0.3, idle_timeout=5)
    )
    assert result.error is not None
    assert (result.error.code, result.error.after_tokens) == ("timeout", True)
    assert "time allowed" in result.error.message


@contextlib.asynccontextmanager
async def canned_stream(content: bytes) -> AsyncIterator[UpstreamConfig]:
    """The shared client of this loop, answering every request with `content`."""
    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=content))
    upstream_http._clients[asyncio.get_running_loop()] = httpx.AsyncClient(transport=transport)
    try:
        yield UpstreamConfig("http://mock/v1/forward", "http://mock/v1", secret_key=TOKEN)
    finally:
        await aclose_clients()


@pytest.mark.parametrize(
    ("content", "code"),
    [
        (b"data: {not json\n\ndata: [DONE]\n\n", "protocol"),
        (b"data: [1, 2]\n\ndata: [DONE]\n\n", "protocol"),
        (b'data: {"error": {"message": "overloaded"}}\n\n', "upstream_error"),
        (b'event: error\ndata: {"message": "x"}\n\n', "upstream_error"),
    ],
)
async def test_malformed_or_error_data_is_reported(content: bytes, code: str) -> None:
    async with canned_stream(content) as config:
        result = await collect(chat_body(), config)
    assert result.error is not None and result.error.code == code


async def test_an_empty_stream_is_cut_off() -> None:
    async with canned_stream(b"") as config:
        result = await collect(chat_body(), config)
    assert result.error is not None and result.error.code == "upstream_error"
    assert not result.error.after_tokens


async def test_no_secret_appears_in_errors_or_logs(
    bare_upstream: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    for name in (None, "httpx", "httpcore", "chat"):
        caplog.set_level(logging.DEBUG, logger=name)
    config = config_for(bare_upstream, chutes_api_key="cpk_fixture-provider-key")
    secrets = config.secrets()
    assert len(secrets) == 3
    errors: list[UpstreamError] = []
    for script in ({}, {"status": 401}, {"status": 402}, {"mid": "error_line", "after": 1},
                   {"status": 400, "detail": f"token {TOKEN} refused"}):  # fmt: skip
        bare_upstream.push_script(**script)
        result = await collect(chat_body(), config)
        errors += [result.error] if result.error else []
    result = await collect(chat_body(), config_for(bare_upstream, secret_key=TOKEN + "-wrong"))
    errors.append(result.error)
    with pytest.raises(UpstreamError) as unconfigured:
        config_for(bare_upstream, secret_key="").authorization()
    errors.append(unconfigured.value)
    assert len(errors) == 6
    assert any(r.name.startswith(("httpx", "httpcore")) for r in caplog.records)
    texts = [r.getMessage() for r in caplog.records] + [str(e) for e in errors]
    texts += [repr(e) for e in errors] + [repr(config)]
    for secret in [*secrets, TOKEN + "-wrong"]:
        assert not any(secret in text for text in texts), secret
