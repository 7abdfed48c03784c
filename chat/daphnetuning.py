"""Under daphne, two costs of every websocket frame that Twisted and autobahn add are removed.

Eager writes: a frame goes to the socket at once instead of on the reactor's next turn.
Twisted's TCP transport never writes in `write()`: it queues the bytes, registers the socket
for writability (an `epoll_ctl`), sends them when the reactor next polls, and unregisters it
again (another `epoll_ctl`). For a chat reply that is a reactor round trip and two system calls
for every frame of every watching socket: the largest cost of relaying a token under daphne.
asyncio's own transports (and so uvicorn) send at once and only queue what the kernel does not
take; this gives daphne's accepted connections the same behaviour.

Only when nothing is queued already (so bytes never overtake earlier ones) and the connection
is plain TCP (TLS terminated in front of the app, as docs/deployment.md sets it up); anything
else, a partial send included, takes Twisted's own path for the rest, unchanged. A failed send
is left to that path too, which finds the error on its next write and closes the connection
as it always does. Set `EAGER_SOCKET_WRITES=false` to turn it off.

Lazy frame logs: autobahn's `sendData` logs every frame at debug level, and builds the message's
arguments first, debug enabled or not: three terminal-colour strings through `click.style`
per frame. Its protocol module gets versions of those helpers that only build the string when a
log line is actually written, so debug logs read the same.
"""

from __future__ import annotations

import sys
from typing import Any

_installed: set[str] = set()


def install(*, eager_writes: bool = True) -> set[str]:
    """Apply the changes, once each, if this process runs on Twisted; returns those in force."""
    if "twisted.internet.reactor" not in sys.modules:
        return set()
    if eager_writes and "eager_writes" not in _installed:
        _eager_writes()
        _installed.add("eager_writes")
    if "lazy_frame_logs" not in _installed:
        _lazy_frame_logs()
        _installed.add("lazy_frame_logs")
    return set(_installed)


def _eager_writes() -> None:
    from twisted.internet import tcp

    queued_write = tcp.Server.write

    def write(self: Any, data: bytes) -> None:
        if (
            type(data) is bytes
            and data
            and not self.TLS
            and self.connected
            and not self.disconnecting
            and not self._writeDisconnected
            and not self._tempDataLen
            and self.offset == len(self.dataBuffer)
        ):
            sent = self.writeSomeData(data)
            if isinstance(sent, int) and sent > 0:
                if sent == len(data):
                    return
                data = data[sent:]
        queued_write(self, data)

    write.__doc__ = "Send now when nothing is queued; queue the rest as Twisted does."
    tcp.Server.write = write  # type: ignore[method-assign]


class _Deferred:
    """A log argument computed only when the log line is formatted."""

    __slots__ = ("args", "function")

    def __init__(self, function: Any, *args: Any) -> None:
        self.function = function
        self.args = args

    def __format__(self, spec: str) -> str:
        return format(self.function(*self.args), spec)

    def __str__(self) -> str:
        return str(self.function(*self.args))


def _lazy_frame_logs() -> None:
    from autobahn.websocket import protocol

    hltype, hlval = protocol.hltype, protocol.hlval
    protocol.hltype = lambda obj: _Deferred(hltype, obj)
    protocol.hlval = lambda *args, **kwargs: _Deferred(lambda: hlval(*args, **kwargs))
