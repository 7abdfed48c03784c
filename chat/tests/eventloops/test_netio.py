"""The upstream client's asyncio network backend (chat/upstream/netio.py), over real loopback
sockets.

The rest of the upstream tests run through it too (every request of `get_client()`);
these cover what they do not reach: TLS, as production talks to Lava, a keep-alive connection
the server closed while idle, a body larger than the read buffer's high-water mark, and the
mapping of failures to httpx's exceptions.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gzip
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpcore
import httpx
import pytest
import trustme

from chat.upstream import netio
from chat.upstream.client import TextDelta, stream_chat
from chat.upstream.config import UpstreamConfig
from chat.upstream.http import aclose_clients, get_client
from chutesweb.runtime import httpcore_pool

pytestmark = pytest.mark.asyncio

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def serve(
    handler: Handler, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[tuple[int, list[int]]]:
    """A raw server on a free loopback port; yields its port and a list counting connections."""
    connections: list[int] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            await handler(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(accept, "127.0.0.1", 0, ssl=ssl_context)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port, connections
    finally:
        server.close()
        await server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


def response(body: bytes, *, close: bool = False) -> bytes:
    head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\nContent-Type: text/plain\r\n"
    if close:
        head += "Connection: close\r\n"
    return head.encode() + b"\r\n" + body


def client(**kwargs: object) -> httpx.AsyncClient:
    transport = httpx.AsyncHTTPTransport(**kwargs)  # type: ignore[arg-type]
    httpcore_pool.tune_transport(transport)
    return httpx.AsyncClient(transport=transport)


async def test_the_upstream_client_uses_the_asyncio_backend() -> None:
    shared = get_client(
        UpstreamConfig(
            forward_url="http://127.0.0.1:9/v1/forward",
            api_base="http://127.0.0.1:9/v1",
            forward_token="t",
        )
    )
    try:
        pool = shared._transport._pool  # type: ignore[attr-defined]
        assert isinstance(pool._network_backend, netio.AsyncioBackend)
    finally:
        await aclose_clients()


async def test_a_request_over_tls_is_verified_and_answered() -> None:
    authority = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("localhost").configure_cert(server_context)
    client_context = ssl.create_default_context()
    authority.configure_trust(client_context)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                await read_request(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            writer.write(response(b"over tls"))
            await writer.drain()

    async with serve(handler, server_context) as (port, connections):
        async with client(verify=client_context) as http:
            first = await http.get(f"https://localhost:{port}/")
            second = await http.get(f"https://localhost:{port}/")
            assert first.text == second.text == "over tls"
            # Kept alive: both requests went over one TLS connection.
            assert len(connections) == 1
            # A certificate the client does not trust is refused at the handshake.
        async with httpx.AsyncClient(transport=_plain_transport()) as untrusting:
            with pytest.raises(httpx.ConnectError):
                await untrusting.get(f"https://localhost:{port}/")


def _plain_transport() -> httpx.AsyncHTTPTransport:
    transport = httpx.AsyncHTTPTransport(verify=ssl.create_default_context())
    httpcore_pool.tune_transport(transport)
    return transport


async def test_an_idle_connection_the_server_closed_is_not_reused() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        # Keep-alive is not refused, but the server hangs up once the reply is out, as a proxy
        # does when its own idle timeout is shorter than the client's.
        writer.write(response(b"once"))
        await writer.drain()

    async with serve(handler) as (port, connections), client() as http:
        assert (await http.get(f"http://127.0.0.1:{port}/")).text == "once"
        # Wait until the pool sees the server's FIN on its idle connection (a state httpcore
        # exposes only by asking, with no event to wait on).
        pool = http._transport._pool  # type: ignore[attr-defined]
        async with asyncio.timeout(5):
            while not all(connection.has_expired() for connection in pool.connections):  # noqa: ASYNC110
                await asyncio.sleep(0.005)
        assert (await http.get(f"http://127.0.0.1:{port}/")).text == "once"
    assert len(connections) == 2


async def test_a_body_larger_than_the_buffer_arrives_whole() -> None:
    body = bytes(range(256)) * (3 * netio.HIGH_WATER // 256 + 7)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(response(body, close=True))
        await writer.drain()

    async with serve(handler) as (port, _), client() as http:
        received = bytearray()
        async with http.stream("GET", f"http://127.0.0.1:{port}/") as reply:
            async for chunk in reply.aiter_raw():
                received += chunk
                # A slow reader: the connection has to stop reading and start again.
                await asyncio.sleep(0)
    assert received == body


async def test_a_silent_server_is_a_read_timeout() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(5)

    async with serve(handler) as (port, _), client() as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.get(f"http://127.0.0.1:{port}/", timeout=httpx.Timeout(5, read=0.2))


def chunked_head() -> bytes:
    return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def test_a_body_that_trickles_within_the_read_timeout_never_times_out() -> None:
    """The limit is per read: 8 pieces 0.1 s apart take longer than one read's 0.3 s, and the
    one timer each connection keeps must keep moving its deadline rather than fire."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(chunked_head())
        for i in range(8):
            await asyncio.sleep(0.1)
            writer.write(chunk(b"piece %d;" % i))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async with serve(handler) as (port, _), client() as http:
        timeout = httpx.Timeout(5, read=0.3)
        async with http.stream("GET", f"http://127.0.0.1:{port}/", timeout=timeout) as reply:
            body = b"".join([part async for part in reply.aiter_raw()])
    assert body == b"".join(b"piece %d;" % i for i in range(8))


async def test_a_short_read_timeout_after_long_ones_is_kept() -> None:
    """A read with a shorter limit than the reads before it times out on its own limit, not on
    the earlier, later deadline."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(chunked_head() + chunk(b"first"))
        await writer.drain()
        await asyncio.sleep(5)

    async with serve(handler) as (port, _):
        stream = await netio.AsyncioBackend().connect_tcp("127.0.0.1", port, timeout=5)
        await stream.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        # A first read with a long limit arms the connection's timer far ahead.
        assert (await stream.read(65536, timeout=30)).startswith(b"HTTP/1.1 200")
        with pytest.raises(httpcore.ReadTimeout):
            # A TimeoutError from here instead would mean the 0.2 s was ignored.
            async with asyncio.timeout(4):
                await stream.read(65536, timeout=0.2)
        await stream.aclose()


async def test_a_refused_connection_is_a_connect_error() -> None:
    async with serve(lambda r, w: asyncio.sleep(0)) as (port, _):
        pass  # the port is free again, and nothing listens on it
    async with client() as http:
        with pytest.raises(httpx.ConnectError):
            await http.get(f"http://127.0.0.1:{port}/")


async def test_a_reset_in_the_middle_of_a_body_is_a_read_error() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\npartial")
        await writer.drain()
        writer.transport.abort()

    async with serve(handler) as (port, _), client() as http:
        with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
            await http.get(f"http://127.0.0.1:{port}/")


async def test_a_compressed_event_stream_is_still_decoded() -> None:
    """Asked for identity, a server may compress anyway: the reply must read the same."""
    events = b"".join(
        b'data: {"choices": [{"index": 0, "delta": {"content": "%s"}}]}\n\n' % word
        for word in (b"Hello", b" there")
    )
    body = gzip.compress(events + b"data: [DONE]\n\n")

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await read_request(reader)
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Encoding: gzip\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body
        )
        await writer.drain()

    async with serve(handler) as (port, _):
        config = UpstreamConfig(
            forward_url=f"http://127.0.0.1:{port}/v1/forward",
            api_base=f"http://127.0.0.1:{port}/v1",
            forward_token="t",
            max_retries=0,
        )
        try:
            texts = [
                event.text
                async for event in stream_chat(
                    {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
                    config=config,
                )
                if isinstance(event, TextDelta)
            ]
        finally:
            await aclose_clients()
    assert "".join(texts) == "Hello there"


# Happy Eyeballs (RFC 8305) where the loop has none of its own: uvloop.


class FakeSocket:
    def __init__(self, name: str) -> None:
        self.name = name
        self.closed = False

    def close(self) -> None:
        self.closed = True


async def test_addresses_alternate_families_from_the_first_one() -> None:
    v6 = [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", (f"::{i}", 443, 0, 0)) for i in (1, 2, 3)]
    v4 = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (f"10.0.0.{i}", 443)) for i in (1, 2)]
    infos = [v6[0], v6[1], v4[0], v6[2], v4[1], v4[0]]  # the last one twice
    assert netio._interleave(infos) == [v6[0], v4[0], v6[1], v4[1], v6[2]]
    assert netio._interleave([]) == []


async def test_a_silent_address_is_raced_by_the_next_one_after_the_delay() -> None:
    silent_cancelled = asyncio.Event()
    started: list[str] = []

    async def silent() -> FakeSocket:
        started.append("silent")
        try:
            await asyncio.Event().wait()
        finally:
            silent_cancelled.set()
        raise AssertionError("unreachable")

    async def quick() -> FakeSocket:
        started.append("quick")
        return FakeSocket("quick")

    winner = await netio._race([silent, quick], 0.01)
    assert winner.name == "quick"
    assert started == ["silent", "quick"]
    await asyncio.wait_for(silent_cancelled.wait(), 5)


async def test_a_failed_address_hands_over_at_once_not_after_the_delay() -> None:
    async def refused() -> FakeSocket:
        raise ConnectionRefusedError("refused")

    async def quick() -> FakeSocket:
        return FakeSocket("quick")

    # With an hour's delay, only moving on at the failure can finish within the test's timeout.
    async with asyncio.timeout(5):
        winner = await netio._race([refused, quick], 3600)
    assert winner.name == "quick"


async def test_when_two_connect_together_the_second_is_closed() -> None:
    sockets = [FakeSocket("first"), FakeSocket("second")]
    both_started = asyncio.Event()
    count = 0

    def opener(sock: FakeSocket) -> Callable[[], Awaitable[FakeSocket]]:
        async def connect() -> FakeSocket:
            nonlocal count
            count += 1
            if count == 2:
                both_started.set()
            await both_started.wait()
            return sock

        return connect

    winner = await netio._race([opener(s) for s in sockets], 0)
    loser = next(s for s in sockets if s is not winner)
    assert not winner.closed
    assert loser.closed


async def test_when_every_address_fails_the_last_error_is_raised() -> None:
    def failing(message: str) -> Callable[[], Awaitable[FakeSocket]]:
        async def connect() -> FakeSocket:
            raise OSError(message)

        return connect

    with pytest.raises(OSError, match="second"):
        await netio._race([failing("first"), failing("second")], 0.01)


async def test_a_race_cancelled_from_outside_closes_what_connected() -> None:
    late = FakeSocket("late")
    release = asyncio.Event()

    async def slow() -> FakeSocket:
        # Connects even when cancelled: the socket must not be left open.
        with contextlib.suppress(asyncio.CancelledError):
            await release.wait()
        return late

    race = asyncio.ensure_future(netio._race([slow], 3600))
    await asyncio.sleep(0.01)
    race.cancel()
    with pytest.raises(asyncio.CancelledError):
        await race
    release.set()
    for _ in range(10):
        await asyncio.sleep(0)
    assert late.closed


async def test_real_sockets_a_refused_address_then_the_listening_one() -> None:
    async with serve(lambda r, w: asyncio.sleep(0)) as (closed_port, _):
        pass  # nothing listens there any more
    async with serve(lambda r, w: asyncio.sleep(0)) as (port, _):
        loop = asyncio.get_running_loop()
        infos = [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", closed_port)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port)),
        ]
        openers = [functools.partial(netio._open_socket, loop, info, None) for info in infos]
        sock = await netio._race(openers, 3600)
        try:
            assert sock.getpeername() == ("127.0.0.1", port)
        finally:
            sock.close()


async def test_connections_race_resolved_addresses_on_loops_without_their_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """asyncio races addresses itself (`happy_eyeballs_delay`); on uvloop the backend resolves
    and races them: a refused first address still reaches the server at the second."""
    async with serve(lambda r, w: asyncio.sleep(0)) as (closed_port, _):
        pass
    resolved: list[str] = []

    async def resolve(loop: asyncio.AbstractEventLoop, host: str, port: int) -> list[Any]:
        resolved.append(host)
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", closed_port)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port)),
        ]

    monkeypatch.setattr(netio, "_resolve", resolve)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(response(b"hello"))
        await writer.drain()

    async with serve(handler) as (port, _), client() as http:
        answer = await http.get(f"http://localhost:{port}/")
    assert answer.text == "hello"
    own = isinstance(asyncio.get_running_loop(), asyncio.BaseEventLoop)
    assert resolved == ([] if own else ["localhost"])
