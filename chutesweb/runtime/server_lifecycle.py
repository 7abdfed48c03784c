"""Under daphne, the app's background work starts and stops with Twisted's reactor.

Public Twisted API only (`callWhenRunning`, `callLater`, `addSystemEventTrigger`,
`Deferred.fromFuture`), so no version gate: it is here because it is wiring for one server.
Uvicorn reaches the same start and stop through the ASGI lifespan protocol instead
(chat/realtime/lifespan.py); without Twisted's reactor both functions do nothing.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable, Coroutine
from typing import Any

logger = logging.getLogger(__name__)

_shutdown_hooked = False


def start_with_server(start: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Under daphne, start this process's background work (saving, the reaper, the control
    channel, the settling of replies an earlier run left streaming: `start()`) as soon as the
    server runs, not at the first websocket. Uvicorn does it on the ASGI lifespan's startup
    instead."""
    if "twisted.internet.reactor" not in sys.modules:
        return
    from twisted.internet import reactor

    def run() -> None:
        task = asyncio.ensure_future(start())
        task.add_done_callback(_log_start_failure)

    # Startup triggers run before the reactor starts its asyncio loop; the background work
    # belongs to the running loop, so the start waits for the loop's first turn.
    reactor.callWhenRunning(reactor.callLater, 0, run)


def _log_start_failure(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("background work did not start", exc_info=task.exception())


def before_server_exit(stop: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Under daphne (Twisted), finish this process's replies cleanly before the reactor stops;
    once per process.

    On SIGTERM Twisted runs "before shutdown" triggers and waits for the Deferreds they return,
    as daphne does for its own connections: `stop()` interrupts the replies, saves their text and
    sets their status within SHUTDOWN_GRACE_SECONDS. Uvicorn reaches the generation manager's
    `shutdown()` through the ASGI lifespan protocol instead (see chutesweb.asgi).
    """
    global _shutdown_hooked
    if _shutdown_hooked or "twisted.internet.reactor" not in sys.modules:
        return
    from twisted.internet import defer, reactor

    def before_shutdown() -> defer.Deferred[None]:
        return defer.Deferred.fromFuture(asyncio.ensure_future(stop()))

    reactor.addSystemEventTrigger("before", "shutdown", before_shutdown)
    _shutdown_hooked = True
