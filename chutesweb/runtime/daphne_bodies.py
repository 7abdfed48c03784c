"""Body limits: under daphne, an oversized request body is refused as soon as the headers are in.

daphne hands a request to the application only once Twisted has read its whole body (into
memory, or a temporary file above 100 kB), and then puts every chunk of it into the
application's queue at once, so the whole body is in memory whatever the application does with
it. The rule of `chat/bodylimit.py` is applied as soon as the request's headers are in
(Twisted's `gotLength`): a declared length over the limit, or chunks adding up past it, are
answered 413 at once, the rest of the body is read and dropped (for a while, so that a client
still sending sees the answer rather than a reset connection) and the connection closed; the
request never reaches daphne's processing. Always on, on the versions it supports
(chutesweb/runtime/__init__.py); if daphne's request class has changed shape even so, a warning
is logged and only the application's own check (after daphne has read the body) remains.
"""

from __future__ import annotations

import inspect
import io
import logging
from typing import Any
from urllib.parse import unquote

logger = logging.getLogger(__name__)

# After a 413, what a client that keeps sending may still send (read and dropped) before the
# connection is cut, and for how long.
LINGER_BYTES = 16 * 1024 * 1024
LINGER_SECONDS = 10.0


def _parameters(function: Any) -> list[str]:
    try:
        return list(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        return []


def apply() -> bool:
    """Refuse oversized request bodies as soon as the headers are in (see the module's doc).

    Three methods of daphne's WebRequest, all inherited from Twisted's Request today, are
    wrapped: `gotLength` (the headers are in; the body's declared length, None when chunked),
    `handleContentChunk` (a piece of the body) and `requestReceived` (the whole body is in:
    daphne's processing starts). Returns False, changing nothing, when they are not that shape.
    (chutesweb.runtime.install applies it once, when supported.)
    """
    from daphne.http_protocol import WebRequest
    from twisted.web import http

    from chat import bodylimit

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
                    "chutesweb/runtime/daphne_bodies.py reads it; request bodies are checked "
                    "only by the application, after daphne has read them"
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
