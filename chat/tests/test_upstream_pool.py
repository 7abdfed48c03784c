"""The shared HTTP client (chat/upstream/http.py): one per event loop, a pool that waits,
reuses and closes connections within its limits, sized from the config."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import httpx

from chat.testing.fakeupstream import FakeUpstream
from chat.tests.fixtures_upstream import (
    TOKEN,
    chat_body,
)
from chat.upstream.config import UpstreamConfig
from chat.upstream.http import aclose_clients, get_client, pool_stats
from chutesweb.runtime import httpcore_pool


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
