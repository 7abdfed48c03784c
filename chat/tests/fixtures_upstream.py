"""Fixtures for the upstream client tests: a stand-in on loopback and configs that point at it.

The fixtures `bare_upstream` and `config` are registered for every test module by
`chat/tests/conftest.py`; the helpers are imported where they are used.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Iterable
from typing import Any

import pytest

from chat.testing.fakeupstream import FakeUpstream
from chat.upstream.client import _Reply, stream_chat
from chat.upstream.config import UpstreamConfig
from chat.upstream.errors import UpstreamError
from chat.upstream.http import aclose_clients

TOKEN = "aks_test_fixture-secret-0123456789"
MODEL = "unsloth/Mistral-Nemo-Instruct-2407"
REASONING_MODEL = "deepseek-ai/DeepSeek-R1-0528"


def chat_body(text: str = "Hello there", model: str = MODEL, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


def config_for(server: FakeUpstream, **overrides: Any) -> UpstreamConfig:
    """A config that reaches `server` through its forward proxy, with test-sized timeouts."""
    base = UpstreamConfig(
        forward_url=server.forward_url,
        # The real Chutes address as the target: the stand-in serves it by path, so tests
        # also prove the target URL is passed through, not called.
        api_base="https://llm.chutes.ai/v1",
        secret_key=TOKEN,
        connect_timeout=2.0,
        idle_timeout=5.0,
        total_timeout=10.0,
        max_retries=3,
        backoff_base=0.001,
        backoff_cap=0.005,
    )
    return dataclasses.replace(base, **overrides)


@dataclasses.dataclass
class Collected:
    events: list[Any]
    error: UpstreamError | None

    def of(self, kind: type) -> list[Any]:
        return [event for event in self.events if isinstance(event, kind)]

    def text(self, kind: type) -> str:
        return "".join(event.text for event in self.of(kind))


async def collect(body: dict[str, Any], config: UpstreamConfig, **kwargs: Any) -> Collected:
    """Every event of one stream, and the error that ended it if any."""
    events: list[Any] = []
    try:
        async for event in stream_chat(body, config=config, **kwargs):
            events.append(event)
    except UpstreamError as exc:
        return Collected(events, exc)
    return Collected(events, None)


def read_body(parts: Iterable[bytes], *, split_think: bool = True, hold: bool = False) -> Collected:
    """The events the reader makes of a streamed body arriving in `parts`, read as
    `stream_chat` reads a response: until the reply is over, then closed."""
    config = UpstreamConfig("http://127.0.0.1:9/v1/forward", "http://127.0.0.1:9/v1")
    reply = _Reply(config, split_think=split_think, hold=hold)
    events: list[Any] = []
    for part in parts:
        if reply.over:
            break
        events += reply.feed(part)
    events += reply.close()
    return Collected(events, reply.error)


@pytest.fixture(name="bare_upstream")
async def bare_upstream_fixture() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream(tokens=(TOKEN,)) as server:
        yield server
        # The shared client belongs to this test's loop: close it while the loop still runs.
        await aclose_clients()


@pytest.fixture(name="config")
def config_fixture(bare_upstream: FakeUpstream) -> UpstreamConfig:
    return config_for(bare_upstream)
