"""Direct text frames: under daphne, a reply's text frame is written straight to the connection.

A chat reply's frame takes eight calls through daphne and autobahn before it reaches the
transport (daphne's reply coroutine and its dispatch, then autobahn's message, frame and data
layers with their checks, statistics and debug logs). `text_writer` gives a socket's consumer a
function that writes the frame itself: the two header bytes (four above 125 bytes, ten above
65535) and the UTF-8 text, exactly the bytes autobahn writes for an unmasked, unfragmented,
uncompressed text message, counted in autobahn's traffic statistics as it counts them. It only
does so when autobahn would send exactly that frame now: the connection open, nothing of
another message in progress or queued, no compression, masking, fragmenting, frame logging or
timing, the text within the message size limit and the connection still daphne's. Anything
else returns False and the frame takes daphne's own path. daphne's debug line for the frame is
logged as before; autobahn's own per-frame debug line is not. Set
`RUNTIME_PATCHES_OFF=direct_text_frames` to turn it off.

Nothing is replaced: chutesweb.runtime.install only marks it in force, when supported.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from types import MethodType
from typing import Any, cast

from chutesweb import runtime


def text_frame(payload: bytes) -> bytes:
    """One unmasked, unfragmented, uncompressed text frame (RFC 6455 section 5.2)."""
    size = len(payload)
    if size <= 125:
        return bytes((0x81, size)) + payload
    if size <= 0xFFFF:
        return b"\x81\x7e" + size.to_bytes(2, "big") + payload
    return b"\x81\x7f" + size.to_bytes(8, "big") + payload


def text_writer(send: Any) -> Callable[[str], bool] | None:
    """For daphne's `send` of one websocket connection, a function that writes a text frame
    straight to the connection and says whether it did; None when `send` is not daphne's or
    direct frames are off. When it returns False nothing was written: send the frame as usual.
    """
    if "direct_text_frames" not in runtime._installed:
        return None
    from autobahn.websocket.protocol import WebSocketProtocol
    from daphne.server import Server
    from daphne.ws_protocol import logger

    if not (
        isinstance(send, functools.partial)
        and getattr(send.func, "__func__", None) is Server.handle_reply
        and len(send.args) == 1
        and not send.keywords
    ):
        return None
    # daphne's Server.handle_reply, bound to its server (the check above).
    server: Server = cast(MethodType, send.func).__self__
    connections: dict[Any, dict[str, Any]] = server.connections
    connection = send.args[0]
    open_state = WebSocketProtocol.STATE_OPEN
    ground = WebSocketProtocol.SEND_STATE_GROUND

    def write(text: str) -> bool:
        if (
            not text
            or connection.state != open_state
            or connection.send_state != ground
            or connection.send_queue
            or connection._perMessageCompress is not None
            or connection.maskServerFrames
            or connection.autoFragmentSize
            or connection.logFrames
            or connection.logOctets
            or connection.trackedTimings
        ):
            return False
        details = connections.get(connection)
        if details is None or details.get("disconnected"):
            return False
        payload = text.encode()
        size = len(payload)
        if 0 < connection.maxMessagePayloadSize < size:
            return False
        logger.debug("Sent WebSocket packet to client for %s", connection.client_addr)
        frame = text_frame(payload)
        stats = connection.trafficStats
        stats.outgoingWebSocketMessages += 1
        stats.outgoingWebSocketFrames += 1
        stats.outgoingOctetsAppLevel += size
        stats.outgoingOctetsWebSocketLevel += size
        stats.outgoingOctetsWireLevel += len(frame)
        connection.transport.write(frame)
        return True

    return write
