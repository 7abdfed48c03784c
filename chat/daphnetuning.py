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
log line is actually written, so debug logs read the same. The same goes for the settings dump
it formats with `pprint` for every new connection (0.6 ms a connection under cProfile).

Direct text frames: a chat reply's frame takes eight calls through daphne and autobahn before
it reaches the transport (daphne's reply coroutine and its dispatch, then autobahn's message,
frame and data layers with their checks, statistics and debug logs). `text_writer` gives a
socket's consumer a function that writes the frame itself: the two header bytes (four above
125 bytes, ten above 65535) and the UTF-8 text, exactly the bytes autobahn writes for an unmasked,
unfragmented, uncompressed text message, counted in autobahn's traffic statistics as it counts
them. It only does so when autobahn would send exactly that frame now: the connection open,
nothing of another message in progress or queued, no compression, masking, fragmenting,
frame logging or timing, the text within the message size limit and the connection still
daphne's. Anything else returns False and the frame takes daphne's own path. daphne's debug
line for the frame is logged as before; autobahn's own per-frame debug line is not. Set
`DIRECT_WEBSOCKET_FRAMES=false` to turn it off.

Body limits: daphne hands a request to the application only once Twisted has read its whole
body (into memory, or a temporary file above 100 kB), and then puts every chunk of it into the
application's queue at once, so the whole body is in memory whatever the application does with
it. The rule of `chat/bodylimit.py` is applied as soon as the request's headers are in
(Twisted's `gotLength`): a declared length over the limit, or chunks adding up past it, are
answered 413 at once, the rest of the body is read and dropped (for a while, so that a client
still sending sees the answer rather than a reset connection) and the connection closed; the
request never reaches daphne's processing. Always on; if daphne's request class has changed
shape, a warning is logged and only the application's own check (after daphne has read the
body) remains.
"""

from __future__ import annotations

import functools
import inspect
import io
import logging
import sys
from collections.abc import Callable
from types import MethodType
from typing import Any, cast
from urllib.parse import unquote

logger = logging.getLogger(__name__)

_installed: set[str] = set()

# After a 413, what a client that keeps sending may still send (read and dropped) before the
# connection is cut, and for how long.
LINGER_BYTES = 16 * 1024 * 1024
LINGER_SECONDS = 10.0


def install(
    *, eager_writes: bool = True, direct_text_frames: bool = True, body_limits: bool = True
) -> set[str]:
    """Apply the changes, once each, if this process runs on Twisted; returns those in force."""
    if "twisted.internet.reactor" not in sys.modules:
        return set()
    if body_limits and "body_limits" not in _installed and _body_limits():
        _installed.add("body_limits")
    if eager_writes and "eager_writes" not in _installed:
        _eager_writes()
        _installed.add("eager_writes")
    if "lazy_frame_logs" not in _installed:
        _lazy_frame_logs()
        _installed.add("lazy_frame_logs")
    if "free_closed_connections" not in _installed:
        _free_closed_connections()
        _installed.add("free_closed_connections")
    if direct_text_frames:
        _installed.add("direct_text_frames")
    else:
        _installed.discard("direct_text_frames")
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
    tcp.Server.write = write  # type: ignore[method-assign]  # patches Twisted on purpose


def _parameters(function: Any) -> list[str]:
    try:
        return list(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        return []


def _body_limits() -> bool:
    """Refuse oversized request bodies as soon as the headers are in (see the module's doc).

    Three methods of daphne's WebRequest, all inherited from Twisted's Request today, are
    wrapped: `gotLength` (the headers are in; the body's declared length, None when chunked),
    `handleContentChunk` (a piece of the body) and `requestReceived` (the whole body is in:
    daphne's processing starts). Returns False, changing nothing, when they are not that shape.
    """
    from daphne.http_protocol import WebRequest
    from twisted.web import http

    from . import bodylimit

    stock = {
        "gotLength": ["self", "length"],
        "handleContentChunk": ["self", "data"],
        "requestReceived": ["self", "command", "path", "version"],
    }
    for name, parameters in stock.items():
        method = getattr(WebRequest, name, None)
        if method is None or method is not getattr(http.Request, name, None):
            logger.warning(
                "daphne's WebRequest.%s is not Twisted's; request bodies are checked only by "
                "the application, after daphne has read them",
                name,
            )
            return False
        if _parameters(method) != parameters:
            logger.warning(
                "Twisted's Request.%s takes %s, not %s; request bodies are checked only by the "
                "application, after daphne has read them",
                name,
                _parameters(method),
                parameters,
            )
            return False
    got_length = WebRequest.gotLength
    handle_content_chunk = WebRequest.handleContentChunk
    request_received = WebRequest.requestReceived
    warned: list[bool] = []

    def rule_of(request: Any) -> tuple[str, bodylimit.Rule] | None:
        # The request line is kept by the channel until the body is in; the request itself only
        # learns it in requestReceived.
        channel = request.channel
        command = getattr(channel, "_command", None)
        target = getattr(channel, "_path", None)
        if not (isinstance(command, bytes) and isinstance(target, bytes)):
            if not warned:
                warned.append(True)
                logger.warning(
                    "Twisted's HTTP channel no longer keeps the request line where "
                    "chat/daphnetuning.py reads it; request bodies are checked only by the "
                    "application, after daphne has read them"
                )
            return None
        root_path = getattr(request.server, "root_path", "") or ""
        for value in request.requestHeaders.getRawHeaders(b"daphne-root-path") or []:
            root_path = unquote(value.decode("latin-1"))
        path = bodylimit.target_path(target, root_path)
        headers = [
            (name.lower(), value)
            for name, values in request.requestHeaders.getAllRawHeaders()
            for value in values
        ]
        return path, bodylimit.rule_for(command.decode("latin-1"), path, headers)

    def refuse(request: Any, path: str, rule: bodylimit.Rule) -> None:
        request._body_refused = True
        request.content = io.BytesIO()
        # Twisted answers "Expect: 100-continue" right after gotLength; the answer is this.
        request.requestHeaders.removeHeader(b"Expect")
        channel = request.channel
        transport = channel.transport
        headers, body = bodylimit.refusal(path, rule)
        head = b"HTTP/1.1 413 Content Too Large\r\n"
        head += b"".join(name + b": " + value + b"\r\n" for name, value in headers)
        transport.write(head + b"\r\n" + body)
        _drop_the_rest(channel, transport)

    def gotLength(self: Any, length: int | None) -> None:
        found = rule_of(self)
        if found is not None:
            self._body_path, self._body_rule = found
            self._body_seen = 0
            if length is not None and length > self._body_rule.limit:
                refuse(self, *found)
                return
        got_length(self, length)

    def handleContentChunk(self: Any, data: bytes) -> None:
        if getattr(self, "_body_refused", False):
            return
        rule = getattr(self, "_body_rule", None)
        if rule is not None:
            # Only a chunked body can pass its limit here: a declared one was checked above.
            self._body_seen += len(data)
            if self._body_seen > rule.limit:
                refuse(self, self._body_path, rule)
                return
        handle_content_chunk(self, data)

    def requestReceived(self: Any, command: bytes, path: bytes, version: bytes) -> None:
        if getattr(self, "_body_refused", False):
            return  # answered already; the connection is closing
        request_received(self, command, path, version)

    gotLength.__doc__ = "Refuse a body declared over its limit; otherwise Twisted's own."
    handleContentChunk.__doc__ = "Count a chunked body against its limit; drop a refused one."
    requestReceived.__doc__ = "Twisted's own, unless the body was refused."
    WebRequest.gotLength = gotLength
    WebRequest.handleContentChunk = handleContentChunk
    WebRequest.requestReceived = requestReceived
    return True


def _drop_the_rest(channel: Any, transport: Any) -> None:
    """Close a connection whose answer is written, after reading and dropping what the client
    still sends: closing with unread bytes makes the kernel reset the connection, and a client
    still sending would then often lose the answer. Up to LINGER_BYTES in LINGER_SECONDS; a
    client that sends more, or longer, is cut off."""
    from twisted.internet import reactor

    dropped = 0

    def drop(data: bytes) -> None:
        nonlocal dropped
        dropped += len(data)
        if dropped > LINGER_BYTES:
            transport.abortConnection()

    # Instead of the HTTP parser: nothing more from this connection is a request.
    channel.dataReceived = drop
    producer = getattr(channel, "_networkProducer", None)
    if producer is not None:
        producer.unregisterProducer()
    close_writing = getattr(transport, "loseWriteConnection", None)
    if close_writing is None:
        transport.loseConnection()
        return
    close_writing()
    reactor.callLater(LINGER_SECONDS, transport.abortConnection)


def _free_closed_connections() -> None:
    """Cut the reference loops a finished websocket connection leaves, once daphne has let go of
    it, so that reference counting frees it instead of the collector's full passes.

    An upgraded HTTP request and its channel hold each other (the request never finishes), and
    the websocket protocol is held by its own Deferreds (`is_open` and `is_closed` resolve with
    it). daphne forgets a connection in `application_checker` once it is closed and its
    application is done; after that nothing calls into these objects, and only Deferreds that
    have fired are dropped.
    """
    from daphne.http_protocol import WebRequest
    from daphne.server import Server
    from daphne.ws_protocol import WebSocketProtocol

    checker = Server.application_checker

    def cut(protocol: Any) -> None:
        if isinstance(protocol, WebSocketProtocol):
            for name in ("is_open", "is_closed", "application_deferred"):
                deferred = getattr(protocol, name, None)
                if deferred is not None and deferred.called:
                    setattr(protocol, name, None)
        elif isinstance(protocol, WebRequest):
            channel = getattr(protocol, "channel", None)
            # Only a request handed over to a websocket: its transport went with it.
            if channel is not None and protocol.transport is None:
                if protocol in channel.requests:
                    channel.requests.remove(protocol)
                protocol.channel = None

    def application_checker(self: Any) -> None:
        before = list(self.connections)
        try:
            checker(self)
        finally:
            for protocol in before:
                if protocol not in self.connections:
                    cut(protocol)

    application_checker.__doc__ = checker.__doc__
    Server.application_checker = application_checker


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

    hltype, hlval, pformat = protocol.hltype, protocol.hlval, protocol.pformat
    protocol.hltype = lambda obj: _Deferred(hltype, obj)
    protocol.hlval = lambda *args, **kwargs: _Deferred(lambda: hlval(*args, **kwargs))
    # Used for log arguments only, but for `Timings.__str__`, which must return a string.
    protocol.pformat = lambda obj: _Deferred(pformat, obj)  # type: ignore[assignment, misc]  # patches autobahn
    protocol.Timings.__str__ = lambda self: pformat(self._timings)  # type: ignore[method-assign]  # patches autobahn


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
    if "direct_text_frames" not in _installed:
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
