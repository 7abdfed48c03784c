"""Freeing closed connections: under daphne, a finished websocket connection is freed by
reference counting instead of the collector's full passes.
"""

from __future__ import annotations

from typing import Any


def apply() -> None:
    """Cut the reference loops a finished websocket connection leaves, once daphne has let go of
    it, so that reference counting frees it instead of the collector's full passes.

    An upgraded HTTP request and its channel hold each other (the request never finishes), and
    the websocket protocol is held by its own Deferreds (`is_open` and `is_closed` resolve with
    it). daphne forgets a connection in `application_checker` once it is closed and its
    application is done; after that nothing calls into these objects, and only Deferreds that
    have fired are dropped. (chutesweb.runtime.install applies it once, when supported.)
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
