from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import json
import logging
import socket
import threading
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import httpx
import pytest

from chat.testing.fakeupstream import FakeUpstream, expected_text, plan_reply
from chat.testing.fakeupstream.script import make_script
from chat.tests.fixtures_upstream import (
    MODEL,
    REASONING_MODEL,
    TOKEN,
    bare_upstream_fixture,  # noqa: F401 - fixture
    chat_body,
    collect,
    config_fixture,  # noqa: F401 - fixture
    config_for,
)
from chat.upstream import http as upstream_http
from chat.upstream.catalogue import fetch_models, parse_catalogue
from chat.upstream.client import Finish, ReasoningDelta, RequestIds, TextDelta, Usage, stream_chat
from chat.upstream.config import UpstreamConfig
from chat.upstream.errors import UpstreamError
from chat.upstream.http import aclose_clients, error_for_status, get_client, pool_stats
from chat.upstream.lava import fetch_request_cost
from chat.upstream.settings import config_from_settings
from chutesweb.runtime import httpcore_pool

# The configuration


def test_a_given_forward_token_is_used_as_is() -> None:
    config = UpstreamConfig("https://lava/v1/forward", "https://chutes/v1", forward_token="fwd")
    assert config.authorization() == "Bearer fwd"


def test_a_forward_token_is_built_from_the_secret_key_and_options() -> None:
    config = UpstreamConfig(
        "https://lava/v1/forward",
        "https://chutes/v1",
        secret_key="aks_test_x",
        chutes_api_key="cpk_y",
        customer_id="cus_1",
        meter_slug="chat",
    )
    token = config.authorization().removeprefix("Bearer ")
    assert json.loads(base64.b64decode(token)) == {
        "secret_key": "aks_test_x",
        "provider_key": "cpk_y",
        "customer_id": "cus_1",
        "meter_slug": "chat",
    }


def test_without_credentials_it_is_not_configured_and_says_what_to_set() -> None:
    config = UpstreamConfig("https://lava/v1/forward", "https://chutes/v1")
    assert not config.configured
    with pytest.raises(UpstreamError) as caught:
        config.authorization()
    assert caught.value.code == "not_configured"
    assert "LAVA_FORWARD_TOKEN" in caught.value.message
    assert "LAVA_SECRET_KEY" in caught.value.message


async def test_streaming_without_credentials_fails_before_any_request() -> None:
    config = UpstreamConfig("http://127.0.0.1:9/v1/forward", "https://chutes/v1")
    with pytest.raises(UpstreamError) as caught:
        await anext(stream_chat(chat_body(), config=config))
    assert caught.value.code == "not_configured"


def test_the_chat_url_carries_the_encoded_target() -> None:
    config = UpstreamConfig("https://api.lava.so/v1/forward", "https://llm.chutes.ai/v1/")
    assert config.chat_url() == (
        "https://api.lava.so/v1/forward?u=https%3A%2F%2Fllm.chutes.ai%2Fv1%2Fchat%2Fcompletions"
    )
    assert config.lava_api_root() == "https://api.lava.so/v1"


def test_the_config_is_read_from_settings(settings: Any) -> None:
    settings.LAVA_FORWARD_URL = "https://lava.example/v1/forward"
    settings.CHUTES_API_BASE = "https://chutes.example/v1"
    settings.LAVA_FORWARD_TOKEN = ""
    settings.LAVA_SECRET_KEY = "aks_test_settings"
    settings.LAVA_CUSTOMER_ID = "cus_9"
    settings.UPSTREAM_IDLE_TIMEOUT = 42
    settings.UPSTREAM_MAX_RETRIES = 1
    config = config_from_settings()
    assert (config.forward_url, config.api_base) == (
        "https://lava.example/v1/forward",
        "https://chutes.example/v1",
    )
    assert config.configured and config.customer_id == "cus_9"
    assert (config.idle_timeout, config.max_retries, config.total_timeout) == (42.0, 1, 1800.0)


def test_the_config_repr_shows_no_secret() -> None:
    config = UpstreamConfig(
        "https://lava/v1/forward", "https://c/v1", forward_token="ft-1", secret_key="sk-2",
        chutes_api_key="cpk-3",
    )  # fmt: skip
    text = repr(config)
    assert "ft-1" not in text and "sk-2" not in text and "cpk-3" not in text
    assert "<set>" in text


# Streaming through the forward proxy


async def test_a_reply_streams_through_the_forward_proxy(
    bare_upstream: FakeUpstream, config: UpstreamConfig
) -> None:
    body = chat_body("Bonjour, ça va?")
    result = await collect(body, config)
    assert result.error is None
    assert isinstance(result.events[0], RequestIds)
    assert result.events[0].lava_request_id == bare_upstream.last.request_id
    assert result.events[0].chutes_invocation_id == bare_upstream.last.invocation_id
    assert result.text(TextDelta) == expected_text(None, body["messages"])
    assert "é" in result.text(TextDelta) or "🙂" in result.text(TextDelta)
    assert result.events[-2:] == [
        Usage(
            prompt_tokens=bare_upstream.last.prompt_tokens, completion_tokens=12, cached_tokens=0
        ),
        Finish("stop"),
    ]
    served = bare_upstream.last
    assert served.via_forward and served.outcome == "complete"
    assert served.target == "https://llm.chutes.ai/v1/chat/completions"
    assert served.body["stream"] is True
    assert served.body["stream_options"] == {"include_usage": True}


async def test_the_built_forward_token_carries_its_claims(bare_upstream: FakeUpstream) -> None:
    config = config_for(bare_upstream, customer_id="cus_42", meter_slug="chat-tokens",
                        chutes_api_key="cpk_own")  # fmt: skip
    assert (await collect(chat_body(), config)).error is None
    assert bare_upstream.last.auth == "forward_token"
    assert bare_upstream.last.claims == {
        "customer_id": "cus_42",
        "meter_slug": "chat-tokens",
        "provider_key": "cpk_own",
    }


async def test_a_plain_token_is_accepted_as_is(bare_upstream: FakeUpstream) -> None:
    config = config_for(bare_upstream, secret_key="", forward_token=TOKEN)
    assert (await collect(chat_body(), config)).error is None
    assert bare_upstream.last.auth == "token"


async def test_a_bad_token_is_an_auth_error(bare_upstream: FakeUpstream) -> None:
    result = await collect(chat_body(), config_for(bare_upstream, secret_key="aks_test_wrong"))
    assert result.error is not None
    assert (result.error.code, result.error.status) == ("auth", 401)
    assert not result.error.retryable
    assert len(bare_upstream.chat_log()) == 1


async def test_a_chunked_crlf_stream_with_pings_reads_the_same(
    bare_upstream: FakeUpstream, config: UpstreamConfig
) -> None:
    body = chat_body("Ünïcode everywhere 🙂")
    bare_upstream.push_script(crlf=True, ping_every=2, chunk_bytes=1)
    result = await collect(body, config)
    assert result.error is None
    assert result.text(TextDelta) == expected_text(None, body["messages"])


@pytest.mark.parametrize("mode", ["reasoning_content", "reasoning", "think", "close_only"])
async def test_each_reasoning_form_is_kept_apart_from_the_answer(
    bare_upstream: FakeUpstream, config: UpstreamConfig, mode: str
) -> None:
    body = chat_body("Why is the sky blue?", model=REASONING_MODEL)
    script = {"reasoning": "Light scatters — Rayleigh, I think.", "reasoning_mode": mode}
    bare_upstream.push_script(**script, chunk_bytes=7)
    result = await collect(body, config)
    assert result.error is None
    assert result.text(ReasoningDelta) == script["reasoning"]
    assert result.text(TextDelta) == expected_text(script, body["messages"])


async def test_the_reasoning_comes_before_the_answer(
    bare_upstream: FakeUpstream, config: UpstreamConfig
) -> None:
    bare_upstream.push_script(reasoning="Thinking hard.", reasoning_mode="think")
    result = await collect(chat_body(model=REASONING_MODEL), config)
    kinds = [type(e) for e in result.events if isinstance(e, TextDelta | ReasoningDelta)]
    assert kinds.index(TextDelta) > kinds.index(ReasoningDelta)
    assert kinds[kinds.index(TextDelta) :] == [TextDelta] * (len(kinds) - kinds.index(TextDelta))


async def test_a_reply_that_finished_but_lacks_done_is_accepted(
    bare_upstream: FakeUpstream, config: UpstreamConfig
) -> None:
    bare_upstream.push_script(mid="no_done")
    result = await collect(chat_body(), config)
    assert result.error is None
    assert result.events[-1] == Finish("stop")


async def test_many_streams_share_the_pool_concurrently(bare_upstream: FakeUpstream) -> None:
    config = config_for(bare_upstream)
    bare_upstream.set_default_script(interval_ms=5, tokens=10)
    results = await asyncio.gather(*(collect(chat_body(f"n{i}"), config) for i in range(40)))
    assert all(result.error is None for result in results)
    assert bare_upstream.active_streams == 0
    stats = pool_stats(get_client(config))
    assert stats["requests"] == 0
    assert stats["connections"] <= 40


async def test_a_finished_reply_leaves_no_reference_cycle_for_the_collector(
    bare_upstream: FakeUpstream, config: UpstreamConfig
) -> None:
    # httpx's response and its stream refer to each other; left linked, every reply's request
    # objects wait for the garbage collector instead of being freed when the reply is done.
    bare_upstream.set_default_script(interval_ms=0, tokens=5)
    await collect(chat_body(), config)  # the client and its connection, kept for later
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for _ in range(5):
            assert (await collect(chat_body(), config)).error is None
        gc.collect()
        left = [o for o in gc.garbage if type(o).__module__.split(".")[0] in ("httpx", "httpcore")]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert left == []


# Failures before the first token


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


# Failures after the first token


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


# Cancellation


async def _first_tokens(stream: Any, count: int) -> None:
    seen = 0
    async for event in stream:
        if isinstance(event, TextDelta):
            seen += 1
            if seen == count:
                return


async def test_cancelling_the_task_closes_the_upstream_request(
    bare_upstream: FakeUpstream, config: UpstreamConfig
) -> None:
    bare_upstream.push_script(tokens=200, interval_ms=20)
    reached = asyncio.Event()

    async def consume() -> None:
        seen = 0
        async for event in stream_chat(chat_body(), config=config):
            seen += isinstance(event, TextDelta)
            if seen == 2:
                reached.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(reached.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert pool_stats(get_client(config))["requests"] == 0
    await bare_upstream.wait_until(lambda: bare_upstream.last.outcome == "cancelled")
    assert bare_upstream.active_streams == 0
    assert bare_upstream.last.tokens_sent < 200


async def test_closing_the_iterator_closes_the_upstream_request(
    bare_upstream: FakeUpstream, config: UpstreamConfig
) -> None:
    bare_upstream.push_script(tokens=200, interval_ms=20)
    async with contextlib.aclosing(stream_chat(chat_body(), config=config)) as stream:
        await _first_tokens(stream, 2)
    stats = pool_stats(get_client(config))
    assert stats["requests"] == 0
    assert stats["connections"] == stats["idle"]
    await bare_upstream.wait_until(lambda: bare_upstream.last.outcome == "cancelled")
    # The pool still works afterwards.
    assert (await collect(chat_body(), config)).error is None


async def test_a_finished_stream_returns_its_connection_for_reuse(
    bare_upstream: FakeUpstream, config: UpstreamConfig
) -> None:
    for _ in range(3):
        assert (await collect(chat_body(), config)).error is None
    stats = pool_stats(get_client(config))
    assert stats == {"connections": 1, "idle": 1, "requests": 0}


# Secrets


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


# The catalogue and billing


async def test_the_catalogue_is_fetched_through_the_forward_proxy(
    bare_upstream: FakeUpstream, config: UpstreamConfig
) -> None:
    models = {model.id: model for model in await fetch_models(config=config)}
    assert len(models) == 18
    assert bare_upstream.last.via_forward and bare_upstream.last.method == "GET"
    qwen = models["Qwen/Qwen3-32B"]
    assert qwen.prompt_price == Decimal("0.027")
    assert qwen.completion_price == Decimal("0.027")
    assert qwen.context_length == 40960
    assert models["Qwen/Qwen2.5-VL-32B-Instruct"].vision
    assert models["deepseek-ai/DeepSeek-R1-0528"].reasoning
    assert not models[MODEL].reasoning


async def test_the_catalogue_is_read_directly_when_the_proxy_refuses_a_get() -> None:
    async with FakeUpstream(tokens=(TOKEN,), forward_get=False) as fake:
        config = config_for(fake, api_base=fake.api_base)
        try:
            models = await fetch_models(config=config)
        finally:
            await aclose_clients()
        assert len(models) == 18
        assert [(e.path, e.status) for e in fake.log] == [("/v1/forward", 405), ("/v1/models", 200)]


def test_catalogue_entries_are_parsed_defensively() -> None:
    models = parse_catalogue(
        {
            "data": [
                {
                    "id": "a",
                    "max_model_len": "8192",
                    "pricing": {"prompt": "0.1", "completion": 0.2},
                },
                {"id": "b", "context_length": None, "pricing": {"prompt": "free"}},
                {"id": "c", "input_modalities": "text", "supported_features": ["x", 3]},
                {"no_id": True},
                "junk",
                {"id": ""},
            ]
        }
    )
    assert [m.id for m in models] == ["a", "b", "c"]
    assert models[0].context_length == 8192
    assert models[0].prompt_price == Decimal("0.1")
    assert models[0].completion_price == Decimal("0.2")
    assert models[1].prompt_price is None and models[1].context_length is None
    assert models[2].input_modalities == [] and models[2].supported_features == ["x"]
    assert parse_catalogue({"object": "error"}) == []


async def test_the_billed_cost_of_a_request_is_fetched(
    bare_upstream: FakeUpstream, config: UpstreamConfig
) -> None:
    result = await collect(chat_body(model="Qwen/Qwen3-32B"), config)
    request_id = result.events[0].lava_request_id
    usage = result.of(Usage)[0]
    cost = await fetch_request_cost(request_id, config=config)
    assert (cost.input_tokens, cost.output_tokens) == (usage.prompt_tokens, 12)
    expected = Decimal("0.027216") * (usage.prompt_tokens + 12) / Decimal(1_000_000)
    assert cost.total_cost == expected
    bare_upstream.set_request_cost(request_id, "0.00123")
    assert (await fetch_request_cost(request_id, config=config)).total_cost == Decimal("0.00123")
    assert bare_upstream.last.path == f"/v1/requests/{request_id}"


async def test_an_unknown_request_has_no_cost(config: UpstreamConfig) -> None:
    with pytest.raises(UpstreamError) as caught:
        await fetch_request_cost("req_missing", config=config)
    assert (caught.value.code, caught.value.status) == ("upstream_error", 404)


# The shared client


async def test_one_client_per_event_loop(config: UpstreamConfig) -> None:
    client = get_client(config)
    assert get_client(config) is client
    other: list[httpx.AsyncClient] = []

    def in_another_loop() -> None:
        async def grab() -> None:
            other.append(get_client(config))
            await aclose_clients()

        asyncio.run(grab())

    thread = threading.Thread(target=in_another_loop)
    thread.start()
    thread.join(10)
    assert other and other[0] is not client
    assert get_client(config) is client
    await aclose_clients()
    assert client.is_closed
    assert get_client(config) is not client


def _small_pool_client(max_connections: int, max_keepalive: int) -> tuple[httpx.AsyncClient, Any]:
    """A client with the app's pool at a small size, and the list of connections it opened."""
    transport = httpx.AsyncHTTPTransport(
        limits=httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_keepalive
        )
    )
    httpcore_pool.tune_transport(transport)
    pool = transport._pool
    assert type(pool) is httpcore_pool._LinearPool
    opened: list[Any] = []
    connect = pool._network_backend.connect_tcp

    async def counting_connect(*args: Any, **kwargs: Any) -> Any:
        stream = await connect(*args, **kwargs)
        opened.append(stream)
        return stream

    pool._network_backend.connect_tcp = counting_connect  # type: ignore[method-assign]  # httpcore's private backend
    return httpx.AsyncClient(transport=transport), opened


async def _stream_reply(client: httpx.AsyncClient, fake: FakeUpstream, text: str) -> str:
    body = chat_body(text, stream=True)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with client.stream(
        "POST", f"{fake.url}/v1/chat/completions", json=body, headers=headers
    ) as response:
        assert response.status_code == 200
        return "".join([line async for line in response.aiter_lines()])


async def test_requests_beyond_the_pool_wait_and_reuse_freed_connections(
    bare_upstream: FakeUpstream,
) -> None:
    bare_upstream.set_default_script(interval_ms=5, tokens=8)
    client, opened = _small_pool_client(max_connections=2, max_keepalive=2)
    most = 0

    async def watch() -> None:
        nonlocal most
        while True:
            most = max(most, len(client._transport._pool.connections))  # type: ignore[attr-defined]  # httpx's private pool
            await asyncio.sleep(0.001)

    watcher = asyncio.create_task(watch())
    try:
        bodies = await asyncio.gather(
            *(_stream_reply(client, bare_upstream, f"q{i}") for i in range(6))
        )
    finally:
        watcher.cancel()
        await client.aclose()
    assert all(body.endswith("data: [DONE]") for body in bodies)
    # Four of the six waited, and each took a connection an earlier reply had finished with.
    assert len(opened) == 2
    assert most == 2
    assert [entry.outcome for entry in bare_upstream.chat_log()] == ["complete"] * 6


async def test_idle_connections_beyond_the_keep_alive_limit_are_closed(
    bare_upstream: FakeUpstream,
) -> None:
    bare_upstream.set_default_script(interval_ms=5, tokens=5)
    client, opened = _small_pool_client(max_connections=4, max_keepalive=1)
    pool = client._transport._pool  # type: ignore[attr-defined]  # httpx's private pool
    try:
        await asyncio.gather(*(_stream_reply(client, bare_upstream, f"q{i}") for i in range(4)))
        assert len(opened) == 4
        assert pool_stats(client) == {"connections": 1, "idle": 1, "requests": 0}
        kept = pool.connections[0]
        for i in range(3):
            await _stream_reply(client, bare_upstream, f"again {i}")
        # One after another, the replies all went over the connection that was kept.
        assert len(opened) == 4
        assert pool.connections == [kept]
    finally:
        await client.aclose()


async def test_a_finished_connection_is_kept_while_more_replies_stream_than_the_limit(
    bare_upstream: FakeUpstream,
) -> None:
    # The keep-alive limit is on idle connections: busy ones do not push a finished one out.
    client, opened = _small_pool_client(max_connections=10, max_keepalive=2)
    bare_upstream.set_default_script(interval_ms=100, tokens=20)
    long = [
        asyncio.create_task(_stream_reply(client, bare_upstream, f"long {i}")) for i in range(6)
    ]
    try:
        await bare_upstream.wait_until(lambda: bare_upstream.active_streams == 6)
        bare_upstream.set_default_script(interval_ms=1, tokens=3)
        for i in range(3):
            await _stream_reply(client, bare_upstream, f"short {i}")
        # Six busy connections and one the three short replies took turns on.
        assert len(opened) == 7
        assert pool_stats(client)["connections"] == 7
        await asyncio.gather(*long)
        # All seven idle now: the oldest beyond the limit were closed.
        assert pool_stats(client) == {"connections": 2, "idle": 2, "requests": 0}
        assert len(opened) == 7
    finally:
        for task in long:
            task.cancel()
        await asyncio.gather(*long, return_exceptions=True)
        await client.aclose()


async def test_a_connection_opened_for_a_cancelled_request_does_not_fill_the_pool() -> None:
    async def closing_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(closing_server, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
    client, _opened = _small_pool_client(max_connections=1, max_keepalive=1)
    pool = client._transport._pool  # type: ignore[attr-defined]  # httpx's private pool
    queued = asyncio.Event()
    assign = pool._assign_requests_to_connections

    def assign_and_tell() -> Any:
        closing = assign()
        if any(request.is_queued() for request in pool._requests):
            queued.set()
        return closing

    pool._assign_requests_to_connections = assign_and_tell
    try:
        async with client.stream("GET", url, timeout=httpx.Timeout(5, pool=1)) as first:
            waiting = asyncio.create_task(client.get(url, timeout=httpx.Timeout(5, pool=1)))
            # Queued behind the first, the pool being full.
            await asyncio.wait_for(queued.wait(), 5)
            await first.aread()
        # The first one's end opened a new connection for the waiting request (its own was
        # closed by the server); the waiting request is cancelled before it uses it.
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        # The pool is not left full of a connection nobody can use: the next request gets one.
        response = await client.get(url, timeout=httpx.Timeout(5, pool=1))
        assert response.text == "hi"
    finally:
        await client.aclose()
        server.close()
        await server.wait_closed()


def test_the_pool_is_sized_from_the_config() -> None:
    config = UpstreamConfig("http://x/v1/forward", "http://x/v1", max_connections=321)

    async def limits() -> Any:
        client = get_client(config)
        pool = client._transport._pool  # type: ignore[attr-defined]  # httpx's private pool
        try:
            return pool._max_connections, pool._max_keepalive_connections
        finally:
            await aclose_clients()

    # Keep-alive stays bounded whatever the size: see _MAX_KEEPALIVE.
    assert asyncio.run(limits()) == (321, 100)
