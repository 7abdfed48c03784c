"""The upstream client's sockets, on plain asyncio.

httpx reaches the network through httpcore's pluggable network backend; its default goes through
anyio, which for every read resumes the transport's reading, waits, and pauses it again (two
`epoll_ctl` calls per token of a streamed reply), opens a cancel scope for the read timeout,
and answers httpcore's "is this idle connection readable?" with a `getpeername()` and a
`poll()` per idle connection, on every request start and end.

This backend keeps one asyncio protocol per connection that is always reading into a queue
(paused only when a reader falls far behind), times reads out with one timer handle, and knows
whether an idle connection has anything to read from its own queue, without a system call. The
contract is httpcore's: `read()` returns at most `max_bytes` (b"" at the end of the stream),
and failures are httpcore's own exceptions, which httpx maps to its own as it always does.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import itertools
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Protocol, TypeVar, cast

import httpcore
from httpcore import AsyncNetworkBackend, AsyncNetworkStream

# Bytes a connection may hold unread before it stops reading from its socket.
HIGH_WATER = 1024 * 1024
LOW_WATER = 256 * 1024


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.chunks: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.eof = False
        self.error: BaseException | None = None
        self.paused = False
        self._reader: asyncio.Future[None] | None = None
        self._drain: asyncio.Future[None] | None = None
        # The waiting read's deadline, and the one timer that enforces it (see `wait_readable`).
        self._deadline: float | None = None
        self._timer: asyncio.TimerHandle | None = None

    # Transport callbacks.

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        self.buffered += len(data)
        if self.buffered > HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if exc is not None and self.error is None:
            self.error = exc
        self._wake()
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def pause_writing(self) -> None:
        if self._drain is None or self._drain.done():
            self._drain = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    # For the stream.

    @property
    def readable(self) -> bool:
        return bool(self.chunks) or self.eof

    def take(self, max_bytes: int) -> bytes:
        chunk = self.chunks.popleft()
        if len(chunk) > max_bytes:
            self.chunks.appendleft(chunk[max_bytes:])
            chunk = chunk[:max_bytes]
        self.buffered -= len(chunk)
        if self.paused and self.buffered <= LOW_WATER and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return chunk

    def _wake(self) -> None:
        if self._reader is not None and not self._reader.done():
            self._reader.set_result(None)

    async def wait_readable(self, timeout: float | None) -> None:
        """Wait for data, the end of the stream or a failure; httpcore.ReadTimeout after
        `timeout` seconds.

        A streamed reply waits here once per token. Rather than schedule and cancel a timer
        each time, the connection keeps one timer at most: when it fires before the current
        deadline (a later read moved it), it re-arms itself for that deadline.
        """
        loop = asyncio.get_running_loop()
        future = self._reader = loop.create_future()
        if timeout is not None:
            self._deadline = deadline = loop.time() + timeout
            if self._timer is not None and self._timer.when() > deadline:
                self._timer.cancel()
                self._timer = None
            if self._timer is None:
                self._timer = loop.call_at(deadline, self._check_deadline)
        else:
            self._deadline = None
        try:
            await future
        finally:
            self._reader = None

    def _check_deadline(self) -> None:
        self._timer = None
        reader, deadline = self._reader, self._deadline
        if reader is None or reader.done() or deadline is None:
            return  # no read waiting, or one without a time limit
        loop = asyncio.get_running_loop()
        if loop.time() >= deadline:
            reader.set_exception(httpcore.ReadTimeout())
        else:
            self._timer = loop.call_at(deadline, self._check_deadline)


def _expire(future: asyncio.Future[None], error: type[Exception]) -> None:
    if not future.done():
        future.set_exception(error())


async def _wait(
    future: asyncio.Future[None], timeout: float | None, error: type[Exception]
) -> None:
    """Wait for `future`, failing with `error` after `timeout` seconds (None: no limit)."""
    if timeout is None:
        await future
        return
    handle = asyncio.get_running_loop().call_later(timeout, _expire, future, error)
    try:
        await future
    finally:
        handle.cancel()


class AsyncioStream(AsyncNetworkStream):
    def __init__(self, transport: asyncio.Transport, protocol: _Protocol) -> None:
        self._transport = transport
        self._protocol = protocol

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        protocol = self._protocol
        if not protocol.chunks and not protocol.eof:
            await protocol.wait_readable(timeout)
        if protocol.chunks:
            return protocol.take(max_bytes)
        if protocol.error is not None:
            raise httpcore.ReadError(str(protocol.error) or type(protocol.error).__name__)
        return b""

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        protocol = self._protocol
        if self._transport.is_closing() or (protocol.eof and protocol.error is not None):
            raise httpcore.WriteError("the connection is closed")
        try:
            self._transport.write(buffer)
        except (OSError, RuntimeError) as exc:
            raise httpcore.WriteError(str(exc)) from exc
        drain = protocol._drain
        if drain is not None and not drain.done():
            await _wait(drain, timeout, httpcore.WriteTimeout)
        if protocol.error is not None and self._transport.is_closing():
            raise httpcore.WriteError(str(protocol.error) or "the connection is closed")

    async def aclose(self) -> None:
        self._transport.close()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                transport = await loop.start_tls(
                    self._transport,
                    self._protocol,
                    ssl_context,
                    server_hostname=server_hostname,
                )
        except TimeoutError as exc:
            self._transport.abort()
            raise httpcore.ConnectTimeout("TLS handshake timed out") from exc
        except (OSError, ssl.SSLError, ConnectionError) as exc:
            self._transport.abort()
            raise httpcore.ConnectError(str(exc) or type(exc).__name__) from exc
        if transport is None:  # the connection went away during the handshake
            raise httpcore.ConnectError("the connection closed during the TLS handshake")
        self._protocol.transport = transport
        return AsyncioStream(transport, self._protocol)

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            # Asked of idle connections only: the protocol reads all the time, so anything the
            # server sent (its close included) is already queued here.
            return self._protocol.readable or self._transport.is_closing()
        if info == "ssl_object":
            return self._transport.get_extra_info("ssl_object")
        if info == "client_addr":
            return self._transport.get_extra_info("sockname")
        if info == "server_addr":
            return self._transport.get_extra_info("peername")
        if info == "socket":
            return self._transport.get_extra_info("socket")
        return None


# RFC 8305's "connection attempt delay": how long one address gets before the next one races it.
HAPPY_EYEBALLS_DELAY = 0.25


class _Closable(Protocol):
    def close(self) -> None: ...


# A socket, or in the tests a stand-in for one: what the race needs is that it can be closed.
S = TypeVar("S", bound=_Closable)


def _interleave(infos: list[Any]) -> list[Any]:
    """Addresses in the resolver's order, alternating families from the first one on (RFC 8305),
    so that a broken IPv6 (or IPv4) route costs one delay, not one per address."""
    by_family: dict[int, list[Any]] = {}
    for info in dict.fromkeys(infos):
        by_family.setdefault(info[0], []).append(info)
    return [info for group in itertools.zip_longest(*by_family.values()) for info in group if info]


async def _open_socket(
    loop: asyncio.AbstractEventLoop, info: Any, local_address: str | None
) -> socket.socket:
    family, kind, proto, _, address = info
    sock = socket.socket(family, kind, proto)
    try:
        sock.setblocking(False)
        if local_address:
            sock.bind((local_address, 0))
        await loop.sock_connect(sock, address)
    except BaseException:
        sock.close()
        raise
    return sock


async def _race(openers: Sequence[Callable[[], Awaitable[S]]], delay: float) -> S:
    """The first socket to connect. Each attempt starts `delay` after the one before it, or at
    once when every earlier attempt has failed; the losers are cancelled or closed."""
    pending: set[asyncio.Task[S]] = set()
    errors: list[BaseException] = []
    winner: S | None = None
    waiting = iter(openers)

    def settle(done: set[asyncio.Task[S]]) -> None:
        nonlocal winner
        for task in done:
            error = task.exception()
            if error is not None:
                errors.append(error)
            elif winner is None:
                winner = task.result()
            else:
                task.result().close()

    try:
        for opener in waiting:
            pending.add(asyncio.ensure_future(opener()))
            done, pending = await asyncio.wait(
                pending, timeout=delay, return_when=asyncio.FIRST_COMPLETED
            )
            settle(done)
            if winner is not None:
                return winner
            # A failure frees its slot: the next address starts now (the loop goes on); a
            # timeout does too, with the slow attempt still in the race.
        while pending and winner is None:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            settle(done)
    except BaseException:
        if winner is not None:
            winner.close()
        raise
    finally:
        for task in pending:
            task.cancel()
            task.add_done_callback(_close_loser)
    if winner is None:
        raise errors[-1] if errors else OSError("no address to connect to")
    return winner


async def _resolve(loop: asyncio.AbstractEventLoop, host: str, port: int) -> list[Any]:
    return await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)


def _close_loser(task: asyncio.Task[_Closable]) -> None:
    """A cancelled attempt closes its own socket, unless it had connected already."""
    if not task.cancelled() and task.exception() is None:
        task.result().close()


async def _create_connection(
    loop: asyncio.AbstractEventLoop, host: str, port: int, local_address: str | None
) -> tuple[asyncio.BaseTransport, Any]:
    local_addr = (local_address, 0) if local_address else None
    if isinstance(loop, asyncio.BaseEventLoop):
        return await loop.create_connection(
            _Protocol, host, port, local_addr=local_addr, happy_eyeballs_delay=HAPPY_EYEBALLS_DELAY
        )
    # uvloop has no Happy Eyeballs of its own: resolve, race the addresses, hand it the socket.
    infos = _interleave(await _resolve(loop, host, port))
    if not infos:
        raise OSError(f"{host} has no address")
    openers = [functools.partial(_open_socket, loop, info, local_address) for info in infos]
    sock = await _race(openers, HAPPY_EYEBALLS_DELAY)
    try:
        return await loop.create_connection(_Protocol, sock=sock)
    except BaseException:
        sock.close()
        raise


class AsyncioBackend(AsyncNetworkBackend):
    """httpcore's network backend on asyncio's own transports."""

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                transport, protocol = await _create_connection(loop, host, port, local_address)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(f"connecting to {host}:{port} timed out") from exc
        except OSError as exc:
            raise httpcore.ConnectError(str(exc) or type(exc).__name__) from exc
        return self._stream(transport, protocol, socket_options)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                transport, protocol = await loop.create_unix_connection(_Protocol, path)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(f"connecting to {path} timed out") from exc
        except OSError as exc:
            raise httpcore.ConnectError(str(exc) or type(exc).__name__) from exc
        return self._stream(transport, protocol, socket_options)

    @staticmethod
    def _stream(
        transport: asyncio.BaseTransport, protocol: Any, socket_options: Iterable[Any] | None
    ) -> AsyncioStream:
        assert isinstance(protocol, _Protocol)
        transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                for option in socket_options or ():
                    sock.setsockopt(*option)
            except OSError as exc:
                transport.abort()
                raise httpcore.ConnectError(f"socket option refused: {exc}") from exc
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return AsyncioStream(transport, protocol)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
