"""How many bytes a websocket's connection holds that the kernel has not taken yet.

A client that stops reading makes the server buffer every frame it is sent. What the client
says it has read (its acknowledgements) cannot bound that: a client can acknowledge everything
and read nothing. The connection's own write buffer can. The ASGI `send` of a socket does not
expose it, so it is found through the server's own objects, for the servers this app runs on:

- daphne: `send` is `functools.partial(Server.handle_reply, protocol)`; the protocol's Twisted
  transport queues what it could not write in `dataBuffer` (from `offset` on) plus
  `_tempDataBuffer` (`_tempDataLen` bytes) until the reactor writes it;
- uvicorn: `send` is a method of its websocket protocol, whose asyncio transport answers
  `get_write_buffer_size()`.

Anything else (a test's in-process communicator, another server, a changed layout) gives no
probe, and the socket is bounded by acknowledgements alone. So does a server whose versions are
not the ones these reads were written for (`daphne_write_buffer` and `uvicorn_write_buffer` in
chutesweb/runtime/__init__.py): a warning is logged once and no probe is given.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

from chutesweb.runtime import DAPHNE_WRITE_BUFFER, UVICORN_WRITE_BUFFER, enabled

logger = logging.getLogger(__name__)

_TWISTED_BUFFER = ("dataBuffer", "offset", "_tempDataLen")


def write_buffer_probe(send: Any) -> Callable[[], int] | None:
    """A function answering how many bytes the connection behind `send` holds unsent, or None
    when that cannot be known."""
    if isinstance(send, functools.partial) and len(send.args) == 1:
        transport = getattr(send.args[0], "transport", None)
        if transport is not None and all(hasattr(transport, name) for name in _TWISTED_BUFFER):
            if not enabled(DAPHNE_WRITE_BUFFER):
                return None
            return functools.partial(_twisted_queued, send.args[0])
        return None
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    size = getattr(transport, "get_write_buffer_size", None)
    if callable(size):
        if not enabled(UVICORN_WRITE_BUFFER):
            return None
        return functools.partial(_asyncio_queued, size)
    return None


def _twisted_queued(protocol: Any) -> int:
    # The protocol's transport, read on every call: daphne hands the connection over to the
    # websocket protocol after the handshake.
    transport = protocol.transport
    if transport is None:
        return 0
    try:
        return len(transport.dataBuffer) - transport.offset + transport._tempDataLen
    except (AttributeError, TypeError):
        return 0


def _asyncio_queued(size: Callable[[], int]) -> int:
    try:
        return int(size())
    except (AttributeError, RuntimeError, TypeError):
        return 0
