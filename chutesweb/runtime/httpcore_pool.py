"""The upstream client's connection pool: httpcore's, with linear bookkeeping (`_LinearPool`),
and the asyncio network backend of chat/upstream/netio.py.

httpx builds its transport's httpcore pool itself and takes no network backend, so both are put
into the pool of each transport the app makes (`tune_transport`), each only on the httpcore and
httpx it was written for (chutesweb/runtime/__init__.py). chat/upstream/netio.py implements
httpcore's public network-backend interface; only setting it on httpx's pool reads private names.
"""

from __future__ import annotations

import httpcore
import httpx
from httpcore import AsyncConnectionInterface

from chat.upstream import netio
from chutesweb.runtime import ASYNCIO_BACKEND, LINEAR_POOL, enabled


class _LinearPool(httpcore.AsyncConnectionPool):
    """httpcore 1.0's connection pool, with its keep-alive limit counted as documented, no
    connection stranded by a cancelled request, and cheaper bookkeeping.

    The keep-alive limit is the most idle connections the pool keeps. httpcore 1.0 tests each
    idle connection against it with `len([c.is_idle() for c in connections])`, the count of
    every connection, busy ones included: with more replies streaming than the limit, every
    connection closed the moment its reply ended and every new reply opened a new one (a TCP
    and, in production, a TLS handshake per reply; at 200 streams, one per reply). Here only
    idle connections count, and the earliest opened idle ones beyond the limit are closed.

    A connection opened for a request that is cancelled before it uses it stays "connecting"
    for good in httpcore's pool, counted against the connection limit: with the pool full,
    every later request would time out waiting. Here a connection that no request holds and
    that is neither idle nor closed is closed.

    The bookkeeping runs on every request start and end, under the pool's lock. httpcore asked
    every connection, through two layers of method calls each, whether it was closed, expired
    or idle, then asked every connection again whether it was free for each queued request.
    Here the connections that carry a request in flight are skipped: an HTTP/1.1 connection
    serving a request is neither closed, expired, idle nor free for another one until that
    request ends, and its end runs this again. Only the others are asked, once each, and a
    connection handed to one queued request is not offered to the next (it still walks every
    request and connection once, with a much smaller constant). With HTTP/2 (a busy connection
    can take more requests) httpcore's own method runs.
    """

    def _assign_requests_to_connections(self) -> list[AsyncConnectionInterface]:
        if self._http2:
            return super()._assign_requests_to_connections()
        busy: set[int] = set()
        queued = []
        for pool_request in self._requests:
            if pool_request.connection is None:
                queued.append(pool_request)
            else:
                busy.add(id(pool_request.connection))
        closing: list[AsyncConnectionInterface] = []
        kept: list[AsyncConnectionInterface] = []
        idle: list[AsyncConnectionInterface] = []
        for connection in self._connections:
            if id(connection) in busy:
                kept.append(connection)
            elif connection.is_closed():
                pass
            elif connection.has_expired() or not connection.is_idle():
                # Held by no request and not idle: opened for a request that was cancelled
                # before it used it (or cancelled mid-exchange). Nothing can use it again,
                # and kept it would count against the limit for good.
                closing.append(connection)
            else:
                kept.append(connection)
                idle.append(connection)
        surplus = len(idle) - self._max_keepalive_connections
        if surplus > 0:
            dropped = {id(connection) for connection in idle[:surplus]}
            closing.extend(idle[:surplus])
            kept = [connection for connection in kept if id(connection) not in dropped]
            idle = idle[surplus:]
        self._connections[:] = kept
        for pool_request in queued:
            origin = pool_request.request.url.origin
            chosen = next(
                (
                    connection
                    for connection in idle
                    if connection.can_handle_request(origin) and connection.is_available()
                ),
                None,
            )
            if chosen is None:
                if len(self._connections) >= self._max_connections:
                    if not idle:
                        continue  # the request waits for a connection to come free
                    # Full, and the idle connections are for other origins: make room.
                    spare = idle.pop(0)
                    self._connections.remove(spare)
                    closing.append(spare)
                chosen = self.create_connection(origin)
                self._connections.append(chosen)
            else:
                idle.remove(chosen)
            pool_request.assign_to_connection(chosen)
        return closing


def tune_transport(transport: httpx.AsyncHTTPTransport) -> None:
    """Give the transport's pool the linear bookkeeping and the asyncio network backend
    (chat/upstream/netio.py), each on the httpcore and httpx it was written for; otherwise the
    pool stays httpcore's own."""
    pool = getattr(transport, "_pool", None)
    if type(pool) is not httpcore.AsyncConnectionPool:
        return
    if enabled(LINEAR_POOL):
        pool.__class__ = _LinearPool
    if enabled(ASYNCIO_BACKEND):
        pool._network_backend = netio.AsyncioBackend()
