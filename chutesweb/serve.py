"""Run the app under daphne on the event loop the environment asks for.

    python -m chutesweb.serve -b 127.0.0.1 -p 8000 chutesweb.asgi:application

takes daphne's own arguments. `EVENT_LOOP` picks the loop: `auto` (the default) runs on uvloop
when it is installed and on asyncio's own loop otherwise; `uvloop` insists on uvloop; `asyncio`
keeps asyncio's. The choice has to be made here, before daphne is imported: daphne creates its
loop and installs Twisted's reactor on it at import time, before Django's settings are read.

uvloop runs the loop, the timers and the upstream connections' sockets in C; every relayed token
passes through them (docs/benchmarks.md measures what it saves).

daphne runs as `AppServer` (made by `server_class()`), which sizes its websocket limits from the
app's MAX_FRAME_CHARS and closes a connection whose frame is too large with code 1009 and a
reason, where autobahn would otherwise drop the TCP connection without a word.
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import logging
import os
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from daphne.server import Server

CHOICES = ("auto", "uvloop", "asyncio")
# A character takes at most four bytes in UTF-8.
UTF8_MAX_BYTES = 4

logger = logging.getLogger("chutesweb.serve")


class EventLoopError(RuntimeError):
    pass


def choose_loop(choice: str | None) -> str:
    """Set the event loop policy for `choice`; returns the loop it gives, "uvloop" or "asyncio"."""
    wanted = (choice or "auto").strip().lower()
    if wanted not in CHOICES:
        raise EventLoopError(f"EVENT_LOOP must be one of {', '.join(CHOICES)}; got {choice!r}.")
    if wanted == "asyncio" or (wanted == "auto" and importlib.util.find_spec("uvloop") is None):
        asyncio.set_event_loop_policy(None)
        return "asyncio"
    try:
        import uvloop
    except ImportError as exc:
        raise EventLoopError(
            "EVENT_LOOP=uvloop but uvloop is not installed (pip install -r requirements.txt)."
        ) from exc
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


def websocket_byte_limit(max_frame_chars: int) -> int:
    """The largest websocket message, in bytes, for frames of up to `max_frame_chars`
    characters: no frame the app accepts may be refused for its bytes. Longer frames within it
    get the app's own `content_too_long` answer; beyond it the connection is closed (1009)."""
    return max_frame_chars * UTF8_MAX_BYTES


def server_class() -> type[Server]:
    """daphne's Server with the app's websocket limits. Imports daphne, which installs Twisted's
    reactor on the current event loop: call it after choose_loop()."""
    from daphne.server import Server
    from daphne.ws_protocol import WebSocketFactory
    from twisted.internet import reactor

    # Fail at start rather than drop connections again if autobahn renames the option.
    if "failByDrop" not in inspect.signature(WebSocketFactory.setProtocolOptions).parameters:
        raise RuntimeError("autobahn's WebSocketServerFactory no longer takes failByDrop")

    class AppServer(Server):
        startup_error: BaseException | None = None

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            from django.conf import settings

            limit = websocket_byte_limit(settings.MAX_FRAME_CHARS)
            kwargs.update(websocket_max_message_size=limit, websocket_max_frame_size=limit)
            super().__init__(*args, **kwargs)

        def run(self) -> None:
            # run() makes the websocket factory and then runs the reactor until the end; the
            # factory's options can only be changed from inside, once the reactor has started.
            reactor.callWhenRunning(self.close_oversized_frames_cleanly)
            super().run()

        def close_oversized_frames_cleanly(self) -> None:
            # autobahn's failByDrop (on by default) drops the TCP connection of a client that
            # broke a limit, and the browser learns nothing (code 1006). Off, it sends a close
            # frame: 1009 and the limit, which the page can show.
            try:
                self.ws_factory.setProtocolOptions(failByDrop=False)
            except Exception as exc:  # a server that would drop connections must not serve
                logger.critical("cannot set the websocket options: %r", exc)
                self.startup_error = exc
                self.stop()

    return AppServer


def main(argv: list[str] | None = None) -> None:
    try:
        loop = choose_loop(os.environ.get("EVENT_LOOP"))
    except EventLoopError as exc:
        sys.exit(f"chutesweb.serve: {exc}")
    print(f"chutesweb.serve: event loop {loop}", file=sys.stderr, flush=True)
    from daphne.cli import CommandLineInterface

    cli = CommandLineInterface()
    try:
        cli.server_class = server_class()
    except RuntimeError as exc:
        sys.exit(f"chutesweb.serve: {exc}")
    cli.run(sys.argv[1:] if argv is None else argv)
    if getattr(cli.server, "startup_error", None) is not None:
        sys.exit("chutesweb.serve: the server could not be set up (see the log above)")


if __name__ == "__main__":
    main()
