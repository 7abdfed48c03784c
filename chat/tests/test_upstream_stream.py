"""One completion streamed through the forward proxy (chat/upstream/client.py): tokens,
reasoning kept apart, the connection pool shared, and cancellation closing the request."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from typing import Any

import pytest

from chat.testing.fakeupstream import FakeUpstream, expected_text
from chat.tests.fixtures_upstream import (
    REASONING_MODEL,
    TOKEN,
    chat_body,
    collect,
    config_for,
)
from chat.upstream.client import Finish, ReasoningDelta, RequestIds, TextDelta, Usage, stream_chat
from chat.upstream.config import UpstreamConfig
from chat.upstream.http import get_client, pool_stats


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
