"""Eager writes: under daphne, a frame goes to the socket at once instead of on the reactor's
next turn.

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
as it always does. Set `RUNTIME_PATCHES_OFF=eager_writes` to turn it off.
"""

from __future__ import annotations

from typing import Any


def apply() -> None:
    """Replace `tcp.Server.write` (chutesweb.runtime.install applies it once, when supported)."""
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
    tcp.Server.write = write  # type: ignore[method-assign]  # patches Twisted on purpose
